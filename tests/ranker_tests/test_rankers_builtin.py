"""Behaviour of Trending, Continue Watching, New Releases and Watch Again on hand-made worlds
(the shared contract is in test_ranker_contract.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_ranker_contract import CUTOFF, T0, make_dataset

from engine.data.columns import STR_LIST, TIMESTAMP, Col
from engine.data.dataset import Dataset
from engine.data.history import History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from engine.request.filters import apply_filters
from rankers.continue_watching import ContinueWatchingConfig, ContinueWatchingRanker
from rankers.new_releases import NewReleasesConfig, NewReleasesRanker
from rankers.trending import TrendingConfig, TrendingRanker
from rankers.watch_again import WatchAgainConfig, WatchAgainRanker

AT = CUTOFF + timedelta(hours=1)
Play = tuple[str, str, datetime, float, str]  # user, title, ts, progress, device


def world(
    titles: list[tuple[str, list[str], int, datetime, str | None, int | None]],
    users: list[tuple[str, str | None, int]],
    plays: list[Play],
) -> History:
    """A History as of CUTOFF from explicit rows. titles: (id, genres, maturity, added,
    series_id, episode); users: (id, country, maturity_max)."""
    ds = Dataset(
        pl.DataFrame(
            {
                Col.TITLE_ID: [t[0] for t in titles],
                Col.NAME: [t[0].upper() for t in titles],
                Col.KIND: ["series" if t[4] else "movie" for t in titles],
                Col.GENRES: pl.Series([t[1] for t in titles], dtype=STR_LIST),
                Col.RELEASE_YEAR: pl.Series([2020] * len(titles), dtype=pl.Int32),
                Col.DURATION_MIN: pl.Series([90.0] * len(titles), dtype=pl.Float32),
                Col.MATURITY: pl.Series([t[2] for t in titles], dtype=pl.Int8),
                Col.COUNTRIES: pl.Series([[] for _ in titles], dtype=STR_LIST),
                Col.ADDED_AT: pl.Series([t[3] for t in titles], dtype=TIMESTAMP),
                Col.SERIES_ID: [t[4] for t in titles],
                Col.EPISODE: pl.Series([t[5] for t in titles], dtype=pl.Int32),
            }
        ),
        pl.DataFrame(
            {
                Col.USER_ID: [u[0] for u in users],
                Col.COUNTRY: [u[1] for u in users],
                Col.MATURITY_MAX: pl.Series([u[2] for u in users], dtype=pl.Int8),
                Col.CREATED_AT: pl.Series([T0 - timedelta(days=400)] * len(users), dtype=TIMESTAMP),
            }
        ),
        pl.DataFrame(
            {
                Col.USER_ID: [p[0] for p in plays],
                Col.TITLE_ID: [p[1] for p in plays],
                Col.TS: pl.Series([p[2] for p in plays], dtype=TIMESTAMP),
                Col.DEVICE: [p[4] for p in plays],
                Col.SECONDS_WATCHED: pl.Series([600.0] * len(plays), dtype=pl.Float32),
                Col.PROGRESS: pl.Series([p[3] for p in plays], dtype=pl.Float32),
            }
        ),
        None,
        clock=CUTOFF + timedelta(days=1),
    )
    return History.from_dataset(ds, CUTOFF)


OLD = T0 - timedelta(days=300)


def ago(hours: float) -> datetime:
    return CUTOFF - timedelta(hours=hours)


def titles_of(history: History, rows: list) -> list[str]:  # type: ignore[type-arg]
    assert len(rows) == 1
    return [str(history.title_ids[t]) for t in rows[0].titles]


# ----- Trending ----------------------------------------------------------------------------------


def _trending_world() -> History:
    titles = [(f"m{i}", ["Drama"], 0, OLD, None, None) for i in range(6)]
    titles.append(("kid", ["Kids"], 0, OLD, None, None))
    users = [(f"u{i}", "US" if i < 20 else "FR", 18) for i in range(40)]
    users.append(("kidfan", "US", 18))
    plays: list[Play] = []
    # m0: steady for weeks; m1: a spike in the last 3 hours; m2: played only in France.
    for i in range(60):
        plays.append((f"u{i % 20}", "m0", ago(12 * (i + 2)), 1.0, "tv"))
    for i in range(12):
        plays.append((f"u{i}", "m1", ago(0.2 * (i + 1)), 0.5, "tv"))
    for i in range(20, 40):
        plays.append((f"u{i}", "m2", ago(30 + i), 1.0, "tv"))
    for i in range(6):
        plays.append((f"u{i}", "m3", ago(40), 1.0, "tv"))
        plays.append((f"u{i + 6}", "kid", ago(40), 1.0, "tv"))
    plays += [("kidfan", "kid", ago(24 * 20 + k), 1.0, "tv") for k in range(5)]
    return world(titles, users, plays)


def test_trending_reacts_within_hours_to_a_spike() -> None:
    h = _trending_world()
    fast = TrendingRanker("trending_24h", TrendingConfig(half_life_hours=24)).fit(h)
    slow = TrendingRanker("trending_7d", TrendingConfig(half_life_hours=168)).fit(h)
    q = RequestContext("u1", "tv", AT)
    assert titles_of(h, fast.propose(q, h))[0] == "m1"  # 12 plays in the last 3 hours
    assert titles_of(h, slow.propose(q, h))[0] == "m0"  # 60 plays over the last month


def test_trending_follows_the_members_country() -> None:
    h = _trending_world()
    r = TrendingRanker("t", TrendingConfig(half_life_hours=168, personalization=0)).fit(h)
    us = titles_of(h, r.propose(RequestContext("u1", "tv", AT), h))
    fr = titles_of(h, r.propose(RequestContext("u25", "tv", AT), h))
    assert fr.index("m2") < us.index("m2")
    assert fr[0] == "m2"
    # The request's country wins over the member's.
    assert titles_of(h, r.propose(RequestContext("u1", "tv", AT, "FR"), h))[0] == "m2"


def test_trending_personalization_lifts_the_members_genres() -> None:
    h = _trending_world()
    plain = TrendingRanker("t", TrendingConfig(half_life_hours=24, personalization=0)).fit(h)
    tuned = TrendingRanker("t", TrendingConfig(half_life_hours=24, personalization=5)).fit(h)
    q = RequestContext("kidfan", "tv", AT)
    before, after = titles_of(h, plain.propose(q, h)), titles_of(h, tuned.propose(q, h))
    assert after.index("kid") < before.index("kid")


def test_trending_scores_decay_to_the_request_time_without_reordering() -> None:
    h = _trending_world()
    r = TrendingRanker("t", TrendingConfig(half_life_hours=24)).fit(h)
    now = r.propose(RequestContext("u1", "tv", CUTOFF), h)[0]
    later = r.propose(RequestContext("u1", "tv", CUTOFF + timedelta(hours=24)), h)[0]
    assert np.array_equal(now.titles, later.titles)
    np.testing.assert_allclose(later.scores, now.scores / 2, rtol=1e-5)


def test_trending_refuses_state_saved_with_another_half_life(tmp_path: Path) -> None:
    h = _trending_world()
    TrendingRanker("t", TrendingConfig(half_life_hours=24)).fit(h).save(tmp_path)
    with pytest.raises(ModelLoadError, match=r"half_life_hours=24\.0, the config says 168\.0"):
        TrendingRanker("t", TrendingConfig(half_life_hours=168)).load(tmp_path, h)


# ----- Continue Watching -------------------------------------------------------------------------


def _cw_world() -> History:
    titles = [(f"m{i}", ["Drama"], 0, OLD, None, None) for i in range(5)]
    titles += [(f"e{k}", ["Drama"], 0, OLD, "show", k) for k in (1, 2, 3)]
    users = [("viewer", "US", 18), ("done", "US", 18), ("new", "US", 18)]
    plays: list[Play] = [
        ("viewer", "m0", ago(200), 0.4, "tv"),  # mid-way, a week ago
        ("viewer", "m1", ago(5), 0.6, "tv"),  # mid-way, this morning
        ("viewer", "m2", ago(3), 0.95, "tv"),  # finished
        ("viewer", "m3", ago(2), 0.01, "tv"),  # a peek, not a start
        ("viewer", "m4", ago(300), 0.5, "tv"),
        ("viewer", "m4", ago(100), 0.92, "tv"),  # finished on the second go
        ("viewer", "e1", ago(50), 0.97, "mobile"),
        ("viewer", "e2", ago(30), 0.3, "mobile"),  # the last episode touched, unfinished
        ("done", "e1", ago(20), 0.99, "tv"),  # finished e1: e2 is next
        ("done", "m0", ago(10), 1.0, "tv"),
    ]
    return world(titles, users, plays)


@pytest.mark.parametrize("model", ["logistic", "recency"])
def test_continue_watching_lists_started_unfinished_titles_and_next_episodes(model: str) -> None:
    h = _cw_world()
    r = ContinueWatchingRanker("cw", ContinueWatchingConfig(model=model)).fit(h)
    rows = r.propose(RequestContext("viewer", "tv", AT), h)
    got = titles_of(h, rows)
    assert sorted(got) == ["e2", "m0", "m1"]  # one tile for the show; no finished, no peek
    progress = dict(zip(got, rows[0].progress.tolist(), strict=True))
    assert progress == pytest.approx({"m0": 0.4, "m1": 0.6, "e2": 0.3})
    assert got.index("m1") < got.index("m0")  # recent and further along beats old
    # Finished e1 and nothing of e2 yet: the next episode, from its start.
    rows = r.propose(RequestContext("done", "tv", AT), h)
    assert titles_of(h, rows) == ["e2"]
    assert rows[0].progress.tolist() == [0.0]
    assert rows[0].evidence == {"model": model, "fitted_on": 0}


def test_continue_watching_new_member_and_finished_titles_give_no_row() -> None:
    h = _cw_world()
    r = ContinueWatchingRanker("cw", ContinueWatchingConfig()).fit(h)
    assert r.propose(RequestContext("new", "tv", AT), h) == []
    assert r.propose(RequestContext("stranger", "tv", AT), h) == []
    # Once the member finishes m1 it drops out.
    titles = [(f"m{i}", ["Drama"], 0, OLD, None, None) for i in range(2)]
    h2 = world(
        titles,
        [("viewer", "US", 18)],
        [("viewer", "m1", ago(5), 0.6, "tv"), ("viewer", "m1", ago(1), 0.93, "tv")],
    )
    assert (
        ContinueWatchingRanker("cw", ContinueWatchingConfig())
        .fit(h2)
        .propose(RequestContext("viewer", "tv", AT), h2)
        == []
    )


def test_continue_watching_rows_hold_only_unfinished_titles_on_the_contract_world() -> None:
    h = History.from_dataset(make_dataset(seed=5), CUTOFF)
    r = ContinueWatchingRanker("cw", ContinueWatchingConfig()).fit(h)
    n_rows = 0
    for uid in h.user_ids.tolist():
        rows = r.propose(RequestContext(uid, "tv", AT), h)
        if not rows:
            continue
        n_rows += 1
        done = h.finished(h.user_index(uid))
        assert not np.isin(rows[0].titles, done).any()
        assert rows[0].progress is not None
        assert (rows[0].progress < 0.9).all()
    assert n_rows > 50


# ----- New releases ------------------------------------------------------------------------------


def test_new_releases_recent_titles_including_cold_start_one_tile_per_series() -> None:
    titles = [
        ("old", ["Drama"], 0, ago(24 * 60), None, None),
        ("week", ["Drama"], 0, ago(24 * 7), None, None),
        ("hit", ["Drama"], 0, ago(24 * 10), None, None),
        ("fresh", ["Drama"], 0, ago(6), None, None),  # no plays yet
        ("s1", ["Drama"], 0, ago(24 * 3), "show", 1),
        ("s2", ["Drama"], 0, ago(24 * 3), "show", 2),
    ]
    users = [(f"u{i}", "US", 18) for i in range(10)]
    plays: list[Play] = [(f"u{i}", "hit", ago(24 * 5), 1.0, "tv") for i in range(10)]
    plays += [("u0", "s2", ago(24), 1.0, "tv"), ("u1", "s2", ago(24), 1.0, "tv")]
    h = world(titles, users, plays)
    r = NewReleasesRanker("new", NewReleasesConfig(window_days=30)).fit(h)
    got = titles_of(h, r.propose(RequestContext("u0", "tv", AT), h))
    assert "old" not in got and "fresh" in got
    assert "s1" in got and "s2" not in got  # the series shows once, from its first episode
    assert got.index("hit") < got.index("week")  # popularity lifts an older title
    only_recency = NewReleasesRanker("new", NewReleasesConfig(popularity_weight=0)).fit(h)
    got = titles_of(h, only_recency.propose(RequestContext("u0", "tv", AT), h))
    assert got == ["fresh", "s1", "week", "hit"]
    # A cold-start member gets the row too.
    assert r.propose(RequestContext("nobody", "tv", AT), h)


# ----- Watch again -------------------------------------------------------------------------------


def test_watch_again_proposes_finished_titles_after_a_while_and_keeps_them_through_filters() -> (
    None
):
    titles = [
        ("film", ["Drama"], 13, OLD, None, None),
        ("recent", ["Drama"], 13, OLD, None, None),
        ("toon", ["Kids"], 0, OLD, None, None),
        ("half", ["Drama"], 13, OLD, None, None),
        ("ep1", ["Drama"], 13, OLD, "show", 1),
    ]
    users = [("me", "US", 18)] + [(f"u{i}", "US", 18) for i in range(6)]
    plays: list[Play] = [
        ("me", "film", ago(24 * 45), 1.0, "tv"),
        ("me", "recent", ago(24 * 2), 1.0, "tv"),
        ("me", "toon", ago(24 * 4), 1.0, "tv"),
        ("me", "half", ago(24 * 60), 0.5, "tv"),
        ("me", "ep1", ago(24 * 60), 1.0, "tv"),
    ]
    # Others rewatch the cartoon, never the film: the cartoon ranks first.
    for i in range(6):
        plays += [
            (f"u{i}", "toon", ago(24 * 20), 1.0, "tv"),
            (f"u{i}", "toon", ago(24 * 9), 1.0, "tv"),
        ]
        plays += [(f"u{i}", "film", ago(24 * 20), 1.0, "tv")]
    h = world(titles, users, plays)
    r = WatchAgainRanker("again", WatchAgainConfig(min_days=30, kids_min_days=3)).fit(h)
    rows = r.propose(RequestContext("me", "tv", AT), h)
    assert titles_of(h, rows) == ["toon", "film"]
    kept, removed = apply_filters(rows, RequestContext("me", "tv", AT), h, {"again": r})
    assert np.array_equal(kept[0].titles, rows[0].titles)
    assert removed["again"].total == 0
    # u0 played the cartoon 9 days ago (kids: 3 days is enough), the film 20 (adults: 30).
    assert titles_of(h, r.propose(RequestContext("u0", "tv", AT), h)) == ["toon"]


def test_trending_short_lists_lose_nothing_against_personalizing_every_title() -> None:
    from rankers.trending import _genre_affinity

    h = History.from_dataset(make_dataset(seed=2), CUTOFF)
    cfg = TrendingConfig(half_life_hours=72, personalization=2.0, max_titles=10)
    r = TrendingRanker("t", cfg).fit(h)
    for uid in h.user_ids[:30].tolist():
        user = h.user_index(uid)
        row = r.propose(RequestContext(uid, "tv", CUTOFF), h)[0]
        country = str(h.user_country[user])
        base, _ = r._blend(country, r.global_counts_, r.country_counts_)
        every = np.flatnonzero(base >= cfg.min_score)
        affinity = _genre_affinity(h, user, every, h.cutoff_us)
        full = base[every] * (1 + cfg.personalization * affinity)
        # The row's scores are the best personalized scores over every title (ties aside, the
        # same titles): the short list dropped nothing that could make the row.
        np.testing.assert_allclose(np.sort(full)[::-1][: cfg.max_titles], row.scores, rtol=1e-5)
        assert len(row.titles) == min(cfg.max_titles, len(every))


def test_trending_as_of_a_past_time_counts_only_the_plays_before_it() -> None:
    """A page asked for a time before the cut-off gets the trend of that time: the same row as
    a ranker fitted on the history cut there, and two past times give two different trends."""
    from engine.data.history import truncate_history

    ds = make_dataset(seed=2)
    h = History.from_dataset(ds, CUTOFF)
    cfg = TrendingConfig(half_life_hours=48, max_titles=15)
    r = TrendingRanker("t", cfg).fit(h)
    rows_at = {}
    for days_before in (20, 8):
        at = CUTOFF - timedelta(days=days_before)
        past = truncate_history(h, int(at.timestamp() * 1_000_000))
        then = TrendingRanker("t", cfg).fit(past)
        for uid in h.user_ids[:10].tolist():
            ctx = RequestContext(uid, "tv", at)
            got = r.propose(ctx, h)[0]
            want = then.propose(ctx, past)[0]
            assert np.array_equal(got.titles, want.titles)
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
        rows_at[days_before] = got.titles.tolist()
    assert rows_at[20] != rows_at[8]


def test_new_releases_as_of_a_past_time_count_only_the_players_before_it() -> None:
    from engine.data.history import truncate_history
    from rankers.new_releases import NewReleasesConfig, NewReleasesRanker

    h = History.from_dataset(make_dataset(seed=4), CUTOFF)
    cfg = NewReleasesConfig(window_days=20, popularity_weight=0.8)
    r = NewReleasesRanker("new", cfg).fit(h)
    for days_before in (12, 4):
        at = CUTOFF - timedelta(days=days_before)
        past = truncate_history(h, int(at.timestamp() * 1_000_000))
        then = NewReleasesRanker("new", cfg).fit(past)
        ctx = RequestContext(str(h.user_ids[0]), "tv", at)
        got, want = r.propose(ctx, h)[0], then.propose(ctx, past)[0]
        assert np.array_equal(got.titles, want.titles)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_top_n_popular_pool_as_of_a_past_time() -> None:
    """The popular pool and the recent popularity a request uses are those of its time: for a
    past request, what a Top-N fitted on the history cut there holds; at two past times they
    differ."""
    from engine.data.history import truncate_history
    from rankers.top_n import TopNConfig, TopNRanker

    h = History.from_dataset(make_dataset(seed=5), CUTOFF)
    cfg = TopNConfig(tune=False, recent_weight=1.0, popular_pool=8, row_length=20)
    r = TopNRanker("top", cfg).fit(h)
    pools = []
    for days_before in (25, 10):
        at = int((CUTOFF - timedelta(days=days_before)).timestamp() * 1_000_000)
        then = TopNRanker("top", cfg).fit(truncate_history(h, at))
        assert np.array_equal(r._popular(h, at), then.popular_)
        np.testing.assert_allclose(r._recent_z(h, at), then.recent_z_)
        pools.append(r._popular(h, at).tolist())
    assert pools[0] != pools[1]
    assert np.array_equal(r._popular(h, h.cutoff_us), r.popular_)


def test_a_past_request_reads_none_of_the_members_later_plays() -> None:
    """Every built-in ranker, asked for a time T before the cut-off, proposes the same rows
    whether or not the History passed to it holds the member's plays after T (what it learned
    at fit time aside: that is the model's, not the member's state at T)."""
    from engine.config import build_rankers, load_config
    from engine.data.history import keep_plays
    from engine.pipeline import continuation_mode
    from engine.request.scorers import PageModelConfig

    h = History.from_dataset(make_dataset(seed=6), CUTOFF)
    rankers = build_rankers(load_config(None))
    for r in rankers.values():
        r.fit(h)
    n_checked = 0
    for u in range(h.n_users):
        s = h.user_plays(u)
        if s.stop - s.start < 6:
            continue
        at_us = int(h.play_ts[s][(s.stop - s.start) // 2]) + 1
        later = np.zeros(len(h.play_user), dtype=bool)
        later[s] = h.play_ts[s] >= at_us
        if not later.any():
            continue
        without = keep_plays(h, ~later)
        ctx = RequestContext(str(h.user_ids[u]), "tv", datetime.fromtimestamp(at_us / 1e6, UTC))
        for name, r in rankers.items():
            got = [(x.row_id, x.titles.tolist()) for x in r.propose(ctx, h)]
            want = [(x.row_id, x.titles.tolist()) for x in r.propose(ctx, without)]
            assert got == want, f"{name} read member {u}'s plays after the request"
        # the filters (finished, series entry) and the continuation rule of the page, too
        rows = [x for r in rankers.values() for x in r.propose(ctx, h)]
        got_rows, got_removed = apply_filters(rows, ctx, h, rankers)
        want_rows, want_removed = apply_filters(rows, ctx, without, rankers)
        assert [x.titles.tolist() for x in got_rows] == [x.titles.tolist() for x in want_rows]
        assert {k: v.titles.tolist() for k, v in got_removed.items()} == {
            k: v.titles.tolist() for k, v in want_removed.items()
        }
        page_cfg = PageModelConfig()
        assert continuation_mode(h, u, at_us, page_cfg) == continuation_mode(
            without, u, at_us, page_cfg
        )
        n_checked += 1
        if n_checked == 15:
            break
    assert n_checked == 15
