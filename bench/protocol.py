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

Run as a module from the bench scripts (`from protocol import ...`; the script's directory is on
`sys.path`).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from engine.columns import Col
from engine.dataset import Dataset
from engine.history import History, to_us


@dataclass(frozen=True)
class Split:
    """A training History and, for each test user (History index), the titles to find."""

    name: str
    cutoff: datetime
    history: History
    users: np.ndarray  # int32 History user indices
    truth: tuple[np.ndarray, ...]  # int32 History title indices per test user
    dropped_unknown: int  # ground-truth plays of titles the History does not know

    def subsample(self, n: int, rng: np.random.Generator) -> Split:
        """The same split with at most `n` test users (seeded choice, order kept)."""
        if len(self.users) <= n:
            return self
        pick = np.sort(rng.choice(len(self.users), n, replace=False))
        return replace(
            self, users=self.users[pick], truth=tuple(self.truth[i] for i in pick.tolist())
        )

    def describe(self) -> str:
        n_truth = sum(len(t) for t in self.truth)
        return (
            f"{self.name}: cut {self.cutoff:%Y-%m-%d %H:%M} UTC, "
            f"{len(self.history.play_user):,} training plays, "
            f"{len(self.users)} users with ground truth, "
            f"{n_truth:,} ground-truth titles ({self.dropped_unknown} unknown at the cut dropped)"
        )


def quantile_cut(plays: pl.DataFrame, after_fraction: float) -> datetime:
    """The time leaving about `after_fraction` of `plays` at or after it."""
    ts = plays[Col.TS].dt.epoch("us").to_numpy()
    cut_us = int(np.quantile(ts, 1.0 - after_fraction))
    return datetime.fromtimestamp(cut_us / 1e6, tz=UTC)


def make_split(
    ds: Dataset, cutoff: datetime, *, end: datetime | None = None, name: str = "test"
) -> Split:
    """History before `cutoff`; ground truth from plays in [cutoff, end) (default: to the end)."""
    history = History.from_dataset(ds, cutoff)
    lit = pl.lit(cutoff).dt.cast_time_unit("us")
    after = ds.plays.filter(pl.col(Col.TS) >= lit)
    if end is not None:
        after = after.filter(pl.col(Col.TS) < pl.lit(end).dt.cast_time_unit("us"))
    pairs = after.select(Col.USER_ID, Col.TITLE_ID).unique()
    users_np = np.array([history.user_index(u) for u in pairs[Col.USER_ID].to_list()])
    titles_np = np.array([history.title_index(t) for t in pairs[Col.TITLE_ID].to_list()])
    known_user = users_np >= 0
    known_title = titles_np >= 0
    dropped = int((known_user & ~known_title).sum())
    keep = known_user & known_title
    users_np, titles_np = users_np[keep], titles_np[keep]
    order = np.lexsort((titles_np, users_np))
    users_np, titles_np = users_np[order], titles_np[order]
    out_users: list[int] = []
    truth: list[np.ndarray] = []
    bounds = np.flatnonzero(np.diff(users_np)) + 1
    for u_titles, u in zip(
        np.split(titles_np, bounds),
        users_np[np.r_[0, bounds]] if len(users_np) else [],
        strict=True,
    ):
        s = history.user_plays(int(u))
        if s.stop == s.start:
            continue  # no play before the cut: not a test user
        new = np.setdiff1d(u_titles, history.play_title[s])
        if len(new):
            out_users.append(int(u))
            truth.append(new.astype(np.int32))
    return Split(
        name=name,
        cutoff=cutoff,
        history=history,
        users=np.array(out_users, dtype=np.int32),
        truth=tuple(truth),
        dropped_unknown=dropped,
    )


def test_split(ds: Dataset, after_fraction: float = 0.1) -> Split:
    """The global test cut: about `after_fraction` of all plays fall after it."""
    return make_split(ds, quantile_cut(ds.plays, after_fraction), name="test")


def validation_splits(
    ds: Dataset, test_cut: datetime, after_fractions: Sequence[float] = (0.1, 0.2, 0.3)
) -> list[Split]:
    """Validation splits carved from the training period only (data before `test_cut`).

    Several cuts (rolling origin) because one cut of a small dataset leaves few users; the ground
    truth of each ends at the next later cut, so no validation window overlaps the test period."""
    train = ds.as_of(test_cut)
    cuts = sorted((quantile_cut(train.plays, f) for f in after_fractions), reverse=True)
    out = []
    end = test_cut
    for i, cut in enumerate(cuts):
        out.append(make_split(train, cut, end=end, name=f"val{i + 1}"))
        end = cut
    return out


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
    from engine.dataset import load_dataset
    from engine.movielens import import_movielens

    out = work / "ml"
    import_movielens(src, out)
    return load_dataset(out)


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        rev = "?"
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={threads}, "
        f"git {rev or '?'} (+ uncommitted changes)"
    )


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
    "test_split",
    "to_us",
    "top_unplayed",
    "validation_splits",
]
