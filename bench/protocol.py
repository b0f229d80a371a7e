"""The temporal evaluation protocol shared by the benchmarks.

One global time cut splits a dataset into a training period (everything strictly before the cut:
the only thing a ranker fits on, via `History.from_dataset(ds, cut)`) and a test period.

- Test users: users with at least one play in both periods.
- Ground truth of a test user: the titles they play in the test period that they had not played
  before the cut. Titles unknown to the training History (added after the cut) cannot be ranked
  by anyone, so they are dropped from the ground truth (the count is reported); a user left with
  no ground truth is not a test user.
- Every ranked list excludes the titles the user played before the cut.
- Hyper-parameters are chosen on validation cuts INSIDE the training period (the data before the
  test cut, split the same way), never on the test period.

Metrics (binary relevance, averaged over test users):
- Recall@k = |top-k ∩ truth| / min(k, |truth|)  (so a perfect list scores 1 for every user),
- NDCG@k  = DCG@k / IDCG@k with IDCG over min(k, |truth|) hits,
- Coverage@k = distinct titles in anyone's top-k / titles in the catalog.

The split itself lives in engine/evaluation/split.py (`rowrank bench` uses it too) and is
re-exported here.

Run as a module from the bench scripts (`from protocol import ...`; the script's directory is on
`sys.path`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine.data.dataset import Dataset
from engine.data.history import to_us
from engine.evaluation.split import (
    Split,
    machine,
    make_split,
    quantile_cut,
    rolling_splits,
    test_split,
    validation_splits,
)

# ----- metrics -------------------------------------------------------------------------------


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_at(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    if len(truth) == 0:
        return 0.0
    hits = np.isin(ranked[:k], truth).sum()
    return float(hits) / min(k, len(truth))


def ndcg_at(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    if len(truth) == 0:
        return 0.0
    d = _discounts(k)
    rel = np.isin(ranked[:k], truth)
    dcg = float(d[: len(rel)][rel].sum())
    idcg = float(d[: min(k, len(truth))].sum())
    return dcg / idcg


def batch_ndcg(
    scores: np.ndarray, exclude: np.ndarray, truth: np.ndarray, k: int = 10
) -> np.ndarray:
    """NDCG@k for a block of users at once: `scores`, `exclude` (played) and `truth` are
    (users x titles). The same lists as `top_unplayed` (ties to the lower title index), so the
    same values as `ndcg_at`."""
    m, n = scores.shape
    k = min(k, n)
    s = np.where(exclude, -np.inf, scores)
    # Exactly the per-user rule: everything above the k-th value, then tied titles by index.
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]
    above = s > kth
    tied = s == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    top = np.nonzero(chosen)[1].reshape(m, k)  # ascending title index within each row
    rows = np.arange(m)[:, None]
    top = np.take_along_axis(top, np.argsort(-s[rows, top], axis=1, kind="stable"), axis=1)
    hits = truth[rows, top] & np.isfinite(s[rows, top])
    disc = _discounts(k)
    ideal = np.cumsum(disc)[np.clip(truth.sum(axis=1), 1, k) - 1]
    return np.where(truth.any(axis=1), (hits @ disc) / ideal, 0.0)


@dataclass(frozen=True)
class Scores:
    """Per-user metric values for one ranker on one split."""

    recall10: np.ndarray
    ndcg10: np.ndarray
    recall50: np.ndarray
    coverage10: float

    def mean(self) -> dict[str, float]:
        return {
            "Recall@10": float(self.recall10.mean()),
            "NDCG@10": float(self.ndcg10.mean()),
            "Recall@50": float(self.recall50.mean()),
            "Coverage@10": self.coverage10,
        }


RankFn = Callable[[int], np.ndarray]
"""Given a History user index, the ranked title indices (best first, at least 50 if it can)."""


def evaluate(split: Split, rank: RankFn) -> Scores:
    """Score `rank` on every test user of `split`; played titles are removed here too, so a
    ranker that forgets to exclude them only loses positions, never gains hits."""
    h = split.history
    r10, n10, r50 = [], [], []
    seen: set[int] = set()
    for u, truth in zip(split.users.tolist(), split.truth, strict=True):
        ranked = np.asarray(rank(u), dtype=np.int64)
        played = h.play_title[h.user_plays(u)]
        ranked = ranked[~np.isin(ranked, played)]
        _, first = np.unique(ranked, return_index=True)
        ranked = ranked[np.sort(first)][:50]
        r10.append(recall_at(ranked, truth, 10))
        n10.append(ndcg_at(ranked, truth, 10))
        r50.append(recall_at(ranked, truth, 50))
        seen.update(ranked[:10].tolist())
    return Scores(
        recall10=np.array(r10),
        ndcg10=np.array(n10),
        recall50=np.array(r50),
        coverage10=len(seen) / max(h.n_titles, 1),
    )


def bootstrap_ci(
    values: np.ndarray, rng: np.random.Generator, n: int = 2000
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over users."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired_win_rate(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 2000) -> float:
    """Share of paired bootstrap resamples of the users in which mean(a) > mean(b)."""
    if len(a) == 0:
        return float("nan")
    idx = rng.integers(0, len(a), size=(n, len(a)))
    return float(((a[idx].mean(axis=1) - b[idx].mean(axis=1)) > 0).mean())


def top_unplayed(scores: np.ndarray, played: np.ndarray, k: int) -> np.ndarray:
    """The k best titles by `scores`, played ones excluded; ties go to the lower title index
    (also at the cut-off, so equal inputs give equal lists whatever the partition does)."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[played] = -np.inf
    k = min(k, int(np.isfinite(s).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = -np.partition(-s, k - 1)[k - 1]
    above = np.flatnonzero(s > kth)
    tied = np.flatnonzero(s == kth)[: k - len(above)]
    part = np.concatenate([above, tied])
    return part[np.lexsort((part, -s[part]))]


# ----- data ----------------------------------------------------------------------------------


def load_movielens(src: Path, work: Path) -> Dataset:
    """Import MovieLens through the engine's importer (`rowrank import movielens`)."""
    from engine.data.dataset import load_dataset
    from engine.data.movielens import import_movielens

    out = work / "ml"
    import_movielens(src, out)
    return load_dataset(out)


def now_utc() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = [
    "Scores",
    "Split",
    "batch_ndcg",
    "bootstrap_ci",
    "evaluate",
    "load_movielens",
    "machine",
    "make_split",
    "ndcg_at",
    "now_utc",
    "paired_win_rate",
    "quantile_cut",
    "recall_at",
    "rolling_splits",
    "test_split",
    "to_us",
    "top_unplayed",
    "validation_splits",
]
