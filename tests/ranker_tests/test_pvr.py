"""Checks specific to the collaborative-filtering rankers (PVR, Top-N, Because you watched) on
small seeded worlds; the shared protocol checks live in
tests/ranker_tests/test_ranker_contract.py."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from engine.data.columns import STR_LIST, TIMESTAMP, Col
from engine.data.dataset import Dataset
from engine.data.history import History, truncate_history
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers.because_you_watched import BecauseYouWatchedConfig, BecauseYouWatchedRanker
from rankers.pvr import CFConfig, CFModel, PVRConfig, PVRRanker
from rankers.top_n import Blend, TopNConfig, TopNRanker

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CUT = T0 + timedelta(days=40)
GENRES = ("Comedy", "Drama", "Horror")


def world(
    seed: int = 0,
    n_users: int = 240,
    per_genre: int = 20,
    plays_per_user: int = 12,
    extra_titles: list[dict[str, object]] | None = None,
    extra_plays: list[tuple[str, str, float]] | None = None,
) -> Dataset:
    """Three genre clusters of `per_genre` titles; each user sticks to one genre (3 in 4 plays)
    and picks titles with Zipf-ish popularity. `extra_*` add hand-made titles / plays
    (user id, title id, day)."""
    rng = np.random.default_rng(seed)
    tid = [f"{g[0]}{i:02d}" for g in GENRES for i in range(per_genre)]
    genres = [[g] for g in GENRES for _ in range(per_genre)]
    rows: list[dict[str, object]] = [
        {"id": t, "genres": gs, "series": None, "episode": None, "year": 2000}
        for t, gs in zip(tid, genres, strict=True)
    ]
    rows += extra_titles or []
    titles = pl.DataFrame(
        {
            Col.TITLE_ID: [r["id"] for r in rows],
            Col.NAME: [f"Name {r['id']}" for r in rows],
            Col.KIND: ["series" if r["series"] else "movie" for r in rows],
            Col.GENRES: pl.Series([r["genres"] for r in rows], dtype=STR_LIST),
            Col.RELEASE_YEAR: pl.Series([r["year"] for r in rows], dtype=pl.Int32),
            Col.DURATION_MIN: pl.Series([90.0] * len(rows), dtype=pl.Float32),
            Col.MATURITY: pl.Series([0] * len(rows), dtype=pl.Int8),
            Col.COUNTRIES: pl.Series([[] for _ in rows], dtype=STR_LIST),
            Col.ADDED_AT: pl.Series([T0 - timedelta(days=100)] * len(rows), dtype=TIMESTAMP),
            Col.SERIES_ID: pl.Series([r["series"] for r in rows], dtype=pl.String),
            Col.EPISODE: pl.Series([r["episode"] for r in rows], dtype=pl.Int32),
        }
    )
    uid = [f"u{i:03d}" for i in range(n_users)]
    users = pl.DataFrame(
        {
            Col.USER_ID: uid,
            Col.COUNTRY: ["US"] * n_users,
            Col.MATURITY_MAX: pl.Series([18] * n_users, dtype=pl.Int8),
            Col.CREATED_AT: pl.Series([T0 - timedelta(days=10)] * n_users, dtype=TIMESTAMP),
        }
    )
    pop = 1.0 / np.arange(1, per_genre + 1)
    pop /= pop.sum()
    pu, pt, pd = [], [], []
    for u in range(n_users):
        fav = u % len(GENRES)
        for _ in range(plays_per_user):
            g = fav if rng.random() < 0.75 else int(rng.integers(len(GENRES)))
            pu.append(uid[u])
            pt.append(tid[g * per_genre + int(rng.choice(per_genre, p=pop))])
            pd.append(float(rng.uniform(0, 39)))
    for u_id, t_id, day in extra_plays or []:
        pu.append(u_id)
        pt.append(t_id)
        pd.append(day)
    plays = pl.DataFrame(
        {
            Col.USER_ID: pu,
            Col.TITLE_ID: pt,
            Col.TS: pl.Series([T0 + timedelta(days=d) for d in pd], dtype=TIMESTAMP),
            Col.DEVICE: ["tv"] * len(pu),
            Col.SECONDS_WATCHED: pl.Series([3000.0] * len(pu), dtype=pl.Float32),
            Col.PROGRESS: pl.Series([0.95] * len(pu), dtype=pl.Float32),
        }
    )
    return Dataset(titles, users, plays, None, clock=T0 + timedelta(days=60), source="test")


def req(user_id: str) -> RequestContext:
    return RequestContext(user_id, "tv", CUT + timedelta(hours=2))


def co_watch_world() -> Dataset:
    """Titles X1 and X2 (genre Drama) are always watched together by 30 users; user "solo"
    watched X1 only."""
    extra_titles: list[dict[str, object]] = [
        {"id": x, "genres": ["Drama"], "series": None, "episode": None, "year": 2000}
        for x in ("X1", "X2")
    ]
    extra_plays = [(f"u{i:03d}", x, 5.0 + i / 10) for i in range(30) for x in ("X1", "X2")]
    ds = world(extra_titles=extra_titles, extra_plays=extra_plays)
    solo = ds.users.head(1).with_columns(pl.lit("solo").alias(Col.USER_ID))
    solo_play = ds.plays.head(1).with_columns(
        pl.lit("solo").alias(Col.USER_ID), pl.lit("X1").alias(Col.TITLE_ID)
    )
    return Dataset(
        ds.titles,
        pl.concat([ds.users, solo]),
        pl.concat([ds.plays, solo_play]),
        None,
        ds.clock,
    )


@pytest.mark.parametrize("method", ["ease", "item_knn", "als"])
def test_cf_recovers_an_obvious_co_watch_pattern(method: str) -> None:
    h = History.from_dataset(co_watch_world(), CUT)
    # Small ALS (8 factors, 8 sweeps): the pattern is obvious and the test stays fast.
    cfg = PVRConfig(method=method, popularity_weight=0.0, min_plays=2, factors=8, als_iterations=8)
    r = PVRRanker("pvr", cfg).fit(h)
    u = h.user_index("solo")
    s = r.scores(u, h)
    s[h.title_index("X1")] = -np.inf  # played
    assert int(np.argmax(s)) == h.title_index("X2")
    # And the Drama row (the user's only genre) leads with X2.
    rows = r.propose(req("solo"), h)
    assert [row.title for row in rows] == ["Drama"]
    assert rows[0].titles[0] == h.title_index("X2")


def test_genre_rows_only_for_engaged_genres() -> None:
    h = History.from_dataset(world(), CUT)
    r = PVRRanker("pvr", PVRConfig(min_genre_share=0.15)).fit(h)
    u = h.user_index("u000")  # a Comedy fan: ~75% of plays
    played = set(h.play_title[h.user_plays(u)].tolist())
    user_genres = {
        g for t in played for g, on in zip(h.genre_names, h.title_genres[t], strict=True) if on
    }
    rows = r.propose(req("u000"), h)
    assert rows[0].title == "Comedy" and rows[0].row_id == "pvr:Comedy"
    assert rows[0].evidence is not None and rows[0].evidence["genre"] == "Comedy"
    assert rows[0].evidence["share"] > 0.5
    for row in rows:
        assert row.kind == "pvr_genre"
        assert row.title in user_genres
        assert row.evidence is not None and row.evidence["share"] >= 0.15
        g = h.genre_names.index(row.title)
        assert h.title_genres[row.titles, g].all()  # every title is of the row's genre
        assert not set(row.titles.tolist()) & played  # discovery: nothing already played
    shares = [row.evidence["share"] for row in rows if row.evidence is not None]
    assert shares == sorted(shares, reverse=True)


def test_genre_row_limit_and_unengaged_genre() -> None:
    # Member "c" played Comedy only: no Drama or Horror row whatever max_genre_rows allows.
    ds = world(extra_plays=[("u000", "C01", 39.5)])
    only_comedy = ds.plays.filter(
        (pl.col(Col.USER_ID) != "u000") | pl.col(Col.TITLE_ID).str.starts_with("C")
    )
    ds = Dataset(ds.titles, ds.users, only_comedy, None, ds.clock)
    h = History.from_dataset(ds, CUT)
    rows = PVRRanker("pvr", PVRConfig(max_genre_rows=3)).fit(h).propose(req("u000"), h)
    assert [r.title for r in rows] == ["Comedy"]
    rows = PVRRanker("pvr", PVRConfig(max_genre_rows=0)).fit(h).propose(req("u001"), h)
    assert rows == []


def test_repeated_scores_for_one_request_are_reused_and_never_stale() -> None:
    """A page asks PVR for the same member and time twice (rows, then the title feature): the
    second answer is the first's, and any other member, time, history or refit is computed."""
    h = History.from_dataset(world(), CUT)
    r = PVRRanker("pvr", PVRConfig()).fit(h)
    a, b = h.user_index("u000"), h.user_index("u001")
    first = r._score(a, h, h.cutoff_us)
    assert r._score(a, h, h.cutoff_us) is first
    assert not first.flags.writeable  # callers copy; nobody can edit the kept answer
    fresh = PVRRanker("pvr", PVRConfig()).fit(h)
    later = h.cutoff_us - 10 * 86_400_000_000
    for user, at in ((b, h.cutoff_us), (a, later), (-1, h.cutoff_us)):
        got = r._score(user, h, at)
        assert got is not first
        assert np.array_equal(got, fresh._score(user, h, at))
    assert not np.array_equal(r._score(a, h, later), first)  # the time is part of the key
    h2 = History.from_dataset(world(seed=1), CUT)
    r.fit(h2)
    assert np.array_equal(r._score(a, h2, h2.cutoff_us), fresh.fit(h2)._score(a, h2, h2.cutoff_us))


def test_cold_start_member_gets_popularity() -> None:
    h = History.from_dataset(world(), CUT)
    r = PVRRanker("pvr", PVRConfig()).fit(h)
    s = r.scores(-1, h)
    players = np.bincount(
        np.unique(h.play_user.astype(np.int64) * h.n_titles + h.play_title) % h.n_titles,
        minlength=h.n_titles,
    )
    # Scores are a monotone function of the number of distinct players.
    order = np.argsort(-s, kind="stable")
    assert (np.diff(players[order]) <= 0).all()
    rows = r.propose(req("nobody"), h)
    assert rows and all(len(row.titles) > 0 for row in rows)


def test_unplayed_title_reaches_rows_through_genre_match() -> None:
    new: list[dict[str, object]] = [
        {"id": "NEWC", "genres": ["Comedy"], "series": None, "episode": None, "year": 2000},
        {"id": "NEWH", "genres": ["Horror"], "series": None, "episode": None, "year": 2000},
    ]
    h = History.from_dataset(world(extra_titles=new), CUT)
    r = PVRRanker("pvr", PVRConfig(content_weight=0.5)).fit(h)
    u = h.user_index("u000")  # Comedy fan
    s = r.scores(u, h)
    assert np.isfinite(s).all()
    assert s[h.title_index("NEWC")] > s[h.title_index("NEWH")]
    comedy = next(row for row in r.propose(req("u000"), h) if row.title == "Comedy")
    assert h.title_index("NEWC") in comedy.titles


def test_pvr_rejects_typos_and_a_model_fitted_with_other_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="popularity_wieght"):
        PVRConfig.model_validate({"popularity_wieght": 0.3})
    h = History.from_dataset(world(), CUT)
    PVRRanker("pvr", PVRConfig(method="item_knn")).fit(h).save(tmp_path / "pvr")
    with pytest.raises(ModelLoadError, match="method"):
        PVRRanker("pvr", PVRConfig(method="ease")).load(tmp_path / "pvr", h)


def test_truncate_history_keeps_only_earlier_plays() -> None:
    h = History.from_dataset(world(), CUT)
    cut = int(np.quantile(h.play_ts, 0.5))
    t = truncate_history(h, cut)
    assert (t.play_ts < cut).all() and len(t.play_ts) == int((h.play_ts < cut).sum())
    for u in (0, 7, 100):
        s = t.user_plays(u)
        assert (t.play_user[s] == u).all()
        full = h.play_title[h.user_plays(u)][h.play_ts[h.user_plays(u)] < cut]
        assert (t.play_title[s] == full).all()
    assert t.user_index("u007") == 7 and t.n_titles == h.n_titles


# ----- Top-N -------------------------------------------------------------------------------


def test_top_n_head_is_personalized_and_tuned_on_the_past_only() -> None:
    h = History.from_dataset(world(), CUT)
    r = TopNRanker("top_n", TopNConfig()).fit(h)
    heads, shares = set(), []
    for u in range(30):
        uid = f"u{u:03d}"
        (row,) = r.propose(req(uid), h)
        assert row.title == "Top Picks for You" and row.kind == "top_n"
        head = row.titles[:10]
        heads.add(tuple(head.tolist()))
        fav = h.genre_names.index(GENRES[u % 3])
        shares.append(h.title_genres[head, fav].mean())
    # The head follows each member's taste (a third if it ignored it) and differs per member.
    assert np.mean(shares) >= 0.6, shares
    assert len(heads) >= 25
    # The tuning table covers the whole grid and the chosen point is its best one.
    cfg = r.config
    assert isinstance(cfg, TopNConfig)
    grid = [row for row in r.tuning_ if "ndcg10" in row]
    n_recent = sum(1 for w in cfg.recent_grid if w) * len(cfg.recent_days_grid)
    n_recent += sum(1 for w in cfg.recent_grid if not w)
    assert len(grid) == len(cfg.popularity_grid) * len(cfg.content_grid) * n_recent
    top = max(grid, key=lambda row: row["ndcg10"])
    chosen = next(
        row for row in grid if {k: v for k, v in row.items() if k != "ndcg10"} == asdict(r.blend_)
    )
    assert chosen["ndcg10"] == top["ndcg10"]
    assert 0.0 < top["ndcg10"] <= 1.0


def test_top_n_without_tuning_uses_the_config_weights(tmp_path: Path) -> None:
    h = History.from_dataset(world(), CUT)
    cfg = TopNConfig(
        tune=False, popularity_weight=0.3, recent_weight=0.2, content_weight=0.0, recent_days=7
    )
    r = TopNRanker("top_n", cfg).fit(h)
    assert r.blend_ == Blend(popularity=0.3, recent=0.2, content=0.0, recent_days=7.0)
    assert r.tuning_ == []
    r.save(tmp_path / "t")
    loaded = TopNRanker("top_n", cfg).load(tmp_path / "t", h)
    assert loaded.blend_ == r.blend_
    np.testing.assert_array_equal(loaded.scores(5, h), r.scores(5, h))


def test_top_n_popular_pool_fills_the_rows_last_places_with_this_weeks_most_played() -> None:
    h = History.from_dataset(world(), CUT)
    base = dict(tune=False, popularity_weight=0.0, content_weight=0.0, row_length=20)
    plain = TopNRanker("top_n", TopNConfig(**base)).fit(h)
    pooled = TopNRanker("top_n", TopNConfig(**base, popular_pool=5, popular_pool_days=7)).fit(h)
    week = (h.play_ts >= h.cutoff_us - 7 * 86_400_000_000) & (h.play_ts < h.cutoff_us)
    players = np.zeros(h.n_titles)
    for t in np.unique(h.play_title[week]):
        players[t] = len(np.unique(h.play_user[week & (h.play_title == t)]))
    pool_sizes = []
    for u in range(12):
        uid = f"u{u:03d}"
        (mine,) = plain.propose(req(uid), h)
        (row,) = pooled.propose(req(uid), h)
        played = set(h.play_title[h.user_plays(h.user_index(uid))].tolist())
        assert len(row.titles) == 20 and len(set(row.titles.tolist())) == 20
        assert np.all(np.diff(row.scores) <= 0) and not played & set(row.titles.tolist())
        # The blend's best 15 stay; the other 5 are the week's most played of the rest.
        best = set(mine.titles[:15].tolist())
        extra = [t for t in row.titles.tolist() if t not in best]
        assert best <= set(row.titles.tolist()) and len(extra) == 5
        rest = [t for t in range(h.n_titles) if t not in best and t not in played]
        fifth = sorted((players[t] for t in rest), reverse=True)[4]
        assert min(players[extra]) >= fifth > 0
        pool_sizes.append(len(set(extra) - set(mine.titles.tolist())))
    # Without the pool those titles would not have made the row for most members.
    assert sum(pool_sizes) >= 2 * len(pool_sizes), pool_sizes


# ----- Because you watched -----------------------------------------------------------------


def series_world() -> Dataset:
    """A Drama series S (episodes S1..S5) that Drama fans binge, plus a brand-new Drama film
    NEWD nobody has played."""
    extra: list[dict[str, object]] = [
        {"id": f"S{e}", "genres": ["Drama"], "series": "S", "episode": e, "year": 2010}
        for e in range(1, 6)
    ]
    extra.append({"id": "NEWD", "genres": ["Drama"], "series": None, "episode": None, "year": 2000})
    plays = [(f"u{u:03d}", f"S{e}", 20 + e + u / 100) for u in range(1, 120, 3) for e in (1, 2, 3)]
    plays += [("u001", "S4", 39.9)]  # u001's latest play: episode 4
    return world(extra_titles=extra, extra_plays=plays)


def test_byw_excludes_seed_and_same_series_and_played() -> None:
    h = History.from_dataset(series_world(), CUT)
    r = BecauseYouWatchedRanker("byw", BecauseYouWatchedConfig(max_rows=10)).fit(h)
    u = h.user_index("u001")
    rows = r.propose(req("u001"), h)
    assert 3 <= len(rows) <= 10
    series_titles = {h.title_index(f"S{e}") for e in range(1, 6)}
    played = set(h.play_title[h.user_plays(u)].tolist())
    seeds = []
    for row in rows:
        assert row.kind == "because_you_watched"
        assert row.evidence is not None
        seed = h.title_index(row.evidence["seed_title_id"])
        seeds.append(seed)
        assert row.row_id == f"byw:{row.evidence['seed_title_id']}"
        assert row.title == f"Because you watched {row.evidence['seed_name']}"
        assert row.evidence["seed_name"] == h.title_names[seed]
        assert seed in played
        assert seed not in row.titles
        if seed in series_titles:
            assert not set(row.titles.tolist()) & series_titles
        assert not set(row.titles.tolist()) & played
    # u001 watched four episodes: exactly one of them seeds a row (one seed per series).
    assert len(set(seeds) & series_titles) == 1
    # Precomputed neighbours: no title is its own neighbour, no episode neighbours its series.
    for e in range(1, 6):
        nb, sim = r.similar(h.title_index(f"S{e}"))
        assert not set(nb.tolist()) & series_titles
        assert (np.diff(sim) <= 0).all() and (sim > 0).all()


def test_byw_unplayed_title_appears_through_content() -> None:
    h = History.from_dataset(series_world(), CUT)
    cfg = BecauseYouWatchedConfig(content_weight=0.3, neighbours=80)
    r = BecauseYouWatchedRanker("byw", cfg).fit(h)
    nb, _ = r.similar(h.title_index("D03"))
    assert h.title_index("NEWD") in nb
    nb_c, _ = r.similar(h.title_index("C03"))
    # A Comedy title's neighbours rank the Drama newcomer below Comedy titles, if at all.
    comedy = [i for i, t in enumerate(nb_c.tolist()) if h.title_ids[t].startswith("C")]
    newd = [i for i, t in enumerate(nb_c.tolist()) if t == h.title_index("NEWD")]
    assert not newd or newd[0] > max(comedy)
    # Co-watching decides among played titles: S1's best neighbour is a Drama film.
    nb_s, _ = r.similar(h.title_index("S1"))
    assert h.title_ids[nb_s[0]].startswith("D")


def test_byw_seed_choice_is_personalized() -> None:
    h = History.from_dataset(world(), CUT)
    r = BecauseYouWatchedRanker("byw", BecauseYouWatchedConfig()).fit(h)
    a = r.seeds(h.user_index("u000"), h, h.cutoff_us)
    b = r.seeds(h.user_index("u001"), h, h.cutoff_us)
    assert len(a) and len(b) and set(a.tolist()) != set(b.tolist())
    assert set(a.tolist()) <= set(h.play_title[h.user_plays(h.user_index("u000"))].tolist())


@pytest.mark.parametrize("method", ["ease", "item_knn"])
def test_a_dense_method_scores_only_the_most_played_titles_past_max_dense_titles(
    method: str,
) -> None:
    # Title t has t + 1 distinct players (members 0..t), so the most played are the last.
    titles = 12
    rows = np.concatenate([np.arange(t + 1) for t in range(titles)])
    cols = np.concatenate([np.full(t + 1, t) for t in range(titles)])
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(titles, titles))
    capped = CFModel.fit_plays(x, CFConfig(method=method, min_plays=2, max_dense_titles=4))
    assert capped.eval_items.tolist() == [8, 9, 10, 11]
    assert capped.item_weights.shape == (4, 4)
    whole = CFModel.fit_plays(x, CFConfig(method=method, min_plays=2))
    assert whole.eval_items.tolist() == list(range(1, titles))  # title 0 has one player
    als = CFModel.fit_plays(x, CFConfig(method="als", min_plays=2, max_dense_titles=4))
    assert als.eval_items.tolist() == list(range(1, titles))  # factors: no n^2 to bound
