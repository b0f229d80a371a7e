"""A real-data evaluation protocol: two splits of a dataset, library baselines, rowrank's rows
and pages scored on the same members (bench/bench_realdata.py prints the tables; docs/realdata.md).

Splits (`RealSplit`: the training Dataset every model fits on, the members scored, their ground
truth and the time each member's page is asked for):

- per-member leave-last-N-out (`leave_last_out`): every member with at least `min_plays` plays
  has their last `n` plays held out (plays ordered by time, ties by title id, so the choice is
  deterministic); the training Dataset is the whole dataset without exactly those plays, and the
  member's page is asked for one second after their last training play. Validation applies the
  same rule to the test split's training Dataset (the n plays before the last n). As usual for
  leave-last-N-out, a member's request time is not a global cut: the training data holds other
  members' plays after it, which point-in-time rankers (trending, new releases) and every
  baseline see.
- global temporal (`global_split`): engine.evaluation.split's rule (the last `after_fraction`
  of plays by time is the test period; members with plays on both sides; every page asked for
  at the cut). Validation: the same rule inside the training period.

Ground truth: the held-out titles the member had not played in the training data (binary).
Metrics per member: NDCG@10 and Recall@10 (engine.evaluation.metrics); a page's N2DCG against a
baseline's list poured row-major into the same page shape (`poured_n2dcg`).

Baselines (`BASELINES`): EASE (Steck 2019) is the closed form written here, as no installable
library offers it without a heavy or conflicting dependency (docs/realdata.md); ALS and item-kNN
(cosine, BM25) are `implicit`'s (the optional `bench` extra); MostPopular and Trending (plays
in the `period_days` before each member's request time) are counts. Each has a small grid; its
hyper-parameters are chosen on a validation split only (`tune`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from engine.data.columns import Col
from engine.data.dataset import Dataset
from engine.data.history import History, to_us
from engine.evaluation.metrics import (
    anti_diagonal_ranks,
    n2dcg_by_row,
    ndcg_at_k,
    page_grid,
    recall_at_k,
)
from engine.evaluation.split import make_split, quantile_cut
from engine.request.layout import DeviceLayout

K = 10  # the cut-off of NDCG@k and Recall@k
HOLD_OUT = 5  # plays held out per member in the per-member split
MIN_PLAYS = 10  # members with fewer plays are not split (nor scored)
GLOBAL_AFTER = 0.1  # share of plays after the global cut
LIST_LENGTH = 300  # baseline list length: the web page's 12 x 25 slots, so any page is covered

_SECOND = timedelta(seconds=1)


# ----- splits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealSplit:
    """Training data, the scored members (History indices), their ground truth (History title
    indices) and the time each member's page is asked for."""

    name: str  # e.g. "member-test", "global-validation"
    kind: str  # "member" or "global"
    train: Dataset  # the only data any model of this split fits on
    until: datetime | None  # the training cut-off (global), None: all of `train` (member)
    history: History  # History of `train` (as of `until`)
    users: np.ndarray  # int64 History user indices, ascending
    truth: tuple[np.ndarray, ...]  # int64 History title indices per member
    at: tuple[datetime, ...]  # the page request time per member
    held_out: int  # plays held out of training (member) or after the cut (global)

    @property
    def at_us(self) -> np.ndarray:
        return np.array([to_us(t) for t in self.at], dtype=np.int64)

    def subsample(self, n: int, rng: np.random.Generator) -> RealSplit:
        """At most `n` scored members (seeded choice, order kept); training data unchanged."""
        if len(self.users) <= n:
            return self
        pick = np.sort(rng.choice(len(self.users), n, replace=False))
        return replace(
            self,
            users=self.users[pick],
            truth=tuple(self.truth[i] for i in pick.tolist()),
            at=tuple(self.at[i] for i in pick.tolist()),
        )

    def describe(self) -> str:
        n_truth = sum(len(t) for t in self.truth)
        return (
            f"{self.name}: {len(self.history.play_user):,} training plays, {self.held_out:,} "
            f"held out, {len(self.users)} members scored, {n_truth:,} ground-truth titles"
        )


def held_out_plays(plays: pl.DataFrame, n: int = HOLD_OUT, min_plays: int = MIN_PLAYS) -> pl.Series:
    """Bool mask over `plays` (in its order): each member's last `n` plays by (time, title id),
    for members with at least `min_plays` plays."""
    ranked = plays.with_row_index("_row").select(
        "_row",
        pl.struct(Col.TS, Col.TITLE_ID)
        .rank("ordinal", descending=True)
        .over(Col.USER_ID)
        .alias("_from_end"),
        pl.len().over(Col.USER_ID).alias("_n"),
    )
    mask = (ranked["_from_end"] <= n) & (ranked["_n"] >= min_plays)
    return mask.alias("held_out")


def leave_last_out(
    ds: Dataset, *, n: int = HOLD_OUT, min_plays: int = MIN_PLAYS, name: str = "member-test"
) -> RealSplit:
    """The per-member split (module doc); `leave_last_out(split.train, ...)` is its validation."""
    mask = held_out_plays(ds.plays, n, min_plays)
    held = ds.plays.filter(mask)
    train = replace(ds, plays=ds.plays.filter(~mask))
    history = History.from_dataset(train)
    last = train.plays.group_by(Col.USER_ID).agg(pl.col(Col.TS).max())
    last_at = dict(zip(last[Col.USER_ID].to_list(), last[Col.TS].to_list(), strict=True))
    by_user: dict[int, list[int]] = {}
    for uid, tid in zip(held[Col.USER_ID].to_list(), held[Col.TITLE_ID].to_list(), strict=True):
        by_user.setdefault(history.user_index(uid), []).append(history.title_index(tid))
    users, truth, at = [], [], []
    for u in sorted(by_user):
        if u < 0:
            continue
        played = history.play_title[history.user_plays(u)]
        titles = np.array([t for t in by_user[u] if t >= 0], dtype=np.int64)
        new = np.setdiff1d(titles, played)
        if len(new) == 0:
            continue
        users.append(u)
        truth.append(new)
        ts = last_at[str(history.user_ids[u])]
        at.append((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) + _SECOND)
    return RealSplit(
        name=name,
        kind="member",
        train=train,
        until=None,
        history=history,
        users=np.array(users, dtype=np.int64),
        truth=tuple(truth),
        at=tuple(at),
        held_out=held.height,
    )


def global_split(
    ds: Dataset, *, after_fraction: float = GLOBAL_AFTER, name: str = "global-test"
) -> RealSplit:
    """engine.evaluation.split's global temporal rule; `global_split(split.train, ...)` is its
    validation (the same rule inside the training period)."""
    cut = quantile_cut(ds.plays, after_fraction)
    s = make_split(ds, cut, name=name)
    held = ds.plays.filter(pl.col(Col.TS) >= pl.lit(cut).dt.cast_time_unit("us")).height
    return RealSplit(
        name=name,
        kind="global",
        train=ds.as_of(cut),
        until=cut,
        history=s.history,
        users=s.users.astype(np.int64),
        truth=tuple(t.astype(np.int64) for t in s.truth),
        at=tuple(cut for _ in range(len(s.users))),
        held_out=held,
    )


def make_realdata_split(ds: Dataset, kind: str, *, validation: bool) -> RealSplit:
    """The test split of `kind` ("member" or "global"), or its validation split, which is carved
    from the test split's training data only."""
    if kind == "member":
        test = leave_last_out(ds, name="member-test")
        return leave_last_out(test.train, name="member-validation") if validation else test
    if kind == "global":
        test = global_split(ds, name="global-test")
        return global_split(test.train, name="global-validation") if validation else test
    raise ValueError(f"unknown split kind {kind!r}: use 'member' or 'global'")


# ----- metrics ------------------------------------------------------------------------------------


def list_scores(lists: Sequence[np.ndarray], truth: Sequence[np.ndarray], k: int = K) -> ListScores:
    """NDCG@k and Recall@k per member of aligned ranked lists (-1 entries are padding)."""
    nd = np.array([ndcg_at_k(r[r >= 0], t, k) for r, t in zip(lists, truth, strict=True)])
    rc = np.array([recall_at_k(r[r >= 0], t, k) for r, t in zip(lists, truth, strict=True)])
    return ListScores(ndcg=nd, recall=rc)


@dataclass(frozen=True)
class ListScores:
    """Per-member NDCG@K and Recall@K of one list source."""

    ndcg: np.ndarray
    recall: np.ndarray


def pour(ranked: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """A single list poured row-major into rows of `lengths`, as a page grid (-1 padded)."""
    ranked = ranked[ranked >= 0]
    rows, start = [], 0
    for n in lengths:
        rows.append(ranked[start : start + n])
        start += n
    return page_grid(rows, max(lengths, default=0))


def deal(ranked: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """A single list dealt into rows of `lengths` by anti-diagonals (`anti_diagonal_ranks`),
    -1 padded."""
    ranked = ranked[ranked >= 0]
    grid = np.full((len(lengths), max(lengths, default=0)), -1, dtype=np.int64)
    for k, pos in enumerate(anti_diagonal_ranks(lengths)):
        shown = pos < len(ranked)
        grid[k, : len(pos)][shown] = ranked[pos[shown]]
    return grid


def poured_n2dcg(
    ranked: np.ndarray,
    truth: np.ndarray,
    lengths: Sequence[int],
    layout: DeviceLayout,
    *,
    dealt: bool = False,
) -> np.ndarray:
    """Each row's N2DCG of `ranked` poured into a page of row `lengths` (they sum to the page's;
    bench_page_quality's comparison); `dealt`: laid out by `deal` instead, the best one list
    can do on that page."""
    return n2dcg_by_row((deal if dealt else pour)(ranked, lengths), truth, layout)


# ----- baselines ----------------------------------------------------------------------------------


def user_items(history: History) -> sp.csr_matrix:
    """Binary (members x titles) matrix of a History's plays (a replayed title counts once)."""
    data = np.ones(len(history.play_user), dtype=np.float32)
    m = sp.csr_matrix(
        (data, (history.play_user, history.play_title)),
        shape=(history.n_users, history.n_titles),
        dtype=np.float32,
    )
    m.data[:] = 1.0  # duplicates were summed
    return m


def top_unplayed(scores: np.ndarray, played: np.ndarray, k: int) -> np.ndarray:
    """The k best titles by `scores` (ties to the lower index), `played` and -inf excluded."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[played] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    return order[np.isfinite(s[order])].astype(np.int64)


@dataclass(frozen=True)
class Baseline:
    """A baseline: its grid, and `rank(split, params, rng)` giving one ranked list per member."""

    name: str
    library: str
    grid: tuple[Mapping[str, Any], ...]
    rank: Callable[[RealSplit, Mapping[str, Any], np.random.Generator], list[np.ndarray]]


def _played(split: RealSplit, u: int) -> np.ndarray:
    return split.history.play_title[split.history.user_plays(u)]


def rank_most_popular(
    split: RealSplit, params: Mapping[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """Titles by distinct training players (all of the training data)."""
    counts = np.asarray(user_items(split.history).sum(axis=0)).ravel()
    return [top_unplayed(counts, _played(split, int(u)), LIST_LENGTH) for u in split.users]


def rank_trending(
    split: RealSplit, params: Mapping[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """Titles by training plays in the `period_days` before each member's request time."""
    h = split.history
    order = np.argsort(h.play_ts, kind="stable")
    ts, titles = h.play_ts[order], h.play_title[order]
    period = int(float(params["period_days"]) * 86_400 * 1_000_000)
    out = []
    for u, at in zip(split.users.tolist(), split.at_us.tolist(), strict=True):
        lo, hi = np.searchsorted(ts, [at - period, at])
        counts = np.bincount(titles[lo:hi], minlength=h.n_titles).astype(np.float64)
        out.append(top_unplayed(counts, _played(split, u), LIST_LENGTH))
    return out


def ease_weights(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"), closed form:
    P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)), so diag(B) = 0."""
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


def rank_ease(
    split: RealSplit, params: Mapping[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """EASE over the titles with at least `min_players` distinct training players (the same
    restriction as rowrank's PVR, which keeps the dense inverse affordable); others unranked."""
    x = user_items(split.history)
    players = np.asarray(x.sum(axis=0)).ravel()
    items = np.flatnonzero(players >= int(params["min_players"]))
    b = ease_weights(x[:, items], float(params["l2"]))
    sub = x[split.users][:, items]
    scores = np.asarray(sub @ b)
    out = []
    full = np.full(split.history.n_titles, -np.inf)
    for i, u in enumerate(split.users.tolist()):
        full[:] = -np.inf
        full[items] = scores[i]
        out.append(top_unplayed(full, _played(split, u), LIST_LENGTH))
    return out


def _implicit_lists(model: Any, split: RealSplit, x: sp.csr_matrix) -> list[np.ndarray]:
    ids, _ = model.recommend(
        split.users, x[split.users], N=LIST_LENGTH, filter_already_liked_items=True
    )
    return [r[r >= 0].astype(np.int64) for r in np.asarray(ids)]


def rank_als(
    split: RealSplit, params: Mapping[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """implicit's ALS (Hu, Koren & Volinsky 2008, conjugate gradient), on CPU, BLAS on one
    thread as implicit asks."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    x = user_items(split.history)
    # the constructor checks the BLAS thread count (and warns), so it goes inside the limit too
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=int(params["factors"]),
            regularization=float(params["regularization"]),
            alpha=float(params["alpha"]),
            iterations=int(params["iterations"]),
            random_state=rng,
        )
        model.fit(x, show_progress=False)
        return _implicit_lists(model, split, x)


def rank_item_knn(
    split: RealSplit, params: Mapping[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """implicit's item-item kNN: cosine or BM25-weighted similarity, `k` neighbours."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
    from implicit.utils import ParameterWarning
    from threadpoolctl import threadpool_limits

    x = user_items(split.history)
    k = int(params["k"])
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # implicit's own BM25/cosine weighting hands its fit a COO matrix and then warns that
        # it converts it to CSR: a warning about implicit's internals, not about our input
        warnings.filterwarnings("ignore", category=ParameterWarning)
        model = CosineRecommender(K=k) if params["similarity"] == "cosine" else BM25Recommender(K=k)
        model.fit(x, show_progress=False)
        return _implicit_lists(model, split, x)


def _grid(**axes: Iterable[Any]) -> tuple[dict[str, Any], ...]:
    keys = list(axes)
    return tuple(dict(zip(keys, v, strict=True)) for v in itertools.product(*axes.values()))


BASELINES: tuple[Baseline, ...] = (
    Baseline(
        "EASE",
        "closed form (numpy)",
        _grid(l2=(20.0, 50.0, 200.0, 500.0, 1500.0), min_players=(3,)),
        rank_ease,
    ),
    Baseline(
        "ALS",
        "implicit",
        _grid(
            factors=(32, 64, 128),
            regularization=(0.01, 0.1, 1.0),
            alpha=(1.0, 10.0),
            iterations=(15,),
        ),
        rank_als,
    ),
    Baseline(
        "item-kNN",
        "implicit",
        _grid(similarity=("cosine", "bm25"), k=(20, 50, 100, 200)),
        rank_item_knn,
    ),
    Baseline("MostPopular", "counts (numpy)", ({},), rank_most_popular),
    Baseline(
        "Trending",
        "counts (numpy)",
        _grid(period_days=(7.0, 30.0, 90.0, 365.0)),
        rank_trending,
    ),
)
NEEDS_IMPLICIT = frozenset({"ALS", "item-kNN"})


def implicit_available() -> bool:
    """True when the optional `bench` extra (implicit) is installed."""
    try:
        import implicit  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Tuned:
    """A baseline's grid scored on a validation split and the parameters chosen there."""

    name: str
    params: Mapping[str, Any]
    grid: tuple[tuple[Mapping[str, Any], float], ...]  # (params, mean NDCG@K)


def tune(
    baseline: Baseline,
    validation: RealSplit,
    rng: np.random.Generator,
    progress: Callable[[Iterable[Any]], Iterable[Any]] = lambda x: x,
) -> Tuned:
    """Every grid point scored by mean NDCG@K on `validation`; the best is chosen (ties: the
    first in grid order)."""
    scored = []
    for params in progress(baseline.grid):
        lists = baseline.rank(validation, params, rng)
        scored.append((params, float(list_scores(lists, validation.truth).ndcg.mean())))
    best = max(range(len(scored)), key=lambda i: (scored[i][1], -i))
    return Tuned(baseline.name, scored[best][0], tuple(scored))


# ----- rowrank's side -----------------------------------------------------------------------------


@dataclass
class RowrankScores:
    """Per member: the Top Picks row as shown, each ranker's first row in its own order (after
    the business filters, before the title model), the page grid, and the candidates' union."""

    top_picks: list[np.ndarray] = field(default_factory=list)
    first_rows: dict[str, list[np.ndarray]] = field(default_factory=dict)
    row_lengths: list[list[int]] = field(default_factory=list)
    page_n2dcg: list[np.ndarray] = field(default_factory=list)  # per row, summing to N2DCG
    union: list[np.ndarray] = field(default_factory=list)
    pages_without_top_picks: int = 0
    layout: DeviceLayout | None = None


def top_picks_ranker(eng: Any) -> str | None:
    """The instance behind the page's Top Picks row: the first ranker of type `top_picks`, else
    of type `top_n`."""
    for kind in ("top_picks", "top_n"):
        for name, r in eng.rankers.items():
            if getattr(r, "type_name", "") == kind:
                return name
    return None


def score_rowrank(
    eng: Any,
    split: RealSplit,
    *,
    device: str = "web",
    progress: Callable[[Iterable[Any]], Iterable[Any]] = lambda x: x,
) -> RowrankScores:
    """One page per scored member of `split` from a loaded engine trained on `split.train`."""
    from engine.pipeline import propose_rows

    h = eng.history
    if not (
        np.array_equal(h.title_ids, split.history.title_ids)
        and np.array_equal(h.user_ids, split.history.user_ids)
    ):
        raise ValueError(f"the engine was not trained on {split.name}'s training data")
    top_name = top_picks_ranker(eng)
    index = {t: i for i, t in enumerate(h.title_ids.tolist())}
    out = RowrankScores(first_rows={n: [] for n in eng.rankers}, layout=eng.layout(device))
    empty = np.empty(0, dtype=np.int64)
    for u, at in progress(list(zip(split.users.tolist(), split.at, strict=True))):
        ctx = eng.context(str(h.user_ids[u]), device, at)
        page = eng.page_for(ctx)
        shown = [np.array([index[i.title_id] for i in r.items], dtype=np.int64) for r in page.rows]
        top = next((s for s, r in zip(shown, page.rows, strict=True) if r.ranker == top_name), None)
        if top is None:
            out.pages_without_top_picks += 1
        out.top_picks.append(empty if top is None else top)
        out.row_lengths.append([len(s) for s in shown])
        truth = split.truth[len(out.page_n2dcg)]
        out.page_n2dcg.append(n2dcg_by_row(page_grid(shown), truth, eng.layout(device)))
        rows, _ = eng.filter(propose_rows(eng.rankers, ctx, h).rows, ctx)
        for name in eng.rankers:
            first = next((r for r in rows if r.ranker == name), None)
            out.first_rows[name].append(empty if first is None else first.titles.astype(np.int64))
        cat = np.concatenate([empty, *(r.titles.astype(np.int64) for r in rows)])
        out.union.append(np.unique(cat))
    return out


def union_recall(union: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> np.ndarray:
    """Per member: |candidates' union ∩ truth| / |truth| (what any re-ranker could find)."""
    return np.array(
        [np.isin(t, c).mean() if len(t) else 0.0 for c, t in zip(union, truth, strict=True)]
    )


__all__ = [
    "BASELINES",
    "HOLD_OUT",
    "LIST_LENGTH",
    "MIN_PLAYS",
    "NEEDS_IMPLICIT",
    "Baseline",
    "K",
    "ListScores",
    "RealSplit",
    "RowrankScores",
    "Tuned",
    "ease_weights",
    "global_split",
    "held_out_plays",
    "implicit_available",
    "leave_last_out",
    "list_scores",
    "make_realdata_split",
    "pour",
    "poured_n2dcg",
    "score_rowrank",
    "top_unplayed",
    "tune",
    "union_recall",
    "user_items",
]
