"""Row and page metrics, bootstrap confidence intervals and paired comparisons (`rowrank bench`).

Every metric takes plain numpy arrays so it can be checked by hand
(tests/evaluation/test_metrics.py).
Titles are integer indices (History positions); a page is a 2-D grid, one row per page row,
padded with -1. Relevance is binary: a title is relevant when it is in the member's ground truth
(the titles they went on to play, bench/protocol.py). docs/benchmark.md defines each metric.

List metrics (one ranked list, e.g. a row), with T = the ground truth and k the cut-off:
- Recall@k = |top-k ∩ T| / min(k, |T|)   (a perfect list scores 1 whatever |T|)
- NDCG@k   = Σ_{i≤k} rel_i / log2(i + 1) ÷ the same sum for min(k, |T|) hits on top
- AP@k     = Σ_{i≤k} P@i · rel_i / min(k, |T|)   (MAP@k is its mean over members)
- Hit@k    = 1 if top-k ∩ T is not empty (hit rate is its mean)

Page metrics (one page, a grid of R rows × C columns, row r and column c 1-based):
- N2DCG: DCG2 = Σ_{r,c} rel(r,c) / log2(r + c), where a title repeated after its first
  appearance (in reading order: row by row, left to right) counts zero; divided by the ideal
  DCG2: the min(|T|, slots) largest discounts 1 / log2(r + c) of the device's full grid
  (layout.rows × layout.titles_per_row). (1,1) has discount 1; (1,2) and (2,1) 1/log2(3).
- Visible recall: distinct relevant titles inside the first visible_rows × visible_titles
  slots ÷ min(|T|, visible slots).
- Expected plays: the probability that a member browsing with the 2-D cascade of
  engine.sim.world.page_play_probs (rows top-down; inside a row left to right, moving on with
  probability col_continue; after a row without a play, stopping with probability row_stop)
  plays something, when each relevant title's first appearance attracts with probability
  `attraction` and every other slot with 0.
- Duplicate rate: 1 - distinct titles / filled slots of the page.
- Genre diversity: genres present among the visible titles ÷ genres in the catalog.
Across pages:
- Coverage: distinct titles shown on any page ÷ titles in the catalog.
- Effective catalog size (ECS, Gomez-Uribe & Hunt 2015, "The Netflix Recommender System:
  Algorithms, Business Value, and Innovation", ACM TMIS 6(4)): with p_i the share of exposures
  (or plays) of the i-th most exposed title, ECS = 2 Σ_i i·p_i − 1; 1 when one title takes
  everything, N when N titles share equally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.request.layout import DeviceLayout
from engine.sim.world import page_play_probs

# Bootstrap resamples per interval: the Monte-Carlo error of a 95% percentile bound at 1,000
# resamples is about 1-2% of the interval width, well under the intervals' own width.
N_BOOT = 1000
LEVEL = 0.95
# Indices drawn per chunk of resamples: bounds memory (8 bytes each) whatever the member count.
_CHUNK_CELLS = 2_000_000


# ----- list metrics ----------------------------------------------------------------------------


def _relevant(ranked: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    return np.isin(np.asarray(ranked)[:k], truth)


def recall_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """|top-k ∩ truth| / min(k, |truth|); 0 for an empty truth."""
    if len(truth) == 0:
        return 0.0
    return float(_relevant(ranked, truth, k).sum()) / min(k, len(truth))


def ndcg_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Binary-relevance NDCG@k with the log2(i + 1) discount, i 1-based."""
    if len(truth) == 0:
        return 0.0
    rel = _relevant(ranked, truth, k)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return float(disc[: len(rel)][rel].sum() / disc[: min(k, len(truth))].sum())


def average_precision_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """AP@k = Σ_{i≤k} precision@i · rel_i / min(k, |truth|)."""
    if len(truth) == 0:
        return 0.0
    rel = _relevant(ranked, truth, k)
    if not rel.any():
        return 0.0
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float(prec[rel].sum() / min(k, len(truth)))


def hit_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """1.0 when a relevant title is in the top k, else 0.0."""
    return float(_relevant(ranked, truth, k).any())


def list_metrics(ranked: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """Recall, NDCG, AP and hit at k of one ranked list, keyed "Recall@k" etc."""
    return {
        f"Recall@{k}": recall_at_k(ranked, truth, k),
        f"NDCG@{k}": ndcg_at_k(ranked, truth, k),
        f"MAP@{k}": average_precision_at_k(ranked, truth, k),
        f"HitRate@{k}": hit_at_k(ranked, truth, k),
    }


# ----- pages -----------------------------------------------------------------------------------


def page_grid(rows: Sequence[np.ndarray], n_cols: int | None = None) -> np.ndarray:
    """Rows of title indices as an (R, C) int64 grid padded with -1 (C = longest row)."""
    width = max((len(r) for r in rows), default=0) if n_cols is None else n_cols
    grid = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        n = min(len(r), grid.shape[1])
        grid[i, :n] = np.asarray(r[:n], dtype=np.int64)
    return grid


def first_appearances(grid: np.ndarray) -> np.ndarray:
    """Bool grid: the slot holds a title that no earlier slot (reading order) holds."""
    flat = grid.reshape(-1)
    out = np.zeros(flat.shape, dtype=bool)
    filled = np.flatnonzero(flat >= 0)
    _, first = np.unique(flat[filled], return_index=True)
    out[filled[first]] = True
    return out.reshape(grid.shape)


def anti_diagonal_ranks(lengths: Sequence[int]) -> list[np.ndarray]:
    """Rows of `lengths` filled from one ranking as N2DCG reads a page, by anti-diagonals: slot
    (1,1); then (1,2), (2,1); then (1,3), (2,2), (3,1); ... Each row's ranking positions (0-based)
    in column order. Each rank gets a slot discounted no more than any later rank's, so where
    earlier ranks are likelier plays this is the best layout of one list."""
    r = np.repeat(np.arange(len(lengths)), lengths)
    c = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else r
    position = np.empty(len(r), dtype=np.int64)
    position[np.lexsort((r, r + c))] = np.arange(len(r))
    return np.split(position, np.cumsum(lengths)[:-1]) if len(lengths) else []


def discounts_2d(n_rows: int, n_cols: int) -> np.ndarray:
    """(R, C) discounts 1 / log2(r + c), r and c 1-based."""
    r = np.arange(1, n_rows + 1)[:, None]
    c = np.arange(1, n_cols + 1)[None, :]
    return 1.0 / np.log2(r + c)


def n2dcg(grid: np.ndarray, truth: np.ndarray, layout: DeviceLayout) -> float:
    """2-D NDCG of a page (module doc); 0 for an empty truth."""
    return float(n2dcg_by_row(grid, truth, layout).sum())


def n2dcg_by_row(grid: np.ndarray, truth: np.ndarray, layout: DeviceLayout) -> np.ndarray:
    """Each row's share of the page's N2DCG (float64 per grid row; they sum to `n2dcg`): where
    on the page a list gains or loses against another."""
    ideal = discounts_2d(layout.rows, layout.titles_per_row)
    return _gain_by_row(grid, truth, discounts_2d(*grid.shape), ideal)


def read_gain(grid: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> float:
    """N2DCG with a page's reading measured instead of assumed: `weights` (R, C) is how much a
    title at each slot counts (e.g. the play rate of each slot in logged impressions), slots
    outside it count zero, and the ideal is the min(|T|, slots) largest weights."""
    padded = np.zeros((max(grid.shape[0], weights.shape[0]), max(grid.shape[1], weights.shape[1])))
    padded[: weights.shape[0], : weights.shape[1]] = weights
    return float(_gain_by_row(grid, truth, padded[: grid.shape[0], : grid.shape[1]], weights).sum())


def _gain_by_row(
    grid: np.ndarray, truth: np.ndarray, weights: np.ndarray, ideal_weights: np.ndarray
) -> np.ndarray:
    if len(truth) == 0 or grid.size == 0:
        return np.zeros(grid.shape[0])
    rel = np.isin(grid, truth) & first_appearances(grid)
    dcg = (weights * rel).sum(axis=1)
    ideal = float(np.sort(ideal_weights.reshape(-1))[::-1][: len(truth)].sum())
    return dcg / ideal if ideal > 0 else np.zeros(grid.shape[0])


def visible(grid: np.ndarray, layout: DeviceLayout) -> np.ndarray:
    """The part of the grid the device shows before any scrolling."""
    return grid[: layout.visible_rows, : layout.visible_titles]


def visible_recall(grid: np.ndarray, truth: np.ndarray, layout: DeviceLayout) -> float:
    """Distinct relevant titles in the visible grid ÷ min(|truth|, visible slots)."""
    if len(truth) == 0:
        return 0.0
    shown = np.unique(visible(grid, layout))
    hits = int(np.isin(shown[shown >= 0], truth).sum())
    return hits / min(len(truth), layout.visible_rows * layout.visible_titles)


def cascade_expected_plays(
    grid: np.ndarray,
    truth: np.ndarray,
    *,
    attraction: float,
    col_continue: float,
    row_stop: float,
) -> float:
    """P(a play) under the 2-D cascade when relevant first appearances attract (module doc)."""
    if grid.size == 0:
        return 0.0
    a = (np.isin(grid, truth) & first_appearances(grid)) * float(attraction)
    p = page_play_probs(a[None], np.array([col_continue]), row_stop)[0]
    return float(p.sum())


def cascade_slot_probs(
    grid: np.ndarray,
    truth: np.ndarray,
    *,
    attraction: float,
    col_continue: float,
    row_stop: float,
) -> np.ndarray:
    """(R, C) probability that the cascade's play lands in each slot (sums to the above)."""
    a = (np.isin(grid, truth) & first_appearances(grid)) * float(attraction)
    return page_play_probs(a[None], np.array([col_continue]), row_stop)[0]


def duplicate_rate(grid: np.ndarray) -> float:
    """1 - distinct titles / filled slots; 0 for an empty page."""
    filled = grid[grid >= 0]
    if filled.size == 0:
        return 0.0
    return 1.0 - len(np.unique(filled)) / filled.size


def genre_diversity(titles: np.ndarray, title_genres: np.ndarray) -> float:
    """Genres present among `titles` (any shape, -1 ignored) ÷ genres in the catalog."""
    n_genres = title_genres.shape[1]
    t = np.unique(titles[titles >= 0])
    if n_genres == 0 or t.size == 0:
        return 0.0
    return float(title_genres[t].any(axis=0).sum()) / n_genres


def effective_catalog_size(counts: np.ndarray) -> float:
    """ECS = 2 Σ_i i·p_i − 1 over titles sorted by share p_i, descending (i 1-based).

    `counts` are exposures or plays per title (any order, zeros allowed); 0 when all are 0."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = np.sort(c[c > 0])[::-1] / total
    return float(2.0 * (p * np.arange(1, len(p) + 1)).sum() - 1.0)


def coverage(shown: np.ndarray, n_titles: int) -> float:
    """Distinct titles in `shown` (-1 ignored) ÷ catalog size."""
    s = np.unique(np.asarray(shown)[np.asarray(shown) >= 0])
    return len(s) / max(n_titles, 1)


# ----- bootstrap -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean (or ratio) with its percentile-bootstrap interval over members."""

    value: float
    lo: float
    hi: float
    n: int  # members the value is over

    def to_dict(self) -> dict[str, float | int | None]:
        return {"value": _f(self.value), "lo": _f(self.lo), "hi": _f(self.hi), "n": self.n}


@dataclass(frozen=True)
class Comparison:
    """A variant minus the baseline: difference, its interval, a two-sided p and the verdict."""

    diff: float
    lo: float
    hi: float
    relative: float  # diff / baseline value (nan when the baseline is 0)
    p_value: float
    significant: bool  # the interval excludes 0

    def to_dict(self) -> dict[str, float | bool | None]:
        return {
            "diff": _f(self.diff),
            "lo": _f(self.lo),
            "hi": _f(self.hi),
            "relative": _f(self.relative),
            "p_value": _f(self.p_value),
            "significant": self.significant,
        }


def _f(x: float) -> float | None:
    """JSON-safe: NaN becomes None explicitly (orjson would write null silently)."""
    return None if not np.isfinite(x) else float(x)


def _resampled_sums(
    columns: Sequence[np.ndarray], rng: np.random.Generator, n_boot: int
) -> list[np.ndarray]:
    """For each column, its sum over each of `n_boot` resamples (with replacement) of the
    members; every column is resampled with the same member draws (pairing)."""
    n = len(columns[0])
    out = [np.empty(n_boot) for _ in columns]
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for lo in range(0, n_boot, step):
        hi = min(n_boot, lo + step)
        idx = rng.integers(0, n, size=(hi - lo, n))
        for col, acc in zip(columns, out, strict=True):
            acc[lo:hi] = col[idx].sum(axis=1)
    return out


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    values: np.ndarray, rng: np.random.Generator, *, n_boot: int = N_BOOT, level: float = LEVEL
) -> Interval:
    """Mean of per-member values with a percentile-bootstrap interval (resampling members)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    (sums,) = _resampled_sums([v], rng, n_boot)
    lo, hi = _bounds(sums / v.size, level)
    return Interval(float(v.mean()), lo, hi, int(v.size))


def bootstrap_ratio_ci(
    num: np.ndarray,
    den: np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Interval:
    """Σnum / Σden with a bootstrap interval resampling members (a member's sessions stay
    together: the cluster bootstrap, since one member's sessions are not independent)."""
    n_ = np.asarray(num, dtype=np.float64)
    d_ = np.asarray(den, dtype=np.float64)
    if n_.size == 0 or d_.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), int(n_.size))
    sn, sd = _resampled_sums([n_, d_], rng, n_boot)
    lo, hi = _bounds(sn / np.maximum(sd, 1e-300), level)
    return Interval(float(n_.sum() / d_.sum()), lo, hi, int(n_.size))


def _p_two_sided(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": twice the smaller tail at 0."""
    if samples.size == 0:
        return float("nan")
    below = float((samples <= 0).mean())
    above = float((samples >= 0).mean())
    return min(1.0, 2.0 * min(below, above))


def paired_comparison(
    variant: np.ndarray,
    baseline: np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Comparison:
    """mean(variant) - mean(baseline) over the same members (aligned arrays), resampling
    members jointly so each member's own difference is kept (the paired bootstrap)."""
    v = np.asarray(variant, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if v.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {v.shape} vs {b.shape}")
    if v.size == 0:
        nan = float("nan")
        return Comparison(nan, nan, nan, nan, nan, False)
    (sums,) = _resampled_sums([v - b], rng, n_boot)
    diffs = sums / v.size
    lo, hi = _bounds(diffs, level)
    diff = float(v.mean() - b.mean())
    base = float(b.mean())
    rel = diff / base if base != 0 else float("nan")
    return Comparison(diff, lo, hi, rel, _p_two_sided(diffs), bool(lo > 0 or hi < 0))


def ratio_comparison(
    num_v: np.ndarray,
    den_v: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Comparison:
    """Σnum_v/Σden_v − Σnum_b/Σden_b for two independent groups of members (an A/B test's
    arms), each resampled on its own."""
    nv, dv = np.asarray(num_v, np.float64), np.asarray(den_v, np.float64)
    nb, db = np.asarray(num_b, np.float64), np.asarray(den_b, np.float64)
    if nv.size == 0 or nb.size == 0 or dv.sum() <= 0 or db.sum() <= 0:
        nan = float("nan")
        return Comparison(nan, nan, nan, nan, nan, False)
    sv, tv = _resampled_sums([nv, dv], rng, n_boot)
    sb, tb = _resampled_sums([nb, db], rng, n_boot)
    diffs = sv / np.maximum(tv, 1e-300) - sb / np.maximum(tb, 1e-300)
    lo, hi = _bounds(diffs, level)
    rv, rb = float(nv.sum() / dv.sum()), float(nb.sum() / db.sum())
    diff = rv - rb
    rel = diff / rb if rb != 0 else float("nan")
    return Comparison(diff, lo, hi, rel, _p_two_sided(diffs), bool(lo > 0 or hi < 0))


__all__ = [
    "Comparison",
    "Interval",
    "average_precision_at_k",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "cascade_expected_plays",
    "cascade_slot_probs",
    "coverage",
    "discounts_2d",
    "duplicate_rate",
    "effective_catalog_size",
    "first_appearances",
    "genre_diversity",
    "hit_at_k",
    "list_metrics",
    "n2dcg",
    "n2dcg_by_row",
    "ndcg_at_k",
    "page_grid",
    "paired_comparison",
    "ratio_comparison",
    "recall_at_k",
    "visible",
    "visible_recall",
]
