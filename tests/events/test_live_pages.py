"""Live member state on real pages of the tiny model: the issue's scenario (40% -> Continue
Watching at 0.4; finished -> only Watch again may keep it; episode 3 finished -> episode 4
offered), out-of-order events placed by time, a member new to the model, the snapshot untouched
before the cut-off, and PVR's ALS member vector folded in from live plays."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from engine.data.history import History
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
from engine.pipeline import Engine
from engine.request.filters import request_masks
from engine.request.page import Page


def _us(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _rows_with(page: Page, title_id: str) -> list[str]:
    return [r.kind for r in page.rows if any(i.title_id == title_id for i in r.items)]


def _progress_in_cw(page: Page, title_id: str) -> float | None:
    for r in page.rows:
        if r.kind == "continue_watching":
            for i in r.items:
                if i.title_id == title_id:
                    return i.progress
    return None


def _movie_on_page(page: Page, h: History) -> str:
    """A movie the page offers outside Continue Watching and Watch again (so it is available
    to the member and not finished)."""
    for r in page.rows:
        if r.kind in ("continue_watching", "watch_again"):
            continue
        for i in r.items:
            if h.series[h.title_index(i.title_id)] < 0:
                return i.title_id
    raise AssertionError("no movie on the page")


def _open_series(eng: Engine, member: str, at: str) -> np.ndarray:
    """Episodes 1..4 (title indices) of a series the member never played, all available to
    them (country, maturity)."""
    h = eng.history
    ctx = eng.context(member, "tv", at)
    masks = request_masks(ctx, h)
    played = set(h.play_title[h.user_plays(h.user_index(member))].tolist())
    order = h.episodes_in_order
    for s in np.unique(h.series[order]):
        eps = order[h.series[order] == s]
        if len(eps) < 4 or played.intersection(eps.tolist()):
            continue
        if not (masks.unavailable[eps] | masks.maturity[eps]).any():
            return eps[:4]
    raise AssertionError("no series open to the member")


def test_scenario_progress_finish_next_episode(
    eng: Engine, live: LiveState, member: str, at: str
) -> None:
    h = eng.history
    when = datetime.fromisoformat(at)
    before = eng.page(member, "tv", at)
    movie = _movie_on_page(before, h)
    assert _progress_in_cw(before, movie) is None

    live.append([PlayEvent("p1", member, movie, _us(when - timedelta(hours=2)), "tv", 2400, 0.4)])
    page = eng.page(member, "tv", at)
    assert _progress_in_cw(page, movie) == pytest.approx(0.4)

    live.append([PlayEvent("p2", member, movie, _us(when - timedelta(hours=1)), "tv", 6000, 1.0)])
    page = eng.page(member, "tv", at)
    assert set(_rows_with(page, movie)) <= {"watch_again"}

    eps = _open_series(eng, member, at)
    ids = [str(h.title_ids[e]) for e in eps]
    start = when - timedelta(minutes=50)
    live.append(
        [
            PlayEvent(
                f"s{k}", member, ids[k], _us(start + timedelta(minutes=10 * k)), "tv", 1500, 1.0
            )
            for k in range(3)
        ]
    )
    page = eng.page(member, "tv", at)
    assert ids[3] in [i.title_id for r in page.rows for i in r.items]
    assert not any(
        i.title_id in ids[:3] for r in page.rows if r.kind != "watch_again" for i in r.items
    )


def test_out_of_order_events_are_placed_by_time(
    eng: Engine, live: LiveState, member: str, at: str
) -> None:
    """The later play (finished) arrives first: the earlier one (40%) must not reopen it."""
    when = datetime.fromisoformat(at)
    movie = _movie_on_page(eng.page(member, "tv", at), eng.history)
    live.append(
        [PlayEvent("late", member, movie, _us(when - timedelta(hours=1)), "web", 6000, 1.0)]
    )
    live.append(
        [PlayEvent("early", member, movie, _us(when - timedelta(hours=3)), "tv", 2000, 0.4)]
    )
    page = eng.page(member, "tv", at)
    assert set(_rows_with(page, movie)) <= {"watch_again"}
    mh = live.history_for(eng.history, member)
    s = mh.user_plays(mh.live_member)
    assert np.all(np.diff(mh.play_ts[s]) >= 0)
    assert mh.play_progress[s][-1] == pytest.approx(1.0)


def test_new_member_gets_continue_watching(eng: Engine, live: LiveState, at: str) -> None:
    """A member the model has never seen starts six movies: their next page has a Continue
    Watching row of them (a row needs `min_row_length` titles, five on a TV)."""
    when = datetime.fromisoformat(at)
    h = eng.history
    country = next(c for listed in h.title_countries for c in listed)
    cold = eng.page("brand-new-member", "tv", at, country)
    assert not any(r.kind == "continue_watching" for r in cold.rows)
    movies = list(
        dict.fromkeys(
            i.title_id
            for r in cold.rows
            for i in r.items
            if h.series[h.title_index(i.title_id)] < 0
        )
    )[:6]
    live.append(
        [
            PlayEvent(
                f"n{k}", "brand-new-member", m, _us(when - timedelta(hours=k + 1)), "tv", 900, 0.3
            )
            for k, m in enumerate(movies)
        ]
    )
    page = eng.page("brand-new-member", "tv", at, country)
    for m in movies:
        assert _progress_in_cw(page, m) == pytest.approx(0.3, abs=1e-6)


def test_no_live_plays_and_requests_before_the_cutoff_read_the_snapshot(
    eng: Engine, live: LiveState, member: str, at: str
) -> None:
    when = datetime.fromisoformat(at)
    movie = _movie_on_page(eng.page(member, "tv", at), eng.history)
    other = (
        str(eng.history.user_ids[0])
        if str(eng.history.user_ids[0]) != member
        else str(eng.history.user_ids[1])
    )
    live.append([PlayEvent("x1", member, movie, _us(when - timedelta(hours=1)), "tv", 900, 0.5)])
    ctx = eng.context(other, "tv", at)
    assert eng.member_history(ctx) is eng.history
    past = datetime.fromtimestamp(eng.history.cutoff_us / 1e6).astimezone() - timedelta(days=1)
    assert eng.member_history(eng.context(member, "tv", past)) is eng.history
    assert eng.member_history(eng.context(member, "tv", at)) is not eng.history


def test_a_block_with_live_members_gives_each_request_its_single_page(
    eng: Engine, live: LiveState, at: str
) -> None:
    """Engine.pages reads each request's plays where page_for does (member_history): members
    with live plays get their own History inside a block of snapshot members, and every page
    is the single path's, byte for byte."""
    h = eng.history
    when = datetime.fromisoformat(at)
    users = [str(u) for u in h.user_ids[:12]]
    live_users = users[3:5]
    for k, member in enumerate(live_users):
        movie = _movie_on_page(eng.page(member, "tv", at), h)
        live.append(
            [PlayEvent(f"b{k}", member, movie, _us(when - timedelta(hours=2)), "tv", 2400, 0.4)]
        )
    ctxs = [eng.context(u, d, at) for u in users for d in ("tv", "mobile")]
    assert sum(eng.member_history(c) is not h for c in ctxs) == 2 * len(live_users)
    single = [eng.page_for(c).to_json() for c in ctxs]
    assert [p.to_json() for p in eng.pages(ctxs)] == single
    # The live plays count: those members' pages differ from the snapshot's, no one else's.
    eng.live = None
    snapshot = [eng.page_for(c).to_json() for c in ctxs]
    eng.live = live
    changed = {c.user_id for c, a, b in zip(ctxs, single, snapshot, strict=True) if a != b}
    assert changed == set(live_users)
