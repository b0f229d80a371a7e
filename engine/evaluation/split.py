"""The temporal split every offline evaluation uses (`rowrank bench`, bench/*.py).

One global time cut splits a dataset into a training period (everything strictly before the
cut: the only thing a ranker or page model fits on, via `History.from_dataset(ds, cut)`) and a
test period.

- Test users: users with at least one play in both periods.
- Ground truth of a test user: the titles they play in the test period that they had not played
  before the cut. Titles unknown to the training History (added after the cut) cannot be ranked
  by anyone, so they are dropped from the ground truth (the count is reported); a user left with
  no ground truth is not a test user.
- Hyper-parameters are chosen on validation cuts INSIDE the training period
  (`validation_splits`), never on the test period.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import polars as pl

from engine.data.columns import Col
from engine.data.dataset import Dataset
from engine.data.history import History


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


def rolling_splits(
    ds: Dataset,
    after_fractions: Sequence[float],
    *,
    end: datetime | None = None,
    prefix: str = "test",
) -> list[Split]:
    """Several cuts (rolling origin), latest first: about each `after_fraction` of `ds`'s plays
    fall after its cut. The ground truth of each ends at the next later cut (the latest's at
    `end`, default: the end of the data), so no two windows overlap, and each split's History
    holds only what came before its own cut. One cut of a small dataset leaves few users."""
    cuts = sorted((quantile_cut(ds.plays, f) for f in after_fractions), reverse=True)
    out = []
    for i, cut in enumerate(cuts):
        out.append(make_split(ds, cut, end=end, name=f"{prefix}{i + 1}"))
        end = cut
    return out


def validation_splits(
    ds: Dataset, test_cut: datetime, after_fractions: Sequence[float] = (0.1, 0.2, 0.3)
) -> list[Split]:
    """Rolling validation splits carved from the training period only (data before
    `test_cut`), so no validation window overlaps the test period."""
    return rolling_splits(ds.as_of(test_cut), after_fractions, end=test_cut, prefix="val")


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


__all__ = [
    "Split",
    "machine",
    "make_split",
    "quantile_cut",
    "rolling_splits",
    "test_split",
    "validation_splits",
]
