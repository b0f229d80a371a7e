"""The contract every registered ranker must pass (built-ins and plug-ins alike).

Parametrized over the `rowrank.rankers` entry points, so a ranker added to pyproject.toml (or
installed as a plug-in) is covered without editing this file. Each ranker is built with its
Config's defaults on a small seeded world: ~100 members, ~80 titles including a ten-episode
series, ~3,000 plays with devices and progress.

`check_contract` is reused by tests/ranker_tests/test_plugin.py for a ranker defined outside the
package.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from engine.candidates import CandidateRow, RankerConfig
from engine.data.columns import DEVICES, MATURITY_LEVELS, STR_LIST, TIMESTAMP, Col
from engine.data.dataset import Dataset
from engine.data.history import History
from engine.errors import ModelLoadError, NotFittedError
from engine.registry import check_ranker_class, ranker_entry_points, ranker_type
from engine.request.context import RequestContext

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAYS = 60
CUTOFF = T0 + timedelta(days=50)
GENRES = ("Drama", "Comedy", "Action", "Kids", "Documentary", "Thriller")
COUNTRIES = ("US", "FR", "DE")


def make_dataset(
    seed: int = 0, n_users: int = 100, n_movies: int = 70, n_episodes: int = 10, n_plays: int = 3600
) -> Dataset:
    """A small seeded world. Plays run over DAYS days from T0; some titles arrive late (new
    releases), some only in one country; the series' episodes are watched in order."""
    rng = np.random.default_rng(seed)
    n_titles = n_movies + n_episodes
    kinds = ["movie"] * n_movies + ["series"] * n_episodes
    is_ep = np.arange(n_titles) >= n_movies
    # Most titles predate the world; a tail arrives during it (days 20..58).
    added_day = np.where(rng.random(n_titles) < 0.8, -rng.integers(1, 400, n_titles), 0)
    late = added_day == 0
    added_day[late] = rng.integers(20, DAYS - 1, int(late.sum()))
    added_day[is_ep] = -30  # the series is old
    countries: list[list[str]] = []
    for _ in range(n_titles):
        r = rng.random()
        countries.append(
            [] if r < 0.7 else [str(rng.choice(COUNTRIES))] if r < 0.9 else ["US", "FR"]
        )
    genres = [
        sorted({str(g) for g in rng.choice(GENRES, rng.integers(1, 3))}) for _ in range(n_titles)
    ]
    maturity = rng.choice(MATURITY_LEVELS, n_titles).astype(np.int8)
    for i in np.flatnonzero(is_ep):
        genres[i], maturity[i], countries[i] = ["Drama"], np.int8(13), []
    titles = pl.DataFrame(
        {
            Col.TITLE_ID: [f"t{i:03d}" for i in range(n_titles)],
            Col.NAME: [f"Title {i}" for i in range(n_titles)],
            Col.KIND: kinds,
            Col.GENRES: pl.Series(genres, dtype=STR_LIST),
            Col.RELEASE_YEAR: pl.Series(rng.integers(1980, 2025, n_titles), dtype=pl.Int32),
            Col.DURATION_MIN: pl.Series(np.where(is_ep, 45.0, 100.0), dtype=pl.Float32),
            Col.MATURITY: pl.Series(maturity, dtype=pl.Int8),
            Col.COUNTRIES: pl.Series(countries, dtype=STR_LIST),
            Col.ADDED_AT: pl.Series(
                [T0 + timedelta(days=float(d)) for d in added_day], dtype=TIMESTAMP
            ),
            Col.SERIES_ID: [("s1" if e else None) for e in is_ep],
            Col.EPISODE: pl.Series(
                [int(i - n_movies + 1) if e else None for i, e in enumerate(is_ep)], dtype=pl.Int32
            ),
        }
    )
    created_day = np.where(rng.random(n_users) < 0.85, -rng.integers(1, 300, n_users), 0)
    created_day[created_day == 0] = rng.integers(10, 45, int((created_day == 0).sum()))
    users = pl.DataFrame(
        {
            Col.USER_ID: [f"u{i:03d}" for i in range(n_users)],
            Col.COUNTRY: [
                None if rng.random() < 0.1 else str(rng.choice(COUNTRIES)) for _ in range(n_users)
            ],
            Col.MATURITY_MAX: pl.Series(rng.choice([7, 13, 16, 18], n_users), dtype=pl.Int8),
            Col.CREATED_AT: pl.Series(
                [T0 + timedelta(days=float(d)) for d in created_day], dtype=TIMESTAMP
            ),
        }
    )
    # Plays: Zipf-ish title popularity, uniform times after both the member and the title exist.
    pop = 1.0 / np.arange(1, n_titles + 1) ** 0.8
    pop = pop[rng.permutation(n_titles)]
    u = rng.integers(0, n_users, n_plays)
    t = rng.choice(n_titles, n_plays, p=pop / pop.sum())
    start = np.maximum(np.maximum(created_day[u], added_day[t]), 0)
    day = start + rng.random(n_plays) * (DAYS - start)
    # Series viewers go through episodes in order, a few days apart.
    fans = rng.choice(n_users, 25, replace=False)
    eu, et, ed = [], [], []
    for f in fans:
        d0 = max(float(created_day[f]), 0.0) + rng.random() * 20
        for k in range(int(rng.integers(1, n_episodes + 1))):
            eu.append(f)
            et.append(n_movies + k)
            ed.append(min(d0 + 2.5 * k + rng.random(), DAYS - 0.01))
    u = np.r_[u, eu]
    t = np.r_[t, et]
    day = np.r_[day, ed]
    n = len(u)
    progress = np.where(
        rng.random(n) < 0.45, rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.89, n)
    ).astype(np.float32)
    plays = pl.DataFrame(
        {
            Col.USER_ID: [f"u{i:03d}" for i in u],
            Col.TITLE_ID: [f"t{i:03d}" for i in t],
            Col.TS: pl.Series(
                [T0 + timedelta(seconds=round(float(d) * 86_400)) for d in day], dtype=TIMESTAMP
            ),
            Col.DEVICE: [str(d) if rng.random() > 0.05 else None for d in rng.choice(DEVICES, n)],
            Col.SECONDS_WATCHED: pl.Series(progress * 3600.0, dtype=pl.Float32),
            Col.PROGRESS: pl.Series(progress, dtype=pl.Float32),
        }
    )
    return Dataset(titles, users, plays, None, clock=T0 + timedelta(days=DAYS), source="contract")


def with_future(ds: Dataset) -> Dataset:
    """`ds` plus data at or after CUTOFF: a flood of plays of one title right after it, a new
    title and a new member. A ranker fitted as of CUTOFF must not notice any of it."""
    title_id = ds.titles[Col.TITLE_ID][3]
    user_ids = ds.users[Col.USER_ID].to_list()
    n = 400
    future_plays = pl.DataFrame(
        {
            Col.USER_ID: [user_ids[i % len(user_ids)] for i in range(n)],
            Col.TITLE_ID: [title_id] * n,
            Col.TS: pl.Series([CUTOFF + timedelta(minutes=i) for i in range(n)], dtype=TIMESTAMP),
            Col.DEVICE: ["tv"] * n,
            Col.SECONDS_WATCHED: pl.Series([60.0] * n, dtype=pl.Float32),
            Col.PROGRESS: pl.Series([0.5] * n, dtype=pl.Float32),
        }
    )
    new_title = ds.titles.head(1).with_columns(
        pl.lit("t999").alias(Col.TITLE_ID),
        pl.lit(CUTOFF).dt.cast_time_unit("us").alias(Col.ADDED_AT),
    )
    new_user = ds.users.head(1).with_columns(
        pl.lit("u999").alias(Col.USER_ID),
        pl.lit(CUTOFF + timedelta(hours=1)).dt.cast_time_unit("us").alias(Col.CREATED_AT),
    )
    return Dataset(
        pl.concat([ds.titles, new_title]),
        pl.concat([ds.users, new_user]),
        pl.concat([ds.plays, future_plays]),
        None,
        clock=ds.clock + timedelta(days=1),
        source="contract+future",
    )


def empty_history(ds: Dataset) -> History:
    """The catalog and members of `ds` with no plays at all."""
    return History.from_dataset(
        Dataset(ds.titles, ds.users, ds.plays.head(0), None, clock=ds.clock), CUTOFF
    )


def requests(history: History, n: int = 25) -> list[RequestContext]:
    """Requests shortly after the cut-off for a spread of members, devices and an unknown user."""
    ids = history.user_ids[:: max(1, history.n_users // n)][:n].tolist()
    out = [
        RequestContext(str(u), DEVICES[i % len(DEVICES)], CUTOFF + timedelta(hours=1 + i % 5))
        for i, u in enumerate(ids)
    ]
    out.append(RequestContext("nobody-knows-me", "tv", CUTOFF + timedelta(hours=2), "FR"))
    return out


# ----- the checks ------------------------------------------------------------------------------


def _rows_key(rows: list[CandidateRow]) -> list[tuple[Any, ...]]:
    """Everything a row says, comparable with ==."""
    return [
        (
            r.row_id,
            r.ranker,
            r.kind,
            r.title,
            r.titles.tobytes(),
            r.scores.tobytes(),
            None if r.progress is None else r.progress.tobytes(),
        )
        for r in rows
    ]


def check_rows(rows: list[CandidateRow], name: str, cls: type[Any], history: History) -> None:
    """The protocol every proposed row obeys."""
    assert isinstance(rows, list)
    ids = [r.row_id for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate row ids {ids}"
    for r in rows:
        assert isinstance(r, CandidateRow)
        assert r.ranker == name
        assert r.row_id == name or r.row_id.startswith(name + ":"), r.row_id
        assert isinstance(r.kind, str) and r.kind, r.row_id
        assert isinstance(r.title, str) and r.title, r.row_id
        assert r.evidence is None or isinstance(r.evidence, dict)
        assert r.titles.dtype == np.int32 and r.titles.ndim == 1, r.row_id
        assert r.scores.dtype == np.float32 and r.scores.shape == r.titles.shape, r.row_id
        assert len(np.unique(r.titles)) == len(r.titles), f"{r.row_id}: repeated titles"
        assert ((r.titles >= 0) & (r.titles < history.n_titles)).all(), r.row_id
        assert np.isfinite(r.scores).all(), r.row_id
        assert (np.diff(r.scores) <= 0).all(), f"{r.row_id}: scores increase"
        if r.progress is not None:
            assert r.progress.dtype == np.float32 and r.progress.shape == r.titles.shape
            assert ((r.progress >= 0) & (r.progress <= 1)).all(), r.row_id


def check_contract(
    cls: type[Any], config: RankerConfig, ds: Dataset, tmp_path: Path, name: str = "inst"
) -> None:
    """Every contract check for one ranker class and config on the world `ds`."""
    check_ranker_class(cls, f"ranker {cls.__name__}")
    history = History.from_dataset(ds, CUTOFF)
    reqs = requests(history)

    # Before fit: a clear NotFittedError naming the instance.
    fresh = cls(name, config)
    with pytest.raises(NotFittedError, match=f"{name}: call fit\\(\\) first"):
        fresh.propose(reqs[0], history)
    with pytest.raises(NotFittedError, match=f"{name}: call fit\\(\\) first"):
        fresh.save(tmp_path / "never")

    ranker = cls(name, config)
    assert ranker.fit(history) is ranker
    rows_by_request = [ranker.propose(q, history) for q in reqs]
    for rows in rows_by_request:
        check_rows(rows, name, cls, history)
    assert any(rows_by_request), f"{name}: no rows for any of {len(reqs)} requests"

    # Deterministic: a second instance fitted on the same input proposes the same rows.
    again = cls(name, config).fit(history)
    for q, rows in zip(reqs, rows_by_request, strict=True):
        assert _rows_key(again.propose(q, history)) == _rows_key(rows), q

    # No use of data after the cut-off: planted future plays, title and member change nothing.
    leaky = History.from_dataset(with_future(ds), CUTOFF)
    future_fit = cls(name, config).fit(leaky)
    for q, rows in zip(reqs, rows_by_request, strict=True):
        assert _rows_key(future_fit.propose(q, leaky)) == _rows_key(rows), q

    # `uses_device = False` is a promise the engine acts on (it reuses the rows on another
    # device, engine.pipeline.LastProposals): the rows must be the same on every device.
    assert getattr(cls, "uses_device", True) in (True, False)
    if getattr(cls, "uses_device", True) is False:
        for q, rows in zip(reqs, rows_by_request, strict=True):
            for device in DEVICES:
                other_device = RequestContext(q.user_id, device, q.at, q.country)
                assert _rows_key(ranker.propose(other_device, history)) == _rows_key(rows), q

    # Save / load round trip into a fresh instance gives equal rows.
    ranker.save(tmp_path / name)
    loaded = cls(name, config).load(tmp_path / name, history)
    for q, rows in zip(reqs, rows_by_request, strict=True):
        assert _rows_key(loaded.propose(q, history)) == _rows_key(rows), q
    # Loading with a history the state was not fitted on is refused, not silently wrong.
    other = History.from_dataset(ds, CUTOFF - timedelta(days=3))
    with pytest.raises(ModelLoadError):
        cls(name, config).load(tmp_path / name, other)
    with pytest.raises(ModelLoadError):
        cls(name, config).load(tmp_path / "missing", history)

    # Empty history (catalog, members, no plays) and unknown members: rows or nothing, no error.
    empty = empty_history(ds)
    blank = cls(name, config).fit(empty)
    for q in reqs[:5] + reqs[-1:]:
        check_rows(blank.propose(q, empty), name, cls, empty)


# ----- the tests -------------------------------------------------------------------------------

TYPES = sorted(ranker_entry_points())


@pytest.fixture(scope="module")
def world() -> Dataset:
    return make_dataset(seed=7)


def test_every_builtin_type_is_registered() -> None:
    builtin = {
        "pvr",
        "top_n",
        "top_picks",
        "trending",
        "continue_watching",
        "because_you_watched",
        "new_releases",
        "watch_again",
    }
    assert builtin <= set(TYPES)


@pytest.mark.parametrize("type_name", TYPES)
def test_ranker_contract(type_name: str, world: Dataset, tmp_path: Path) -> None:
    cls = ranker_type(type_name)
    assert cls.type_name == type_name
    check_contract(cls, cls.Config(), world, tmp_path, name=f"my_{type_name}")


def test_the_device_check_can_fail(world: Dataset) -> None:
    """Continue Watching's rows do depend on the device (its same-device feature), so it
    must not claim otherwise: a member's rows differ between two devices somewhere."""
    cls = ranker_type("continue_watching")
    assert cls.uses_device is True
    history = History.from_dataset(world, CUTOFF)
    ranker = cls("cw", cls.Config()).fit(history)
    differ = 0
    for q in requests(history, n=60):
        by_device = {
            d: _rows_key(ranker.propose(RequestContext(q.user_id, d, q.at, q.country), history))
            for d in DEVICES
        }
        differ += len({repr(v) for v in by_device.values()}) > 1
    assert differ > 0


def test_cold_start_member_gets_trending_and_new_releases(world: Dataset) -> None:
    history = History.from_dataset(world, CUTOFF)
    q = RequestContext("brand-new", "mobile", CUTOFF + timedelta(hours=3), "US")
    for type_name in ("trending", "new_releases"):
        cls = ranker_type(type_name)
        rows = cls(type_name, cls.Config()).fit(history).propose(q, history)
        assert rows and len(rows[0].titles) > 0, type_name


def test_the_world_has_what_the_contract_needs(world: Dataset) -> None:
    history = History.from_dataset(world, CUTOFF)
    assert 2500 <= len(history.play_ts) <= 3500
    assert (history.series >= 0).sum() == 10
    assert len(np.unique(history.play_device)) == len(DEVICES) + 1  # plus unknown
    assert (history.play_ts < history.cutoff_us).all()
    leaky = History.from_dataset(with_future(world), CUTOFF)
    assert len(leaky.play_ts) == len(history.play_ts)  # the future was planted after the cut
    assert len(with_future(world).plays) == len(world.plays) + 400
