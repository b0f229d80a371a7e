"""The temporal split (engine/evaluation/split.py): nothing after the cut reaches the training
side, and
validation windows never reach into the test period."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
from conftest import TinyWorld

import engine.evaluation.split as splits  # not `from`: pytest would collect engine's test_split
from engine.data.columns import Col
from engine.data.dataset import load_dataset
from engine.data.history import to_us
from engine.evaluation.split import (
    Split,
    make_split,
    quantile_cut,
    rolling_splits,
    validation_splits,
)


def test_the_test_split_trains_before_the_cut_and_finds_new_titles(tiny_world: TinyWorld) -> None:
    ds = load_dataset(tiny_world.path)
    split = splits.test_split(ds, 0.1)
    cut_us = to_us(split.cutoff)
    h = split.history
    assert len(h.play_user) > 0
    assert int(h.play_ts.max()) < cut_us  # no play at or after the cut
    # About 10% of all plays fall at or after the cut.
    after = (ds.plays[Col.TS].dt.epoch("us").to_numpy() >= cut_us).mean()
    assert 0.08 <= after <= 0.12
    assert len(split.users) > 0 and len(split.users) == len(split.truth)
    later = ds.plays.filter(pl.col(Col.TS) >= pl.lit(split.cutoff).dt.cast_time_unit("us"))
    for u, truth in zip(split.users.tolist(), split.truth, strict=True):
        played_before = set(h.play_title[h.user_plays(u)].tolist())
        assert played_before  # a test user has plays on both sides
        assert not played_before & set(truth.tolist())  # truth = titles new to the member
        theirs = later.filter(pl.col(Col.USER_ID) == str(h.user_ids[u]))
        assert set(h.title_ids[truth].tolist()) <= set(theirs[Col.TITLE_ID].to_list())


def _assert_rolling(split_list: list[Split], plays: pl.DataFrame, end: datetime) -> None:
    """Cuts latest first, each History before its own cut, each ground truth inside its own
    window [cut, next later cut) (the latest's ends at `end`)."""
    cuts = [v.cutoff for v in split_list]
    assert cuts == sorted(cuts, reverse=True) and cuts[0] < end
    ends = [end, *cuts[:-1]]
    for v, v_end in zip(split_list, ends, strict=True):
        assert int(v.history.play_ts.max()) < to_us(v.cutoff)
        window = plays.filter(
            (pl.col(Col.TS) >= pl.lit(v.cutoff).dt.cast_time_unit("us"))
            & (pl.col(Col.TS) < pl.lit(v_end).dt.cast_time_unit("us"))
        )
        h = v.history
        assert len(v.users) > 0
        for u, truth in zip(v.users.tolist(), v.truth, strict=True):
            theirs = window.filter(pl.col(Col.USER_ID) == str(h.user_ids[u]))
            assert set(h.title_ids[truth].tolist()) <= set(theirs[Col.TITLE_ID].to_list())


def test_validation_windows_end_before_the_test_cut(tiny_world: TinyWorld) -> None:
    ds = load_dataset(tiny_world.path)
    test_cut = quantile_cut(ds.plays, 0.1)
    vals = validation_splits(ds, test_cut, (0.1, 0.2, 0.3))
    assert [v.name for v in vals] == ["val1", "val2", "val3"]
    _assert_rolling(vals, ds.plays, test_cut)


def test_rolling_test_windows_do_not_overlap(tiny_world: TinyWorld) -> None:
    ds = load_dataset(tiny_world.path)
    tests = rolling_splits(ds, (0.2, 0.1))
    assert [t.name for t in tests] == ["test1", "test2"]
    # The latest cut is test_split's, with the same members and ground truth.
    single = splits.test_split(ds, 0.1)
    assert tests[0].cutoff == single.cutoff
    assert tests[0].users.tolist() == single.users.tolist()
    end = datetime.fromtimestamp(int(ds.plays[Col.TS].dt.epoch("us").max()) / 1e6 + 1, tz=UTC)
    _assert_rolling(tests, ds.plays, end)


def test_a_split_at_a_given_time_is_that_time(tiny_world: TinyWorld) -> None:
    ds = load_dataset(tiny_world.path)
    ts = np.sort(ds.plays[Col.TS].dt.epoch("us").to_numpy())
    cut = datetime.fromtimestamp(int(ts[len(ts) // 2]) / 1e6, tz=UTC)
    split = make_split(ds, cut, name="mid")
    assert split.name == "mid" and split.cutoff == cut
    assert len(split.history.play_user) == int((ts < to_us(cut)).sum())
