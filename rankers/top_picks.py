"""Top Picks, learned: a LightGBM lambdarank over the union of several generators' candidates.

Each generator is one reason a member might play a title next: EASE on all their plays, EASE on
their recent plays, item-kNN, the title's popularity so far, its plays in the last days
(trending), and the match of its genres with theirs. Each proposes its best `candidates` titles;
the union is ordered by a lambdarank model whose features are every generator's score and rank,
the title's age, release year and popularity at the request time, and the member's activity.

The model learns inside the History it is fitted on, never after its cut-off: in training window
j every member's last j*holdout plays are removed, the generators are fitted on what is left, and
the member's next `holdout` plays are the labels, with the request at the member's last remaining
play. Several windows give the model more groups (training data, not model size, drove the gain
in the prototype of shared/measured.md). The served generators are then fitted on the whole
History. Everything a request reads is "as of" its time: plays after it are not counted. Served
with play events, live plays join the popularity and trending generators' counts by whole hours
(`nearline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import lightgbm as lgb
import numba
import numpy as np
import scipy.sparse as sp
from pydantic import Field

from engine.candidates import CandidateRow, LivePlays, RankerConfig
from engine.data.history import US_PER_DAY, US_PER_HOUR, History, drop_last_plays
from engine.errors import ModelLoadError
from engine.evaluation.metrics import anti_diagonal_ranks
from engine.request.context import RequestContext
from engine.request.scorers import Forest
from rankers._common import PlayTimes, check_fitted, load_state, make_row, save_state
from rankers.pvr import (
    MAX_DENSE_TITLES,
    CFConfig,
    CFModel,
    GenreRowsConfig,
    Signals,
    decay,
    genre_rows,
    head,
    zscore,
)

STATE_VERSION = 1
MODEL_FILE = "lambdarank.txt"  # LightGBM's own text format, never pickle
MORE_KIND = "top_picks_more"  # the kind of the continuation rows (`more_titles`)
GENRE_KIND = "top_picks_genre"  # the kind of its genre rows (`max_genre_rows`)
_GENERATORS = (
    "ease",
    "ease_recent",
    "ease_last",
    "knn",
    "knn_last",
    "popular",
    "trending_short",
    "trending_long",
)


class TopPicksConfig(GenreRowsConfig):
    """Keys of the learned Top Picks row."""

    title: str = "Top Picks for You"
    row_length: int = Field(default=40, ge=1)
    # Continuation rows, one per display title: row k holds the titles ranked after row k-1's
    # `row_length` (kind "top_picks_more", so the page model learns where they belong).
    more_titles: tuple[str, ...] = ()
    # Ranks between the starts of consecutive rows (None: `row_length`). A step shorter than the
    # row overlaps the rows; dedupe then leaves each continuation row the titles the rows above
    # did not show, so no title between a row's shown width and its length is lost.
    more_step: int | None = Field(default=None, ge=1)
    # Deal the learned order over the row and its continuation rows as a page is read, by
    # anti-diagonals: rank 1 heads the row, ranks 2-3 go to its 2nd place and the head of the
    # first continuation row, and so on (engine.evaluation.metrics.anti_diagonal_ranks, beside
    # N2DCG), instead of consecutive ranks per row (`more_step` is then not used). The head of
    # the next row is seen as soon as the 2nd title of the row above.
    more_deal: bool = False
    # Genre rows of the same learned order, over the same candidates (kind "top_picks_genre"):
    # the member's genres as PVR picks them, each row that genre's best candidates.
    max_genre_rows: int = Field(default=0, ge=0)
    genre_title: str = "Top Picks in {genre}"
    # 50 and 100 gave the same NDCG@10 on MovieLens validation; 50 halves the rows to score.
    candidates: int = Field(default=50, ge=1, description="titles each generator proposes")
    # Generators
    min_plays: int = Field(default=3, ge=1, description="players a title needs for CF scores")
    max_dense_titles: int = Field(default=MAX_DENSE_TITLES, ge=1)  # rankers.pvr.CFConfig's
    l2: float = Field(default=500.0, gt=0, description="EASE ridge strength")
    neighbours: int = Field(default=100, ge=1)
    shrink: float = Field(default=10.0, ge=0)
    recent_half_life_days: float = Field(default=30.0, gt=0)
    # ease_last and knn_last read only the member's most recent titles: what they are watching
    # now, which a decay by days cannot tell apart when a whole history is one evening's.
    last_titles: int = Field(default=10, ge=1)
    trending_short_days: float = Field(default=7.0, gt=0)
    trending_long_days: float = Field(default=90.0, gt=0)
    # Training windows
    windows: int = Field(default=2, ge=1)
    holdout: int = Field(default=5, ge=1, description="plays held out per member and window")
    min_member_plays: int = Field(default=5, ge=1, description="plays left to enter a window")
    max_window_members: int = Field(default=1500, ge=1)
    trees: int = Field(default=300, ge=1)
    leaves: int = Field(default=31, ge=2)
    learning_rate: float = Field(default=0.05, gt=0)
    min_data_in_leaf: int = Field(default=20, ge=1)
    early_stopping_share: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        # The generators' keys: each trial refits the whole ranker (its windows and lambdarank).
        return {
            "l2": (100.0, 200.0, 1000.0, 2000.0),
            "neighbours": (20, 50, 200),
            "recent_half_life_days": (7.0, 90.0),
        }

    def page_space(self) -> dict[str, tuple[Any, ...]]:
        # Whether members read a page row by row or by its diagonals decides it: only whole
        # pages of the held-out window can tell (engine/training/page_keys.py).
        return {"more_deal": (not self.more_deal,)} if self.more_titles else {}

    def cf(self, method: str) -> CFConfig:
        return CFConfig(
            method=method,  # type: ignore[arg-type]
            min_plays=self.min_plays,
            max_dense_titles=self.max_dense_titles,
            l2=self.l2,
            neighbours=self.neighbours,
            shrink=self.shrink,
            seed=self.seed,
        )


FEATURES = (
    *(f"{g}_{what}" for g in _GENERATORS for what in ("score", "rank")),
    "content",
    "title_age_days",
    "release_year",
    "member_plays",
    "member_days_since_last",
    "member_tenure_days",
)


@dataclass(frozen=True)
class Generators:
    """What the candidates and features are computed from, fitted on one History."""

    ease: CFModel
    knn: CFModel
    signals: Signals
    times: PlayTimes
    knn_sparse: sp.csr_matrix  # item-kNN keeps `neighbours` per title: sparse rows read less

    @classmethod
    def of(cls, ease: CFModel, knn: CFModel, history: History) -> Generators:
        signals = Signals.build(history, ease.eval_items)
        return cls(ease, knn, signals, PlayTimes.of_plays(history), sp.csr_matrix(knn.item_weights))

    @classmethod
    def fit(cls, history: History, cfg: TopPicksConfig) -> Generators:
        ease = CFModel.fit(history, cfg.cf("ease"))
        knn = CFModel.fit(history, cfg.cf("item_knn"))
        return cls.of(ease, knn, history)


def _cf(model: CFModel, n: int, pos: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """z(CF score) for each weight vector in `w` (k x plays) over the titles the model scores,
    NaN elsewhere (LightGBM: missing). One gather of the member's rows serves every vector."""
    out = [np.full(n, np.nan) for _ in range(len(w))]
    if len(pos):
        block = model.item_weights[pos]
        for o, raw in zip(out, w.astype(np.float32) @ block, strict=True):
            o[model.eval_items] = zscore(raw.astype(np.float64))
    return out


def _knn(knn: sp.csr_matrix, eval_items: np.ndarray, n: int, pos: np.ndarray) -> np.ndarray:
    out = np.full(n, np.nan)
    if len(pos):
        total = sum_csr_rows(knn.indptr, knn.indices, knn.data, pos, knn.shape[1])
        out[eval_items] = zscore(total.astype(np.float64))
    return out


@numba.njit(cache=True, nogil=True)
def sum_csr_rows(indptr, indices, data, rows, n_cols):
    """The sum of the CSR matrix's `rows`, in the matrix's dtype, adding row by row in the
    order given: the order and precision of scipy's `m[rows].sum(axis=0)` (so the same bits),
    without its two sparse copies per call (170 us against 2 us for a member's plays)."""
    out = np.zeros(n_cols, dtype=data.dtype)
    for r in rows:
        for k in range(indptr[r], indptr[r + 1]):
            out[indices[k]] += data[k]
    return out


@dataclass(frozen=True)
class HourlyPlays:
    """Live plays after the cut-off (served with play events), per title and whole hour since
    the cut-off, cumulated: a request counts the hours that ended by its time, so a live play
    reaches the popularity and trending generators within an hour of it and never before it."""

    cutoff_us: int
    cum: np.ndarray  # int64 (hours + 1, titles): row k, the plays of hours 0 .. k-1

    def before(self, at_us: int) -> np.ndarray:
        k = min(max((at_us - self.cutoff_us) // US_PER_HOUR, 0), len(self.cum) - 1)
        return self.cum[k]


@dataclass(frozen=True)
class TitleSignals:
    """What the generators read of the titles at one request time, the same for every member:
    the popularity and trending scores, and the titles not yet in the catalog. Computed once
    per time for a block of requests (`TopPicksRanker.propose_block`)."""

    popular: np.ndarray
    trending_short: np.ndarray
    trending_long: np.ndarray
    not_yet_added: np.ndarray  # bool per title: added after the request

    @classmethod
    def at(
        cls,
        gens: Generators,
        history: History,
        at_us: int,
        cfg: TopPicksConfig,
        live: HourlyPlays | None = None,
    ) -> Self:
        def before(t_us: int) -> np.ndarray:
            n = gens.times.before(t_us)
            return n if live is None else n + live.before(t_us)

        plays_before = before(at_us)
        short = plays_before - before(at_us - int(cfg.trending_short_days * US_PER_DAY))
        long = plays_before - before(at_us - int(cfg.trending_long_days * US_PER_DAY))
        return cls(
            popular=np.log1p(plays_before).astype(np.float64),
            trending_short=np.log1p(short).astype(np.float64),
            trending_long=np.log1p(long).astype(np.float64),
            not_yet_added=history.added_us > at_us,
        )


def candidates_and_features(
    gens: Generators,
    history: History,
    user: int,
    at_us: int,
    cfg: TopPicksConfig,
    titles_at: TitleSignals | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The union of the generators' candidates for a member at `at_us` (titles played before
    it and titles not yet in the catalog excluded) and their feature matrix (FEATURES order).
    `titles_at`: the title signals at `at_us` when the caller has them already."""
    n = history.n_titles
    if titles_at is None:
        titles_at = TitleSignals.at(gens, history, at_us, cfg)
    s = history.user_plays(user) if user >= 0 else slice(0, 0)
    before = history.play_ts[s] < at_us  # plays after the request are not known at it
    ts = history.play_ts[s][before]
    # Plays are sorted by time: a title's first index in the reversed slice is its last play.
    titles, last = np.unique(history.play_title[s][before][::-1], return_index=True)
    titles = titles.astype(np.int64)
    recent_w = decay(at_us - ts[::-1][last], cfg.recent_half_life_days)
    pos = gens.signals.eval_pos[titles]
    keep = pos >= 0
    ease, ease_recent = _cf(
        gens.ease, n, pos[keep], np.vstack([np.ones(int(keep.sum())), recent_w[keep]])
    )
    latest = np.argsort(last, kind="stable")[: cfg.last_titles]  # most recent first
    pos_last = pos[latest][keep[latest]]
    (ease_last,) = _cf(gens.ease, n, pos_last, np.ones((1, len(pos_last))))
    scores = {
        "ease": ease,
        "ease_recent": ease_recent,
        "ease_last": ease_last,
        "knn": _knn(gens.knn_sparse, gens.knn.eval_items, n, pos[keep]),
        "knn_last": _knn(gens.knn_sparse, gens.knn.eval_items, n, pos_last),
        "popular": titles_at.popular,
        "trending_short": titles_at.trending_short,
        "trending_long": titles_at.trending_long,
    }
    banned = titles_at.not_yet_added.copy()
    if len(titles):
        banned[titles] = True
    pools = []
    for v in scores.values():
        masked = np.where(banned | np.isnan(v), -np.inf, v)
        pools.append(head(masked, cfg.candidates))
    # head keeps finite scores only, so nothing banned is a candidate
    cand = np.unique(np.concatenate(pools)).astype(np.int64)
    cols = []
    for g in _GENERATORS:
        v = scores[g][cand]
        order = np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")
        rank = np.empty(len(cand))
        rank[order] = np.arange(1, len(cand) + 1)
        cols += [v, rank]
    profile = gens.signals.genres_l1[titles].sum(axis=0) if len(titles) else None
    content = (
        gens.signals.content_z(profile)[cand] if profile is not None else np.full(len(cand), 0.0)
    )
    created = history.user_created_us[user] if user >= 0 else at_us
    first = ts[0] if len(ts) else at_us
    member = [
        np.log1p(len(titles)),
        (at_us - (ts[-1] if len(ts) else at_us)) / US_PER_DAY,
        (at_us - min(first, created)) / US_PER_DAY,
    ]
    cols += [
        content,
        (at_us - history.added_us[cand]) / US_PER_DAY,
        history.release_year[cand].astype(np.float64),
        *(np.full(len(cand), m) for m in member),
    ]
    # float32: the served Forest reads float32, so training sees the same values
    return cand, np.ascontiguousarray(np.column_stack(cols), dtype=np.float32)


@dataclass(frozen=True)
class Groups:
    X: np.ndarray
    y: np.ndarray
    sizes: np.ndarray


def window_groups(
    history: History, j: int, cfg: TopPicksConfig, rng: np.random.Generator
) -> Groups:
    """Training groups of window j: each eligible member's candidates labelled by whether the
    member played them in their next `holdout` plays after the window's history."""
    h, dropped = drop_last_plays(history, j * cfg.holdout)
    _, next_mask = drop_last_plays(history, (j - 1) * cfg.holdout)
    label_play = dropped & ~next_mask
    n_left = np.diff(h.user_offsets)
    members = np.flatnonzero(n_left >= cfg.min_member_plays)
    members = members[np.bincount(history.play_user[label_play], minlength=h.n_users)[members] > 0]
    if len(members) > cfg.max_window_members:
        members = np.sort(rng.choice(members, cfg.max_window_members, replace=False))
    gens = Generators.fit(h, cfg)
    xs, ys, sizes = [], [], []
    for u in members.tolist():
        s = h.user_plays(u)
        at = int(h.play_ts[s][-1]) + 1
        nxt = history.play_title[history.user_plays(u)][label_play[history.user_plays(u)]]
        cand, X = candidates_and_features(gens, h, u, at, cfg)
        y = np.isin(cand, nxt).astype(np.float64)
        if y.any() and len(cand) > 1:
            xs.append(X)
            ys.append(y)
            sizes.append(len(cand))
    if not xs:
        return Groups(np.empty((0, len(FEATURES))), np.empty(0), np.empty(0, dtype=np.int64))
    return Groups(np.vstack(xs), np.concatenate(ys), np.array(sizes, dtype=np.int64))


class TopPicksRanker:
    """One row: the member's Top Picks, the generators' union ordered by a learned model."""

    type_name: ClassVar[str] = "top_picks"
    Config: ClassVar[type[RankerConfig]] = TopPicksConfig
    keeps_finished: ClassVar[bool] = False
    uses_device: ClassVar[bool] = False

    def __init__(self, name: str, config: RankerConfig | None = None) -> None:
        self.name = name
        cfg = TopPicksConfig() if config is None else config
        if not isinstance(cfg, TopPicksConfig):
            cfg = TopPicksConfig.model_validate(cfg.model_dump())
        self.config: TopPicksConfig = cfg

    def fit(self, history: History) -> Self:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        parts = [window_groups(history, j, cfg, rng) for j in range(1, cfg.windows + 1)]
        X = np.vstack([p.X for p in parts])
        y = np.concatenate([p.y for p in parts])
        sizes = np.concatenate([p.sizes for p in parts])
        self.training_: dict[str, float] = {"groups": len(sizes), "rows": len(y)}
        self.model_text_ = self._train(X, y, sizes, rng) if len(sizes) >= 2 else ""
        self._set(history, Generators.fit(history, cfg))
        return self

    def _train(
        self, X: np.ndarray, y: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
    ) -> str:
        cfg = self.config
        n_val = max(1, int(len(sizes) * cfg.early_stopping_share))
        is_val = np.zeros(len(sizes), dtype=bool)
        is_val[rng.choice(len(sizes), n_val, replace=False)] = True
        row_val = np.repeat(is_val, sizes)
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "num_leaves": cfg.leaves,
            "learning_rate": cfg.learning_rate,
            "min_data_in_leaf": cfg.min_data_in_leaf,
            "feature_fraction": 0.9,
            # one thread: OpenMP threads stall when the other core is busy (shared/measured.md)
            "num_threads": 1,
            "deterministic": True,
            "force_row_wise": True,
            "seed": cfg.seed,
            "verbosity": -1,
        }
        train = lgb.Dataset(X[~row_val], y[~row_val], group=sizes[~is_val])
        valid = lgb.Dataset(X[row_val], y[row_val], group=sizes[is_val], reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=cfg.trees,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(30, verbose=False)],
        )
        self.training_["best_iteration"] = int(booster.best_iteration)
        self.training_["validation_ndcg10"] = round(
            float(booster.best_score["valid_0"]["ndcg@10"]), 5
        )
        return str(booster.model_to_string(num_iteration=booster.best_iteration))

    def _set(self, history: History, gens: Generators) -> None:
        self.generators_ = gens
        self.forest_ = Forest(self.model_text_) if self.model_text_ else None
        self.history_ = history
        # Live plays by hour (`nearline`): the counts, and their cumulated view requests read.
        self._live_counts: np.ndarray | None = None
        self.live_: HourlyPlays | None = None

    def nearline(self, plays: LivePlays | None) -> None:
        """The live plays new since the last call join the popularity and trending generators'
        counts, by whole hours since the cut-off (None: back to the snapshot's). Memory: a row
        of 8 bytes a title per hour since the cut-off, twice."""
        check_fitted(self, "generators_")
        if plays is None:
            self._live_counts, self.live_ = None, None
            return
        n_t = self.history_.n_titles
        cutoff = self.history_.cutoff_us
        hour = (plays.ts_us - cutoff) // US_PER_HOUR
        counts = self._live_counts if self._live_counts is not None else np.zeros((0, n_t), int)
        need = int(hour.max()) + 1 if len(hour) else 0
        if need > len(counts):
            counts = np.vstack([counts, np.zeros((need - len(counts), n_t), dtype=counts.dtype)])
        np.add.at(counts, (hour, plays.title), 1)
        self._live_counts = counts
        cum = np.vstack([np.zeros((1, n_t), dtype=counts.dtype), np.cumsum(counts, axis=0)])
        self.live_ = HourlyPlays(cutoff, cum)  # replaced whole: a request reads old or new

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        return self.propose_block([request], history)[0]

    def propose_block(
        self, requests: Sequence[RequestContext], history: History
    ) -> list[list[CandidateRow]]:
        """`propose` for each of a block of requests: the title signals once per request time
        and one call of the learned model over every member's candidates. The model scores
        each candidate on its own, so every row equals the one `propose` gives alone."""
        check_fitted(self, "generators_")
        if not requests:
            return []
        signals: dict[int, TitleSignals] = {}
        live = self.live_
        users, cands, xs = [], [], []
        for r in requests:
            at = signals.get(r.at_us)
            if at is None:
                at = signals[r.at_us] = TitleSignals.at(
                    self.generators_, history, r.at_us, self.config, live
                )
            user = history.user_index(r.user_id)
            cand, X = candidates_and_features(
                self.generators_, history, user, r.at_us, self.config, at
            )
            users.append(user)
            cands.append(cand)
            xs.append(X)
        X = np.vstack(xs) if xs else np.empty((0, len(FEATURES)), dtype=np.float32)
        # Without a model (too little history to learn from) the EASE order stands.
        s = self.forest_.raw(X) if self.forest_ is not None else -X[:, 1]
        ends = np.cumsum([len(c) for c in cands])
        return [
            self._rows(user, r.at_us, cand, part, history)
            for r, user, cand, part in zip(
                requests, users, cands, np.split(s, ends[:-1]), strict=True
            )
        ]

    def _rows(
        self, user: int, at_us: int, cand: np.ndarray, s: np.ndarray, history: History
    ) -> list[CandidateRow]:
        """The member's row (and continuation and genre rows) from their candidates' model
        scores."""
        if len(cand) == 0:
            return []
        cfg = self.config
        n = cfg.row_length
        step = n if cfg.more_step is None else cfg.more_step
        n_rows = 1 + len(cfg.more_titles)
        total = n * n_rows if cfg.more_deal else n + step * len(cfg.more_titles)
        top = head(np.where(np.isfinite(s), s, -np.inf), total)
        if cfg.more_deal:
            parts = [top[p[p < len(top)]] for p in anti_diagonal_ranks([n] * n_rows)]
        else:
            parts = [top[k * step : k * step + n] for k in range(n_rows)]
        evidence = {"personalized": user >= 0 and history.user_plays(user).stop > 0}
        rows = [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=cfg.title,
                titles=cand[parts[0]],
                scores=s[parts[0]],
                evidence=evidence,
            )
        ]
        for k, title in enumerate(cfg.more_titles, start=1):
            part = parts[k]
            if len(part):
                rows.append(
                    make_row(
                        ranker=self.name,
                        kind=MORE_KIND,
                        title=title,
                        titles=cand[part],
                        scores=s[part],
                        key=f"more{k}",
                        evidence=evidence,
                    )
                )
        if cfg.max_genre_rows:
            score = np.full(history.n_titles, -np.inf)
            score[cand] = np.where(np.isfinite(s), s, -np.inf)
            rows += genre_rows(
                self.name,
                GENRE_KIND,
                score,
                self.generators_.signals,
                history,
                user,
                at_us,
                cfg,
                n,
                cfg.genre_title,
            )
        return rows

    def save(self, directory: Path) -> None:
        check_fitted(self, "generators_")
        directory = Path(directory)
        g = self.generators_
        save_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={
                **{f"ease_{k}": v for k, v in g.ease.arrays().items()},
                **{f"knn_{k}": v for k, v in g.knn.arrays().items()},
            },
            meta={"training": self.training_, "features": list(FEATURES)},
        )
        (directory / MODEL_FILE).write_text(self.model_text_, encoding="utf-8")

    def load(self, directory: Path, history: History) -> Self:
        directory = Path(directory)
        names = tuple(f"{m}_{a}" for m in ("ease", "knn") for a in CFModel.ARRAYS)
        arrays, meta = load_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=names,
        )
        if meta.get("features") != list(FEATURES):
            raise ModelLoadError(
                f"{directory}: saved with other features than this rowrank computes: retrain"
            )
        try:
            self.model_text_ = (directory / MODEL_FILE).read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelLoadError(f"cannot read {directory / MODEL_FILE}: {exc}") from exc
        ease = CFModel.from_arrays(
            "ease", {a: arrays[f"ease_{a}"] for a in CFModel.ARRAYS}, history
        )
        knn = CFModel.from_arrays(
            "item_knn", {a: arrays[f"knn_{a}"] for a in CFModel.ARRAYS}, history
        )
        self.training_ = dict(meta.get("training") or {})
        self._set(history, Generators.of(ease, knn, history))
        return self
