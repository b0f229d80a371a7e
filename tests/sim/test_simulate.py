"""The simulated world: determinism, every promised effect in the data, the ground-truth API."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.cli import main
from engine.data.columns import IMPRESSIONS, PLAYS, SCHEMA, TITLES, USERS
from engine.data.dataset import load_dataset
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS
from engine.sim.simulate import GROUND_TRUTH_DIR, chunked_params, simulate
from engine.sim.world import GroundTruth, _best_assignment, page_play_probs

SEED = 7
N_USERS, N_TITLES, N_DAYS = 600, 250, 21


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "world"
    simulate(out, users=N_USERS, titles=N_TITLES, days=N_DAYS, seed=SEED, progress=False)
    return out


@pytest.fixture(scope="module")
def tables(world_dir: Path) -> dict[str, pl.DataFrame]:
    return {
        name: pl.read_parquet(world_dir / f"{name}.parquet")
        for name in (TITLES, USERS, PLAYS, IMPRESSIONS)
    }


@pytest.fixture(scope="module")
def gt(world_dir: Path) -> GroundTruth:
    return GroundTruth.load(world_dir / GROUND_TRUTH_DIR)


@pytest.fixture(scope="module")
def plays_t(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return (
        tables[PLAYS]
        .join(tables[TITLES], on="title_id")
        .with_columns(
            hour=pl.col("ts").dt.hour(),
            end=pl.col("ts")
            + pl.duration(microseconds=(pl.col("seconds_watched") * 1e6).cast(pl.Int64)),
        )
    )


# ----- determinism and schema ------------------------------------------------------------------


def _files(d: Path) -> dict[str, bytes]:
    names = [f"{t}.parquet" for t in (TITLES, USERS, PLAYS, IMPRESSIONS)] + ["dataset.json"]
    names += [f"{GROUND_TRUTH_DIR}/world.json", f"{GROUND_TRUTH_DIR}/world.npz"]
    return {n: (d / n).read_bytes() for n in names}


@pytest.mark.parametrize("chunk", [None, 90])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, chunk: int | None) -> None:
    # chunk=90 runs 4 user chunks and the streamed Parquet merge.
    params = chunked_params(chunk) if chunk else None
    kw = {"users": 300, "titles": 120, "days": 6, "params": params, "progress": False}
    a = simulate(tmp_path / "a", seed=3, **kw)  # type: ignore[arg-type]
    simulate(tmp_path / "b", seed=3, **kw)  # type: ignore[arg-type]
    simulate(tmp_path / "c", seed=4, **kw)  # type: ignore[arg-type]
    assert a.chunks == (4 if chunk else 1)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    for name in (f"{t}.parquet" for t in (TITLES, USERS, PLAYS, IMPRESSIONS)):
        assert fa[name] != fc[name], name
    assert a.plays > 0 and a.impressions > 0


def test_dataset_validates_and_matches_schema(
    world_dir: Path, tables: dict[str, pl.DataFrame]
) -> None:
    ds = load_dataset(world_dir)  # raises DataError listing problems
    assert ds.source == "rowrank-simulate"
    gt_world = GroundTruth.load(world_dir / GROUND_TRUTH_DIR).world
    assert int(ds.clock.timestamp() * 1e6) == gt_world.end_us
    for name, frame in tables.items():
        for col in SCHEMA[name]:
            if col.required:
                assert frame.schema[col.name] == col.dtype, (name, col.name)
    assert tables[PLAYS]["ts"].max() < ds.clock  # type: ignore[operator]
    assert tables[USERS].height == N_USERS and tables[TITLES].height == N_TITLES


def test_catalog_and_users(tables: dict[str, pl.DataFrame], gt: GroundTruth) -> None:
    titles, users = tables[TITLES], tables[USERS]
    start = gt.world.start_us
    assert set(titles["kind"]) == {"movie", "series"}
    movies = titles.filter(pl.col("kind") == "movie")
    eps = titles.filter(pl.col("kind") == "series")
    assert movies["duration_min"].min() >= 80 and movies["duration_min"].max() <= 150  # type: ignore[operator]
    assert eps["duration_min"].min() >= 20 and eps["duration_min"].max() <= 50  # type: ignore[operator]
    per_series = eps.group_by("series_id").agg(pl.len(), pl.col("episode").sort())
    assert per_series["len"].min() >= 1 and per_series["len"].max() > 2  # type: ignore[operator]
    assert all(e == list(range(1, len(e) + 1)) for e in per_series["episode"].to_list())
    genres = set(titles["genres"].explode())
    assert {"Kids", "Comedy", "Drama", "Thriller", "Horror", "Documentary"} <= genres
    kids = titles.filter(pl.col("genres").list.contains("Kids"))
    assert kids["maturity"].max() <= 7  # type: ignore[operator]
    assert set(titles["maturity"]) <= {0, 7, 13, 16, 18}
    limited = titles.filter(pl.col("countries").list.len() < 6)
    assert 0.1 < limited.height / titles.height < 0.6
    added = titles["added_at"].dt.epoch("us")
    assert 0 < (added >= start).sum() < titles.height * 0.3  # new arrivals inside the period
    joined = users["created_at"].dt.epoch("us") >= start
    assert 0 < joined.sum() < users.height * 0.3
    assert set(users["country"]) == {"US", "GB", "DE", "FR", "BR", "IN"}
    # Heavy-tailed activity: the busiest 10% of users make a large share of plays.
    per_user = np.sort(tables[PLAYS].group_by("user_id").len()["len"].to_numpy())[::-1]
    assert per_user[: len(per_user) // 10].sum() > 0.3 * per_user.sum()


def test_plays_per_user_are_realistic(tables: dict[str, pl.DataFrame]) -> None:
    weekly = tables[PLAYS].group_by("user_id").len()["len"].to_numpy() / (N_DAYS / 7)
    assert 0.5 <= np.median(weekly) <= 5  # most users: a few plays a week
    assert np.quantile(weekly, 0.99) >= 7  # heavy users: daily or more


# ----- context effects -------------------------------------------------------------------------


def test_short_titles_on_mobile_long_on_tv(plays_t: pl.DataFrame) -> None:
    short = plays_t.group_by("device").agg((pl.col("duration_min") < 60).mean().alias("s"))
    share = dict(zip(short["device"], short["s"], strict=True))
    assert share["mobile"] > 1.5 * share["tv"]


def test_kids_by_day_horror_thriller_late(plays_t: pl.DataFrame) -> None:
    p = plays_t.with_columns(
        kids=pl.col("genres").list.contains("Kids"),
        scary=pl.col("genres").list.contains("Horror") | pl.col("genres").list.contains("Thriller"),
        day=pl.col("hour").is_between(7, 17),
        late=(pl.col("hour") >= 21) | (pl.col("hour") <= 2),
    )
    day, late = p.filter(pl.col("day")), p.filter(pl.col("late"))
    assert day["kids"].mean() > 1.5 * late["kids"].mean()  # type: ignore[operator]
    assert late["scary"].mean() > 1.3 * day["scary"].mean()  # type: ignore[operator]


def test_traffic_peaks_in_the_evening(tables: dict[str, pl.DataFrame]) -> None:
    pages = tables[IMPRESSIONS].unique("page_id").with_columns(h=pl.col("ts").dt.hour())
    evening = pages.filter(pl.col("h").is_between(19, 22)).height / 4
    night = pages.filter(pl.col("h").is_between(3, 5)).height / 3
    assert evening > 3 * night


# ----- viewing behaviour -----------------------------------------------------------------------


def test_resumed_days_later_and_abandoned_early(plays_t: pl.DataFrame) -> None:
    p = plays_t.sort("user_id", "ts").with_columns(
        next_ts=pl.col("ts").shift(-1).over("user_id", "title_id")
    )
    resumed = p.filter(
        (pl.col("progress") < 0.9)
        & pl.col("next_ts").is_not_null()
        & (pl.col("next_ts") - pl.col("ts") >= timedelta(days=1))
    )
    assert resumed.height >= 10
    abandoned = p.filter((pl.col("progress") < 0.5) & pl.col("next_ts").is_null())
    assert abandoned.height >= 0.05 * p.height
    # Varying progress: stops are spread, not a single value.
    stops = p.filter(pl.col("progress") < 0.9)["progress"].to_numpy()
    assert np.quantile(stops, 0.1) < 0.25 and np.quantile(stops, 0.9) > 0.6


def test_binge_next_episode(plays_t: pl.DataFrame) -> None:
    p = plays_t.sort("user_id", "ts").with_columns(
        prev_series=pl.col("series_id").shift(1).over("user_id"),
        prev_episode=pl.col("episode").shift(1).over("user_id"),
        prev_end=pl.col("end").shift(1).over("user_id"),
        prev_progress=pl.col("progress").shift(1).over("user_id"),
    )
    binge = p.filter(
        (pl.col("series_id") == pl.col("prev_series"))
        & (pl.col("episode") == pl.col("prev_episode") + 1)
        & (pl.col("prev_progress") >= 0.9)
        & (pl.col("ts") - pl.col("prev_end") < timedelta(minutes=2))
    )
    assert binge.height >= 20


def test_rewatches_exist(plays_t: pl.DataFrame) -> None:
    p = plays_t.sort("user_id", "ts").with_columns(
        done_before=(pl.col("progress") >= 0.9).cum_sum().over("user_id", "title_id")
        - (pl.col("progress") >= 0.9).cast(pl.UInt32)
    )
    assert p.filter(pl.col("done_before") > 0).height >= 3


def test_trending_titles_spike(tables: dict[str, pl.DataFrame], gt: GroundTruth) -> None:
    w = gt.world
    plays = tables[PLAYS].join(tables[USERS].select("user_id", "country"), on="user_id")
    day = ((plays["ts"].dt.epoch("us") - w.start_us) // 86_400_000_000).to_numpy()
    title = gt.title_indices(plays["title_id"].to_list())
    country = np.array([w.countries.index(c) for c in plays["country"].to_list()])
    inside, outside = 0.0, 0.0
    n_in, n_out = 0, 0
    for t, c, s, d in zip(
        w.burst_title, w.burst_country, w.burst_start_day, w.burst_days, strict=True
    ):
        mine = (title == t) & (country == c)
        during = mine & (day >= s) & (day < s + d)
        days_in = min(s + d, w.days) - s
        inside += during.sum()
        n_in += days_in
        outside += (mine & ~during).sum()
        n_out += w.days - days_in
    assert n_in > 0
    assert inside / n_in > 2.0 * outside / max(n_out, 1)


def test_new_titles_only_after_added(tables: dict[str, pl.DataFrame], gt: GroundTruth) -> None:
    titles = tables[TITLES].select("title_id", "added_at")
    for table in (PLAYS, IMPRESSIONS):
        joined = tables[table].join(titles, on="title_id")
        assert joined.filter(pl.col("ts") < pl.col("added_at")).height == 0
    new = titles.filter(pl.col("added_at").dt.epoch("us") > gt.world.start_us)
    played_new = tables[PLAYS].join(new, on="title_id")
    assert played_new["title_id"].n_unique() >= 3


# ----- the logged pages ------------------------------------------------------------------------


def test_impressions_inside_the_viewport(tables: dict[str, pl.DataFrame]) -> None:
    imp = tables[IMPRESSIONS]
    assert set(imp["row_kind"]) == {
        "continue_watching",
        "top_picks",
        "trending",
        "pvr_genre",
        "because_you_watched",
        "new_releases",
        "watch_again",
    }
    for device, lay in DEFAULT_LAYOUTS.items():
        mine = imp.filter(pl.col("device") == device)
        assert mine.height > 0
        assert mine["row_index"].max() == lay.visible_rows - 1
        assert mine["position"].max() == lay.visible_titles - 1
    # One title per slot, no title twice on a page, at most one play per page.
    assert imp.select("page_id", "row_index", "position").is_duplicated().sum() == 0
    assert imp.select("page_id", "title_id").is_duplicated().sum() == 0
    assert imp.group_by("page_id").agg(pl.col("played").sum())["played"].max() == 1


def test_position_bias_in_ctr(tables: dict[str, pl.DataFrame]) -> None:
    imp = tables[IMPRESSIONS]
    by_row = imp.group_by("row_index").agg(pl.col("played").mean()).sort("row_index")["played"]
    by_pos = imp.group_by("position").agg(pl.col("played").mean()).sort("position")["played"]
    assert by_row[0] > by_row[1] > by_row[2]
    assert by_pos[0] > by_pos[1] > by_pos[2]


def test_page_plays_and_search_plays(tables: dict[str, pl.DataFrame]) -> None:
    imp, plays = tables[IMPRESSIONS], tables[PLAYS]
    clicked = imp.filter(pl.col("played")).select("user_id", "title_id", page_ts="ts")
    assert 0 < clicked.height < plays.height  # some plays come from search or post-play
    # Every logged click is followed by that play within minutes.
    match = clicked.join(plays.select("user_id", "title_id", "ts"), on=["user_id", "title_id"])
    match = match.filter(
        (pl.col("ts") >= pl.col("page_ts"))
        & (pl.col("ts") - pl.col("page_ts") < timedelta(minutes=5))
    )
    assert match.select("user_id", "page_ts").n_unique() == clicked.height


# ----- ground truth ----------------------------------------------------------------------------


def _contexts(gt: GroundTruth, n: int, seed: int) -> list[RequestContext]:
    rng = np.random.default_rng(seed)
    w = gt.world
    out = []
    for u in rng.choice(w.n_users, n, replace=False).tolist():
        at_us = w.end_us - int(rng.integers(0, 5 * 86_400_000_000))
        at = pl.Series([at_us]).cast(pl.Datetime("us", "UTC")).to_list()[0]
        device = ("tv", "mobile", "tablet", "web")[int(rng.integers(0, 4))]
        out.append(RequestContext(str(w.user_ids[u]), device, at))
    return out


def test_play_probability_bounds_and_zeros(gt: GroundTruth) -> None:
    w = gt.world
    all_ids = w.title_ids.tolist()
    for ctx in _contexts(gt, 20, 1):
        p = gt.play_probability(ctx.user_id, ctx, [*all_ids, "no-such-title"])
        assert p.shape == (len(all_ids) + 1,)
        assert np.all((p >= 0) & (p <= 1)) and p[-1] == 0 and p.max() > 0
        u = gt.user_index(ctx.user_id)
        too_mature = w.maturity > w.user_maturity_max[u]
        elsewhere = ~w.available[:, w.user_country[u]]
        assert np.all(p[:-1][too_mature | elsewhere] == 0)
    # Before a new title was added, nobody can play it.
    new = int(np.argmax(w.added_us))
    ctx = _contexts(gt, 1, 2)[0]
    before = ctx.__class__(ctx.user_id, ctx.device, ctx.at.replace(year=2000))
    assert gt.play_probability(ctx.user_id, before, [str(w.title_ids[new])])[0] == 0


def test_page_probabilities_viewport_repeats_and_monte_carlo(gt: GroundTruth) -> None:
    ctx = _contexts(gt, 1, 3)[0]
    ctx = RequestContext(ctx.user_id, "tv", ctx.at)  # viewport 3 rows x 6 titles
    p_all = gt.play_probability(ctx.user_id, ctx, gt.world.title_ids.tolist())
    best = gt.world.title_ids[np.argsort(-p_all)[:40]].tolist()
    rows = [best[i * 8 : (i + 1) * 8] for i in range(4)]
    rows[1][0] = rows[0][0]  # a repeat
    probs = gt.page_play_probabilities(ctx.user_id, ctx, rows)
    assert [len(r) for r in probs] == [8, 8, 8, 8]
    assert probs[1][0] == 0  # repeats count zero
    assert all(np.all(r[6:] == 0) for r in probs) and np.all(probs[3] == 0)  # outside viewport
    total = gt.expected_plays(ctx.user_id, ctx, rows)
    assert 0 < total <= 1 and total == pytest.approx(sum(float(r.sum()) for r in probs))
    rng = np.random.default_rng(0)
    n = 1500
    hits: dict[tuple[int, int], int] = {}
    for _ in range(n):
        res = gt.simulate_response(ctx.user_id, ctx, rows, rng)
        if res is not None:
            hits[res] = hits.get(res, 0) + 1
    n_hits = sum(hits.values())
    assert abs(n_hits / n - total) < 4 * np.sqrt(total * (1 - total) / n)
    for (r, c), k in hits.items():
        assert probs[r][c] > 0
        assert abs(k / n - probs[r][c]) < 4 * np.sqrt(probs[r][c] * (1 - probs[r][c]) / n) + 1e-3


def test_ground_truth_explains_the_logged_plays(
    gt: GroundTruth, tables: dict[str, pl.DataFrame]
) -> None:
    """Expected plays under the ground truth, on the pages the simulator logged, match the
    plays it drew from them: the simulator and GroundTruth are one model."""
    imp = tables[IMPRESSIONS].sort("page_id", "row_index", "position")
    pages = imp.partition_by("page_id", maintain_order=True)[:1000]
    expected, actual = 0.0, 0
    for page in pages:
        first = page.row(0, named=True)
        ctx = RequestContext(first["user_id"], first["device"], first["ts"])
        rows = [
            r["title_id"].to_list() for r in page.partition_by("row_index", maintain_order=True)
        ]
        expected += gt.expected_plays(first["user_id"], ctx, rows)
        actual += int(page["played"].sum())
    sd = np.sqrt(expected)
    assert abs(actual - expected) < 4 * sd, (actual, expected)


def test_oracle_beats_random_pages(gt: GroundTruth) -> None:
    rng = np.random.default_rng(11)
    for ctx in _contexts(gt, 12, 4):
        lay = DEFAULT_LAYOUTS[ctx.device]
        oracle = gt.oracle_page(ctx.user_id, ctx, lay)
        # The layout's shape, as far as the catalog (250 titles) fills it; the viewport full.
        assert len(oracle) <= lay.rows and all(len(r) <= lay.titles_per_row for r in oracle)
        assert all(len(r) >= lay.visible_titles for r in oracle[: lay.visible_rows])
        flat = [t for r in oracle for t in r]
        assert (
            len(set(flat))
            == len(flat)
            == min(len(gt.world.title_ids), lay.rows * lay.titles_per_row)
        )
        best = gt.expected_plays(ctx.user_id, ctx, oracle)
        p = gt.play_probability(ctx.user_id, ctx, gt.world.title_ids.tolist())
        # Hard competitors: random arrangements of the 60 most attractive titles.
        pool = gt.world.title_ids[np.argsort(-p)[:60]]
        for _ in range(30):
            pick = rng.permutation(pool)[: lay.rows * lay.titles_per_row].tolist()
            page = [
                pick[i * lay.titles_per_row : (i + 1) * lay.titles_per_row] for i in range(lay.rows)
            ]
            assert gt.expected_plays(ctx.user_id, ctx, page) <= best + 1e-12


def test_oracle_assignment_near_brute_force() -> None:
    """On a 2 x 3 viewport the oracle's placement is within 0.5% of the exhaustive optimum."""
    rng = np.random.default_rng(5)
    gaps = []
    for _ in range(40):
        a = np.sort(rng.beta(0.6, 3.0, 6))[::-1]
        beta, stop = float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.05, 0.5))
        perms = np.array(list(itertools.permutations(range(6))))
        pages = a[perms].reshape(-1, 2, 3)
        brute = page_play_probs(pages, np.full(len(pages), beta), stop).sum(axis=(1, 2)).max()
        grid = _best_assignment(a, 2, 3, beta, stop)
        mine = page_play_probs(a[grid][None], np.array([beta]), stop).sum()
        assert mine <= brute + 1e-12
        gaps.append(1 - mine / brute)
    assert max(gaps) < 0.005


def test_save_load_round_trip(gt: GroundTruth, tmp_path: Path) -> None:
    gt.save(tmp_path / "gt")
    again = GroundTruth.load(tmp_path / "gt")
    ctx = _contexts(gt, 1, 6)[0]
    ids = gt.world.title_ids.tolist()
    np.testing.assert_array_equal(
        gt.play_probability(ctx.user_id, ctx, ids), again.play_probability(ctx.user_id, ctx, ids)
    )
    with pytest.raises(KeyError):
        gt.play_probability("nobody", ctx, ids)


def test_cli_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        ["simulate", str(out), "--users", "60", "--titles", "40", "--days", "3", "--seed", "2"]
    )
    assert code == 0
    assert "60 users" in capsys.readouterr().out
    assert (out / "plays.parquet").is_file() and (out / GROUND_TRUTH_DIR / "world.npz").is_file()
    load_dataset(out)
