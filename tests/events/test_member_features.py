"""The live member's features: with no live plays, the one-member store reproduces the
snapshot's title-model matrix for that member exactly; with live plays, the member x title
features of the played title move (progress, plays)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np

from engine.events.member_features import member_store
from engine.events.member_history import member_history
from engine.events.schema import PlayEvent
from engine.pipeline import Engine, candidate_rows, pairs_for, request_arrays
from engine.request.features import TITLE_FEATURES


def _matrices(
    eng: Engine, member: str, at: str, events: list[PlayEvent]
) -> tuple[np.ndarray, np.ndarray]:
    ctx = eng.context(member, "tv", at)
    rows = candidate_rows(eng.rankers, ctx, eng.history, eng.page_config).rows
    pairs = pairs_for(eng.store, rows, 0, None)
    req = request_arrays(eng.store, eng.history, [ctx])
    snapshot = eng.store.title_matrix(req, pairs)
    mh = member_history(eng.history, member, events)
    local = member_store(eng.store, mh).title_matrix(
        replace(req, user=np.zeros(1, np.int32)), pairs
    )
    return snapshot, local


def test_without_live_plays_the_member_store_is_the_snapshot(
    eng: Engine, member: str, at: str
) -> None:
    snapshot, local = _matrices(eng, member, at, [])
    np.testing.assert_array_equal(snapshot, local)


def test_a_live_play_moves_the_member_title_features(eng: Engine, member: str, at: str) -> None:
    ctx = eng.context(member, "tv", at)
    rows = candidate_rows(eng.rankers, ctx, eng.history, eng.page_config).rows
    title = int(rows[0].titles[0])
    ts = int((datetime.fromisoformat(at) - timedelta(hours=1)).timestamp() * 1e6)
    ev = PlayEvent("f1", member, str(eng.history.title_ids[title]), ts, "tv", 600.0, 0.35)
    snapshot, local = _matrices(eng, member, at, [ev])
    pairs = pairs_for(eng.store, rows, 0, None)
    at_title = np.flatnonzero(pairs.title == title)
    names = [f.name for f in TITLE_FEATURES]
    progress = local[at_title, names.index("ut_progress")]
    assert np.allclose(progress, 0.35)
    plays_before = np.nan_to_num(snapshot[at_title, names.index("ut_plays")])
    assert np.all(local[at_title, names.index("ut_plays")] == plays_before + 1)
    assert local[0, names.index("user_log_plays")] > snapshot[0, names.index("user_log_plays")]
