"""`rowrank train --events --impressions`: the log's plays after the dataset's clock join the
training data (a new member becomes a user), the cut-off moves to the newest, the live layer over
the new model does not count them again, and the pages served since are labelled by the plays
that followed them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from conftest import TinyWorld

import engine
from engine.config import EngineConfig
from engine.data.columns import IMPRESSIONS, SCHEMA, Col
from engine.data.dataset import load_dataset
from engine.data.history import US_PER_HOUR
from engine.errors import ConfigError
from engine.events.export import with_events
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
from engine.request.filters import UNKNOWN_USER_MATURITY_MAX
from engine.serving.impression_log import PART_PREFIX, with_impressions
from engine.training.train import summary, train


def _log(world: TinyWorld, state: Path) -> tuple[list[PlayEvent], int]:
    """A log of four plays after the clock (two by a new member), one before it and one of a
    title the dataset does not have; and the clock in microseconds."""
    ds = load_dataset(world.path)
    clock_us = int(ds.clock.timestamp() * 1_000_000)
    member = ds.users[Col.USER_ID][0]
    titles = ds.titles[Col.TITLE_ID].to_list()
    events = [
        PlayEvent("a", member, titles[0], clock_us + US_PER_HOUR, "tv", 600.0, 0.3),
        PlayEvent("b", member, titles[1], clock_us + 2 * US_PER_HOUR, "tv", 5400.0, 1.0),
        PlayEvent("c", "brand-new", titles[2], clock_us + 3 * US_PER_HOUR, "mobile", 60.0, 0.1),
        PlayEvent("d", "brand-new", titles[3], clock_us + 4 * US_PER_HOUR, "mobile", 120.0, 0.2),
        PlayEvent("e", member, titles[4], clock_us - US_PER_HOUR, "tv", 600.0, 0.5),
        PlayEvent("f", member, "no-such-title", clock_us + US_PER_HOUR, "tv", 600.0, 0.5),
    ]
    live = LiveState(state)
    try:
        live.append(events)
    finally:
        live.close()
    return events, clock_us


def _served(world: TinyWorld, directory: Path) -> None:
    """An impression log: two titles shown to a member half an hour after the clock (they play
    the first at +1 h in `_log`), one to a member the data does not know, one before the clock
    and one after the newest play."""
    ds = load_dataset(world.path)
    member = ds.users[Col.USER_ID][0]
    titles = ds.titles[Col.TITLE_ID].to_list()
    half = timedelta(minutes=30)
    rows = [
        ("p1", member, ds.clock + half, titles[0]),
        ("p1", member, ds.clock + half, titles[5]),
        ("p2", "stranger", ds.clock + half, titles[0]),
        ("p3", member, ds.clock - half, titles[0]),
        ("p4", member, ds.clock + timedelta(hours=5), titles[0]),
    ]
    directory.mkdir()
    pl.DataFrame(
        {
            Col.PAGE_ID: [r[0] for r in rows],
            Col.USER_ID: [r[1] for r in rows],
            Col.TS: [r[2] for r in rows],
            Col.DEVICE: ["tv"] * len(rows),
            Col.ROW_INDEX: [0] * len(rows),
            Col.ROW_KIND: ["top_picks"] * len(rows),
            Col.ROW_ID: ["top_picks"] * len(rows),
            Col.POSITION: list(range(len(rows))),
            Col.TITLE_ID: [r[3] for r in rows],
            Col.PLAYED: [False] * len(rows),
        },
        schema={c.name: c.dtype for c in SCHEMA[IMPRESSIONS]},
    ).write_parquet(directory / f"{PART_PREFIX}test.parquet")


def test_served_impressions_are_labelled_by_the_plays_that_followed(
    tiny_world: TinyWorld, tmp_path: Path
) -> None:
    _log(tiny_world, tmp_path / "events")
    _served(tiny_world, tmp_path / "impressions")
    ds = load_dataset(tiny_world.path)
    folded, _ = with_events(ds, tmp_path / "events")
    out, taken = with_impressions(folded, tmp_path / "impressions", since=ds.clock)
    assert (taken.impressions, taken.played, taken.outside) == (2, 1, 3)
    assert out.impressions is not None and ds.impressions is not None
    new = out.impressions.collect().filter(pl.col(Col.PAGE_ID) == "p1").sort(Col.POSITION)
    assert new[Col.PLAYED].to_list() == [True, False]
    assert out.impressions.collect().height == ds.impressions.collect().height + 2


def test_with_events_takes_the_plays_after_the_clock(tiny_world: TinyWorld, tmp_path: Path) -> None:
    _log(tiny_world, tmp_path / "events")
    ds = load_dataset(tiny_world.path)
    folded, took = with_events(ds, tmp_path / "events")
    assert (took.plays, took.new_members, took.before_clock, took.unknown_titles) == (4, 1, 1, 1)
    assert folded.plays.height == ds.plays.height + 4
    assert folded.clock == ds.clock + timedelta(hours=4)
    new = folded.users.filter(pl.col(Col.USER_ID) == "brand-new")
    assert new.height == 1 and new[Col.COUNTRY][0] is None
    assert new[Col.MATURITY_MAX][0] == UNKNOWN_USER_MATURITY_MAX
    assert new[Col.CREATED_AT][0] == ds.clock + timedelta(hours=3)
    # the log is not taken twice: folded again into the folded data, nothing new
    _, again = with_events(folded, tmp_path / "events")
    assert again.plays == 0 and again.before_clock == 6


def test_a_model_trained_with_events_holds_them_once(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tmp_path: Path
) -> None:
    _, clock_us = _log(tiny_world, tmp_path / "events")
    _served(tiny_world, tmp_path / "impressions")
    model = tmp_path / "model"
    manifest = train(
        tiny_world.path,
        model,
        engine_config=tiny_config,
        progress=False,
        events=tmp_path / "events",
        impressions=tmp_path / "impressions",
    )
    assert manifest["data"]["events"]["plays"] == 4
    assert manifest["data"]["impressions"]["impressions"] == 2
    told = summary(manifest)
    assert "4 plays after the dataset's clock taken (1 new members)" in told
    assert "2 served since taken, 1 of them played; 3 left out" in told
    eng = engine.load(model)
    h = eng.history
    assert h.cutoff_us == clock_us + 4 * US_PER_HOUR + 1  # one microsecond past the newest play
    new = h.user_index("brand-new")
    assert new >= 0 and len(h.play_title[h.user_plays(new)]) == 2
    # over the new model, the same log layers nothing: every play is before its cut-off
    live = LiveState(tmp_path / "events")
    eng.live = live
    try:
        country = str(h.user_country[-1])  # a member of the dataset (ids sort before "u...")
        ctx = eng.context("brand-new", "mobile", "2099-01-01T00:00:00Z", country=country)
        assert eng.member_history(ctx) is h
    finally:
        eng.live = None
        live.close()


def test_impressions_without_events_are_refused(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tmp_path: Path
) -> None:
    _served(tiny_world, tmp_path / "impressions")
    with pytest.raises(ConfigError, match="--impressions needs --events"):
        train(
            tiny_world.path,
            tmp_path / "model",
            engine_config=tiny_config,
            progress=False,
            impressions=tmp_path / "impressions",
        )
    assert not (tmp_path / "model").exists()
