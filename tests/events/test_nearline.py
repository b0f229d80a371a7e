"""Title counts kept nearline: live plays move Trending, and Top Picks' popularity and trending
generators, between trainings (every `[serving] nearline_seconds`), never for a request before
the plays, and the snapshot's counts come back when the live layer goes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import engine.pipeline
from engine.candidates import LivePlays
from engine.data.history import US_PER_HOUR
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
from engine.pipeline import Engine
from rankers.top_picks import TitleSignals, TopPicksRanker
from rankers.trending import TrendingRanker


def _trending(eng: Engine) -> TrendingRanker:
    for r in eng.rankers.values():
        if isinstance(r, TrendingRanker):
            return r
    raise AssertionError("no Trending ranker in the tiny model")


def _row(eng: Engine, member: str, at_us: int) -> list[int]:
    ctx = eng.context(member, "tv", f"{np.datetime64(at_us, 'us')}Z")
    rows = _trending(eng).propose(ctx, eng.member_history(ctx))
    return rows[0].titles.tolist() if rows else []


def _a_spike(eng: Engine, member: str, at_us: int) -> tuple[int, list[PlayEvent]]:
    """A title off the member's Trending row, played by 60 other members of their country in
    the hour before `at_us` (a spike no snapshot count can match)."""
    h = eng.history
    shown = set(_row(eng, member, at_us))
    country = h.user_country[h.user_index(member)]
    title = next(
        t for t in np.argsort(np.bincount(h.play_title, minlength=h.n_titles)) if t not in shown
    )
    start = at_us - US_PER_HOUR
    others = [u for u in np.flatnonzero(h.user_country == country) if h.user_ids[u] != member]
    events = [
        PlayEvent(f"n{k}", str(h.user_ids[u]), str(h.title_ids[title]), start + k, "tv", 600, 0.2)
        for k, u in enumerate(others[:60])
    ]
    assert len(events) == 60
    return int(title), events


def test_a_spike_of_live_plays_tops_trending_after_a_refresh(
    eng: Engine, live: LiveState, member: str
) -> None:
    at_us = eng.history.cutoff_us + 3 * US_PER_HOUR
    before = _row(eng, member, at_us)
    title, events = _a_spike(eng, member, at_us)
    live.append(events)
    assert _row(eng, member, at_us) == before  # not refreshed yet: the snapshot's counts
    assert eng.refresh_nearline(until_us=at_us) == len(events)
    after = _row(eng, member, at_us)
    assert after[0] == title and title not in before
    # a request before the spike's newest play reads the snapshot: nothing after its time
    assert title not in _row(eng, member, at_us - 2 * US_PER_HOUR)
    # the live layer gone, the snapshot's counts are back
    eng.live = None
    assert _row(eng, member, at_us) == before


def test_counts_taken_in_two_refreshes_equal_one(eng: Engine, live: LiveState, member: str) -> None:
    """The counts are kept incrementally (the old ones decayed to the newest play, the new plays
    added): two refreshes of half the plays each give the scores one refresh of all gives."""
    at_us = eng.history.cutoff_us + 3 * US_PER_HOUR
    ctx = eng.context(member, "tv", f"{np.datetime64(at_us, 'us')}Z")
    _, events = _a_spike(eng, member, at_us)
    live.append(events[:30])
    assert eng.refresh_nearline(until_us=at_us) == 30
    live.append(events[30:])
    assert eng.refresh_nearline(until_us=at_us) == 30
    twice = _trending(eng).propose(ctx, eng.history)[0]

    eng.live = live  # the same layer again: the counts start over, from the first play
    assert eng.refresh_nearline(until_us=at_us) == 60
    once = _trending(eng).propose(ctx, eng.history)[0]
    assert twice.titles.tolist() == once.titles.tolist()
    np.testing.assert_allclose(twice.scores, once.scores, rtol=1e-6)


def test_no_live_plays_give_the_snapshot_counts(eng: Engine, member: str) -> None:
    h = eng.history
    ranker = _trending(eng)
    ctx = eng.context(member, "tv", f"{np.datetime64(h.cutoff_us + 3 * US_PER_HOUR, 'us')}Z")
    snapshot_row = ranker.propose(ctx, h)[0]
    empty = np.empty(0)
    ranker.nearline(LivePlays(empty.astype(np.int32), empty.astype(str), empty, h.cutoff_us))
    try:
        live_row = ranker.propose(ctx, h)[0]
    finally:
        ranker.nearline(None)
    assert live_row.titles.tolist() == snapshot_row.titles.tolist()
    np.testing.assert_array_equal(live_row.scores, snapshot_row.scores)


def test_pages_refresh_at_most_every_nearline_seconds(
    eng: Engine, live: LiveState, member: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_us = eng.history.cutoff_us + 3 * US_PER_HOUR
    clock = SimpleNamespace(now=100.0)
    fake_time = SimpleNamespace(monotonic=lambda: clock.now, time_ns=lambda: at_us * 1000)
    monkeypatch.setattr(engine.pipeline, "time", fake_time)
    every = eng.config.serving.nearline_seconds
    assert every > 0
    title, events = _a_spike(eng, member, at_us)
    at = f"{np.datetime64(at_us, 'us')}Z"

    eng.page(member, "tv", at)  # the first page refreshes (nothing live yet: no change)
    live.append(events)
    clock.now += every / 2
    eng.page(member, "tv", at)
    assert title not in _row(eng, member, at_us)  # within the interval: not yet
    clock.now += every
    eng.page(member, "tv", at)
    assert _row(eng, member, at_us)[0] == title


def test_another_worker_counts_the_plays_one_worker_took(
    eng: Engine, live: LiveState, member: str, tiny_model: Path, tmp_path: Path
) -> None:
    """Two workers (two engines, each with its own live state over one log): the plays one
    takes move the other's Trending at its next refresh."""
    import engine as rowrank

    other = rowrank.load(tiny_model)
    state = LiveState(tmp_path / "events")
    other.live = state
    try:
        at_us = eng.history.cutoff_us + 3 * US_PER_HOUR
        title, events = _a_spike(eng, member, at_us)
        live.append(events)
        assert title not in _row(other, member, at_us)
        assert other.refresh_nearline(until_us=at_us) == len(events)
        assert _row(other, member, at_us)[0] == title
    finally:
        other.live = None
        state.close()


def test_live_plays_join_top_picks_popularity_by_whole_hours(
    eng: Engine, live: LiveState, member: str
) -> None:
    """Top Picks' popularity and trending generators count live plays by whole hours since the
    cut-off: a request counts the hours that ended by its time, never a play after it."""
    h = eng.history
    top_picks = next(r for r in eng.rankers.values() if isinstance(r, TopPicksRanker))
    at_us = h.cutoff_us + 3 * US_PER_HOUR
    title, events = _a_spike(eng, member, at_us)  # in the third hour after the cut-off

    def signals(t_us: int) -> TitleSignals:
        cfg = top_picks.config
        return TitleSignals.at(top_picks.generators_, h, t_us, cfg, top_picks.live_)

    snapshot = signals(at_us)
    live.append(events)
    assert eng.refresh_nearline(until_us=at_us) == len(events)
    known = int(top_picks.generators_.times.before(at_us)[title])
    after = signals(at_us)
    assert after.popular[title] == pytest.approx(np.log1p(known + len(events)))
    assert after.trending_short[title] > snapshot.trending_short[title]
    # half way through the spike's hour: that hour has not ended, so it is not counted yet
    mid = signals(at_us - US_PER_HOUR // 2)
    assert mid.popular[title] == snapshot.popular[title]
    eng.live = None
    assert top_picks.live_ is None


def test_on_a_stale_model_the_live_plays_are_the_whole_trend(
    eng: Engine, live: LiveState, member: str
) -> None:
    """30 days past the cut-off, the 24-hour trend of the snapshot has decayed to nothing
    (2^-30): with live plays of one title, that title is the whole row."""
    h = eng.history
    at_us = h.cutoff_us + 30 * 24 * US_PER_HOUR
    title, events = _a_spike(eng, member, at_us)
    assert len(_row(eng, member, at_us)) > 1  # without live plays: the cut-off's trend, decayed
    live.append(events)
    eng.refresh_nearline(until_us=at_us)
    short = next(r for r in eng.rankers.values() if r.name == "trending_24h")
    ctx = eng.context(member, "tv", f"{np.datetime64(at_us, 'us')}Z")
    assert [int(t) for t in short.propose(ctx, eng.history)[0].titles] == [title]
