"""New Releases: titles added to the catalog within `window_days` before the request, newest
first, blended with how well they have started.

    score = (1 - popularity_weight) * (1 - age / window) + popularity_weight * early

`early` is a title's distinct players per day since it was added (counted before the cut-off, or
before the request for a request before the cut-off: what was known then), log-scaled and
divided by the best such rate in the window, so it lies in [0, 1]. A title with no
plays yet (cold start) still enters on recency alone. A series shows once, as its
lowest-numbered new episode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import US_PER_DAY, History
from engine.request.context import RequestContext
from rankers._common import (
    PlayTimes,
    check_fitted,
    first_per_series,
    history_fingerprint,
    load_state,
    make_row,
    save_state,
    top_k,
)

STATE_VERSION = 1


class NewReleasesConfig(RankerConfig):
    """Keys of a `type = "new_releases"` instance."""

    window_days: float = Field(default=30.0, gt=0, description="added at most this long before now")
    popularity_weight: float = Field(default=0.4, ge=0, le=1, description="early plays vs recency")
    max_titles: int = Field(default=40, ge=1)
    label: str = "New Releases"

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        return {"popularity_weight": (0.0, 0.8)}


class NewReleasesRanker:
    """One row of recently added titles."""

    type_name = "new_releases"
    Config = NewReleasesConfig
    keeps_finished = False
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device = False

    def __init__(self, name: str, config: NewReleasesConfig) -> None:
        self.name = name
        self.config = config

    def fit(self, history: History) -> Self:
        # Distinct players per title, then per day on the catalog (at least one day, so a
        # title added an hour ago with two players does not look like a blockbuster).
        n_t = max(history.n_titles, 1)
        pairs = np.unique(history.play_user.astype(np.int64) * n_t + history.play_title)
        players = np.bincount(pairs % n_t, minlength=history.n_titles).astype(np.float64)
        days = np.maximum((history.cutoff_us - history.added_us) / US_PER_DAY, 1.0)
        self.early_rate_ = np.asarray(players / days, dtype=np.float64)
        self.history_ = history_fingerprint(history)
        self._prepare(history)
        return self

    def _prepare(self, history: History) -> None:
        # Titles by time added, so a request finds its window with two binary searches.
        self.by_added_ = np.argsort(history.added_us, kind="stable").astype(np.int32)
        self.added_sorted_ = history.added_us[self.by_added_]
        self.players_ = PlayTimes.of_first_plays(history)

    def _early_rate(self, cand: np.ndarray, at_us: int, history: History) -> np.ndarray:
        if at_us >= history.cutoff_us:
            return self.early_rate_[cand]
        players = self.players_.before(at_us, cand).astype(np.float64)
        return players / np.maximum((at_us - history.added_us[cand]) / US_PER_DAY, 1.0)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "early_rate_")
        c = self.config
        at = request.at_us
        window = c.window_days * US_PER_DAY
        # 0 <= age < window, i.e. at - window < added <= at.
        lo = int(np.searchsorted(self.added_sorted_, at - window, side="right"))
        hi = int(np.searchsorted(self.added_sorted_, at, side="right"))
        cand = np.sort(self.by_added_[lo:hi])
        if len(cand) == 0:
            return []
        recency = 1.0 - (at - history.added_us[cand]) / window
        early = np.log1p(self._early_rate(cand, at, history))
        best = float(early.max())
        early = early / best if best > 0 else early
        score = (1 - c.popularity_weight) * recency + c.popularity_weight * early
        if (history.series[cand] >= 0).any():
            # One tile per series: its lowest-numbered new episode (movies have episode -1).
            by_episode = np.argsort(history.episode[cand], kind="stable")
            keep = np.zeros(len(cand), dtype=bool)
            keep[by_episode[first_per_series(history, cand[by_episode])]] = True
            score = np.where(keep, score, -np.inf)
        order = top_k(score, c.max_titles)
        return [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=c.label,
                titles=cand[order],
                scores=score[order],
                evidence={"window_days": c.window_days},
            )
        ]

    def save(self, directory: Path) -> None:
        check_fitted(self, "early_rate_")
        save_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={"early_rate": self.early_rate_},
        )

    def load(self, directory: Path, history: History) -> Self:
        arrays, _ = load_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=("early_rate",),
        )
        self.early_rate_ = arrays["early_rate"].astype(np.float64)
        self.history_ = history_fingerprint(history)
        self._prepare(history)
        return self
