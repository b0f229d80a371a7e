"""Fixtures of the live-state tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.events.state import LiveState
from engine.pipeline import Engine


@pytest.fixture
def live(eng: Engine, tmp_path: Path) -> Iterator[LiveState]:
    """A live state on a fresh log, attached to the tiny model's engine for one test."""
    state = LiveState(tmp_path / "events")
    eng.live = state
    try:
        yield state
    finally:
        eng.live = None
        state.close()
