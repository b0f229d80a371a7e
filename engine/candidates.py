"""What a ranker is and what it proposes: the plug-in point of the engine.

A ranker is a named instance of a class satisfying `Ranker`. It fits on a `History` (everything
before a cut-off) and, for one request, proposes zero or more `CandidateRow`s. Rankers never call
each other; the pipeline decides what happens to their rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from engine.data.history import History
from engine.request.context import RequestContext


class RankerConfig(BaseModel):
    """Base of every ranker's config: a typo in a key fails at start-up, naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        """Keys `rowrank train --tune-budget` may choose on validation data, each with the values
        to try (engine/training/tune.py), in the order they are searched. None by default: a key
        belongs here when the best value depends on the data (a ridge strength, a blend weight),
        not when it names what the row is (a trending row's half-life is its label's promise)."""
        return {}

    def page_space(self) -> dict[str, tuple[Any, ...]]:
        """Keys that change only how the fitted ranker lays out its rows, each with the other
        values to try: `rowrank train` tries them on whole pages of its held-out window
        (engine/training/page_keys.py), with no refit. None by default."""
        return {}


@dataclass(frozen=True)
class CandidateRow:
    """One proposed row: ordered title indices (into History) with non-increasing scores."""

    row_id: str  # stable: "<ranker instance>" or "<ranker instance>:<key>"
    ranker: str  # the ranker instance name, e.g. "trending_24h"
    kind: str  # the ranker type, e.g. "trending"
    title: str  # display label, e.g. "Because you watched Heat"
    evidence: dict[str, Any] | None
    titles: np.ndarray  # int32 title indices, unique
    scores: np.ndarray  # float32, finite, non-increasing
    progress: np.ndarray | None = None  # float32 per title, for rows where it applies

    def __post_init__(self) -> None:
        if len(self.titles) != len(self.scores):
            raise ValueError(
                f"row {self.row_id}: {len(self.titles)} titles, {len(self.scores)} scores"
            )

    def take(self, keep: np.ndarray) -> CandidateRow:
        """The same row restricted to `keep` (bool mask or index array), order preserved."""
        return CandidateRow(
            self.row_id,
            self.ranker,
            self.kind,
            self.title,
            self.evidence,
            self.titles[keep],
            self.scores[keep],
            None if self.progress is None else self.progress[keep],
        )


@dataclass(frozen=True)
class LivePlays:
    """Members' live plays after a snapshot's cut-off that arrived since the last refresh of
    title-level counts kept nearline (engine.pipeline.Engine.refresh_nearline): snapshot title
    indices, the member's country in the snapshot ("" for a member new to it) and the time of
    each play. `as_of_us` is the newest play's time."""

    title: np.ndarray  # int32
    country: np.ndarray  # str
    ts_us: np.ndarray  # int64, every one <= as_of_us
    as_of_us: int


@runtime_checkable
class Ranker(Protocol):
    """A pluggable source of candidate rows. Construct with `(name, config)`; fit before use.

    Optional: a class attribute `uses_device = False` says the rows never depend on the
    request's device, so the engine may reuse them for the same member, time and country on
    another device (engine.pipeline.LastProposals); without it they are computed every time.
    A method `nearline(plays: LivePlays | None) -> None` says the ranker keeps title-level
    counts that live plays should move between trainings (Trending); the engine calls it every
    `[serving] nearline_seconds` with the plays new since its last call, and with None (back to
    the snapshot's counts alone) when the live layer is replaced."""

    type_name: ClassVar[str]  # the `type` key in the engine config, e.g. "trending"
    Config: ClassVar[type[RankerConfig]]
    # Rows of finished titles are kept for rankers whose point is to show them (Watch again).
    keeps_finished: ClassVar[bool]
    name: str

    def fit(self, history: History) -> Self:
        """Learn from `history`; it holds nothing after its cut-off."""
        ...

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        """Rows for one request. `history` is the one this ranker was fitted or loaded with."""
        ...

    def save(self, directory: Path) -> None:
        """Write learned state (JSON, numpy without pickle, Parquet) into `directory`."""
        ...

    def load(self, directory: Path, history: History) -> Self:
        """Read the state `save` wrote; raise ModelLoadError naming what is wrong."""
        ...
