"""Top-N ("Top Picks for You"): the member's best titles across the whole catalog, tuned for
the head of the list.

Top-N owns its own CF model (the same maths as PVR, rankers.pvr.CFModel, but its own instance
and keys), so the engine never wires rankers together. What differs from PVR is the blend: the
weights of popularity, of *recent* popularity (plays in the last `recent_days` before the
cut-off) and of the genre match are chosen at fit time by NDCG@10 on a validation period carved
from the end of the training History itself, then the model is refitted on all of it. Nothing
after the History's cut-off is ever seen, so the tuning cannot leak the test period.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import US_PER_DAY, History, truncate_history
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import check_fitted, make_row, save_state
from rankers.pvr import (
    CFConfig,
    CFModel,
    Signals,
    blend,
    components,
    head,
    load_cf_state,
    sorted_unique,
    zscore,
)

STATE_VERSION = 1
_K = 10  # the head of the list Top-N is tuned for
_CHUNK = 256  # validation members scored at once (memory: 256 x n_titles x 8 bytes, a few)


class TopNConfig(CFConfig):
    """Top-N keys: the CF model, the blend (tuned or fixed) and the row."""

    title: str = "Top Picks for You"
    row_length: int = Field(default=50, ge=1)
    exclude_played: bool = True
    # The last `popular_pool` places of the row go to the titles most played (by distinct
    # members) in the `popular_pool_days` before the cut-off that the blend ranked lower, still
    # in the blend's order. The blend is one compromise for every member; the page model, which
    # orders the row, sees popularity and trend per request and can lift them for the members
    # whose next plays follow what is popular now. 10 of 40 places did best on MovieLens when
    # Top-N was the built-in Top Picks (docs/results/2026-11-27-page-quality.md).
    popular_pool: int = Field(default=0, ge=0)
    popular_pool_days: float = Field(default=7.0, gt=0)
    # Used as they are when tune = false (with popularity_weight and content_weight).
    recent_weight: float = Field(default=0.0, ge=0)
    recent_days: float = Field(default=28.0, gt=0)
    tune: bool = True
    # 60 blends by default: a few seconds of a fit on the default simulated world.
    popularity_grid: list[float] = Field(default=[0.0, 0.1, 0.3])
    recent_grid: list[float] = Field(default=[0.0, 0.3, 1.0, 2.0])
    recent_days_grid: list[float] = Field(default=[3.0, 7.0, 28.0])
    content_grid: list[float] = Field(default=[0.15, 0.5])
    # Validation cuts, as fractions of the History's plays after each cut (rolling origin:
    # each cut's ground truth ends at the next later cut).
    validation_fractions: list[float] = Field(default=[0.1])
    max_validation_users: int = Field(default=1000, ge=1)


@dataclass(frozen=True)
class Blend:
    """The blend Top-N applies on top of its CF scores (see rankers.pvr.blend)."""

    popularity: float
    recent: float
    content: float
    recent_days: float


class TopNRanker:
    """One row: the best titles for the member over the whole catalog."""

    type_name: ClassVar[str] = "top_n"
    Config: ClassVar[type[RankerConfig]] = TopNConfig
    keeps_finished: ClassVar[bool] = False
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device: ClassVar[bool] = False

    def __init__(self, name: str, config: RankerConfig | None = None) -> None:
        self.name = name
        cfg = TopNConfig() if config is None else config
        if not isinstance(cfg, TopNConfig):
            cfg = TopNConfig.model_validate(cfg.model_dump())
        self.config: TopNConfig = cfg

    # ----- fit -------------------------------------------------------------------------------

    def fit(self, history: History) -> Self:
        cfg = self.config
        chosen = Blend(
            cfg.popularity_weight, cfg.recent_weight, cfg.content_weight, cfg.recent_days
        )
        tuning: list[dict[str, float]] = []
        if cfg.tune:
            chosen, tuning = self._tune(history, chosen)
        self.blend_ = chosen
        self.tuning_ = tuning
        self._set_model(history, CFModel.fit(history, cfg))
        return self

    def _set_model(self, history: History, model: CFModel) -> None:
        self.model_ = model
        self.signals_ = Signals.build(history, model.eval_items)
        self.recent_z_ = recent_popularity(history, history.cutoff_us, self.blend_.recent_days)
        self.popular_ = self._popular_order(history, history.cutoff_us)
        self.history_ = history

    # Recent popularity and the popular pool as of the request: precomputed at the cut-off; a
    # request before it (a replay of the past) counts only the plays before it.
    def _recent_z(self, history: History, at_us: int) -> np.ndarray:
        if at_us >= history.cutoff_us:
            return self.recent_z_
        return recent_popularity(history, at_us, self.blend_.recent_days)

    def _popular(self, history: History, at_us: int) -> np.ndarray:
        return self.popular_ if at_us >= history.cutoff_us else self._popular_order(history, at_us)

    def _popular_order(self, history: History, now_us: int) -> np.ndarray:
        """Candidates for the popular pool, most popular first: the `popular_pool + row_length`
        most played, which fill the pool for every member who played at most `popular_pool` of
        them (the blend's part of the row holds the others it can take). Titles nobody played
        in those days never qualify."""
        cfg = self.config
        if cfg.popular_pool == 0 or history.n_titles == 0:
            return np.empty(0, dtype=np.int64)
        players = recent_players(history, now_us, cfg.popular_pool_days)
        top = head(players.astype(np.float64), cfg.popular_pool + cfg.row_length)
        return top[players[top] > 0]

    def grid(self) -> list[Blend]:
        """The blends tried when tuning (recent_days only matters with a recent weight)."""
        cfg = self.config
        out = []
        for p, r, c in product(cfg.popularity_grid, cfg.recent_grid, cfg.content_grid):
            for d in cfg.recent_days_grid if r else [cfg.recent_days]:
                out.append(Blend(p, r, c, d))
        return out

    def _tune(self, history: History, default: Blend) -> tuple[Blend, list[dict[str, float]]]:
        """Grid search of the blend by NDCG@10 on validation cuts inside `history`."""
        cfg = self.config
        grid = self.grid()
        total = np.zeros(len(grid))
        n_users = 0
        rng = np.random.default_rng(cfg.seed)
        end = history.cutoff_us
        ts = history.play_ts
        for frac in sorted(cfg.validation_fractions):
            if len(ts) == 0:
                break
            cut = int(np.quantile(ts, 1.0 - frac))
            sums, n = self._validate(history, cut, end, grid, rng)
            total += sums
            n_users += n
            end = cut
        if n_users == 0:
            return default, []
        mean = total / n_users
        # Ties go to the earliest grid point (the smallest weights): argmax returns the first.
        best = grid[int(np.argmax(mean))]
        table = [
            {**asdict(b), "ndcg10": round(float(m), 5)} for b, m in zip(grid, mean, strict=True)
        ]
        table.append({"validation_users": float(n_users)})
        return best, table

    def _validate(
        self,
        history: History,
        cut: int,
        end: int,
        grid: list[Blend],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, int]:
        """Sum over validation users of NDCG@10 per grid point, and the number of users."""
        cfg = self.config
        train = truncate_history(history, cut)
        users, truth = _validation_truth(history, cut, end)
        if len(users) == 0 or history.n_titles == 0:
            return np.zeros(len(grid)), 0
        if len(users) > cfg.max_validation_users:
            pick = np.sort(rng.choice(len(users), cfg.max_validation_users, replace=False))
            users, truth = users[pick], [truth[i] for i in pick]
        model = CFModel.fit(train, cfg)
        signals = Signals.build(train, model.eval_items)
        recent = {d: recent_popularity(train, cut, d) for d in {b.recent_days for b in grid}}
        unborn = history.added_us >= cut  # titles not in the catalog yet at the cut
        n = history.n_titles
        sums = np.zeros(len(grid))
        for start in range(0, len(users), _CHUNK):
            chunk = users[start : start + _CHUNK].tolist()
            m = len(chunk)
            # float32 halves the memory traffic of the grid loop; ranks barely move.
            cf = np.zeros((m, n), dtype=np.float32)
            content = np.zeros((m, n), dtype=np.float32)
            cold = np.zeros(m, dtype=bool)
            banned = np.tile(unborn, (m, 1))
            relevant = np.zeros((m, n), dtype=bool)
            ideal = np.zeros(m)
            for i, u in enumerate(chunk):
                comp = components(model, signals, train, u, cut, cfg)
                cf[i], content[i], cold[i] = comp.cf, comp.content, comp.cold
                banned[i, train.play_title[train.user_plays(u)]] = True
                t = truth[start + i]
                relevant[i, t] = True
                ideal[i] = _DISCOUNT[: min(_K, len(t))].sum()
            k = min(_K, n)
            rel_r, rel_c = np.nonzero(relevant)
            pop = signals.pop_z.astype(np.float32)
            recent32 = {d: v.astype(np.float32) for d, v in recent.items()}
            for gi, b in enumerate(grid):
                # The same blend as rankers.pvr.blend, for a block of members at once.
                p = b.popularity
                s = np.float32(1.0 - p) * cf
                if p:
                    s += np.float32(p) * pop
                if b.content:
                    s += np.float32(b.content) * content
                s[cold] = pop
                if b.recent:
                    s += np.float32(b.recent) * recent32[b.recent_days]
                s[banned] = -np.inf
                # NDCG@10 without sorting anyone's list: the 10th best value per member (one
                # partition), then the rank of each relevant title above it = how many titles
                # beat it. 2x faster than argpartition + sort on the default world.
                kth = np.partition(s, n - k, axis=1)[:, n - k]
                v = s[rel_r, rel_c]
                top = (v >= kth[rel_r]) & np.isfinite(v)
                hit_r, hit_v = rel_r[top], v[top]
                if len(hit_r):
                    better = (s[hit_r] > hit_v[:, None]).sum(axis=1)
                    ok = better < k
                    gain = np.bincount(hit_r[ok], _DISCOUNT[better[ok]], minlength=m)
                    sums[gi] += float((gain / ideal).sum())
        return sums, len(users)

    # ----- serve -----------------------------------------------------------------------------

    def scores(self, user: int, history: History, at_us: int | None = None) -> np.ndarray:
        """Top-N score of every title (float32, finite), played titles included."""
        check_fitted(self, "model_")
        at = history.cutoff_us if at_us is None else at_us
        comp = components(self.model_, self.signals_, history, user, at, self.config)
        b = self.blend_
        extra = b.recent * self._recent_z(history, at) if b.recent else None
        s = blend(comp, self.signals_.pop_z, b.popularity, b.content, extra=extra)
        return s.astype(np.float32)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "model_")
        user = history.user_index(request.user_id)
        score = self.scores(user, history, request.at_us).astype(np.float64)
        if self.config.exclude_played and user >= 0:
            score[history.play_title[history.user_plays_before(user, request.at_us)]] = -np.inf
        cfg = self.config
        pool = min(cfg.popular_pool, cfg.row_length)
        idx = head(score, cfg.row_length - pool)
        if pool:
            popular = self._popular(history, request.at_us)
            extra = popular[np.isfinite(score[popular])]
            extra = extra[~np.isin(extra, idx)][:pool]
            idx = np.concatenate([idx, extra])
            idx = idx[np.lexsort((idx, -score[idx]))]
        if len(idx) == 0:
            return []
        return [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=self.config.title,
                titles=idx,
                scores=score[idx],
                evidence={"personalized": user >= 0 and history.user_plays(user).stop > 0},
            )
        ]

    # ----- persistence -----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        check_fitted(self, "model_")
        save_state(
            Path(directory),
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays=self.model_.arrays(),
            meta={
                "cf": self.config.cf_keys(),
                "blend": asdict(self.blend_),
                "tuning": self.tuning_,
            },
        )

    def load(self, directory: Path, history: History) -> Self:
        model, meta = load_cf_state(directory, history, self.type_name, STATE_VERSION, self.config)
        w: Any = meta.get("blend")
        try:
            self.blend_ = Blend(**{k: float(w[k]) for k in Blend.__dataclass_fields__})
        except (TypeError, KeyError, ValueError):
            raise ModelLoadError(f"{directory}: the saved Top-N blend is missing") from None
        self.tuning_ = list(meta.get("tuning") or [])
        self._set_model(history, model)
        return self


_DISCOUNT = 1.0 / np.log2(np.arange(2, _K + 2))


def recent_popularity(history: History, now_us: int, days: float) -> np.ndarray:
    """z(log1p(distinct players in the `days` before `now_us`)) per title."""
    return zscore(np.log1p(recent_players(history, now_us, days)))


def recent_players(history: History, now_us: int, days: float) -> np.ndarray:
    """Distinct members who played each title in the `days` before `now_us`."""
    since = now_us - int(days * US_PER_DAY)
    keep = (history.play_ts >= since) & (history.play_ts < now_us)
    key = history.play_user[keep].astype(np.int64) * history.n_titles + history.play_title[keep]
    titles = sorted_unique(key) % max(history.n_titles, 1)
    return np.bincount(titles, minlength=history.n_titles)


def _validation_truth(history: History, cut: int, end: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users with plays before `cut` and, for each, the titles first played in [cut, end) that
    existed at the cut: the same definition as bench/protocol.py, inside one History."""
    window = (history.play_ts >= cut) & (history.play_ts < end)
    wu, wt = history.play_user[window], history.play_title[window]
    keep = history.added_us[wt] < cut
    wu, wt = wu[keep], wt[keep]
    if len(wu) == 0:
        return np.empty(0, dtype=np.int64), []
    before = history.play_ts < cut
    n_before = np.bincount(history.play_user[before], minlength=history.n_users)
    seen = sorted_unique(
        history.play_user[before].astype(np.int64) * history.n_titles + history.play_title[before]
    )
    pairs = sorted_unique(wu.astype(np.int64) * history.n_titles + wt)
    pairs = pairs[~np.isin(pairs, seen)]
    pu, pt = np.divmod(pairs, history.n_titles)
    ok = n_before[pu] > 0
    pu, pt = pu[ok], pt[ok]
    users, starts = np.unique(pu, return_index=True)
    truth = np.split(pt, starts[1:])
    return users, truth
