"""Feature declarations (order saved and checked) and point-in-time correctness (no leakage)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from conftest import TinyWorld, tiny_engine_config

from engine.columns import Col
from engine.config import build_rankers
from engine.dataset import Dataset, load_dataset
from engine.errors import ModelLoadError
from engine.features import (
    FEATURE_SETS,
    ROW_FEATURES,
    TITLE_FEATURES,
    FeatureStore,
    check_feature_order,
    feature_names,
)
from engine.history import History
from engine.page_model import PageModelConfig
from engine.train import build_window, row_kinds, window_bounds, window_config


def test_declarations_are_unique_and_typed() -> None:
    for model, feats in FEATURE_SETS.items():
        names = [f.name for f in feats]
        assert len(names) == len(set(names)), f"{model}: a feature is declared twice"
        for f in feats:
            assert f.dtype in ("float", "int", "category")
            assert f.scope in (
                "context",
                "user",
                "title",
                "context_title",
                "user_title",
                "row",
                "placement",
            )
    # Context x title interactions need context and title features in the same model.
    title_scopes = {f.scope for f in TITLE_FEATURES}
    assert {"context", "title", "context_title", "user_title", "row"} <= title_scopes
    assert {f.name for f in ROW_FEATURES if f.scope == "placement"} == {
        "pl_overlap_above",
        "pl_genre_sim_above",
        "pl_same_kind_above",
    }


def test_ablation_removes_exactly_the_context_features() -> None:
    full, ablated = feature_names("title"), feature_names("title", context=False)
    removed = set(full) - set(ablated)
    assert {"ctx_device", "ctx_hour", "ct_genre_daypart_lift", "user_device_share"} <= removed
    assert "title_duration_min" in ablated and "ut_pvr_score" in ablated
    # Order is kept: the ablated list is a subsequence of the full one.
    assert [n for n in full if n in ablated] == ablated


def test_saved_order_is_the_declared_order_and_is_checked(tiny_model: Path) -> None:
    manifest = orjson.loads((tiny_model / "manifest.json").read_bytes())
    # Logged impressions + position_bias = "feature": the training-only position comes last.
    assert manifest["features"]["title"] == feature_names("title", position=True)
    assert manifest["features"]["row"] == feature_names("row", position=True)
    assert manifest["features"]["title"][-2:] == ["pos_col", "pos_row"]
    saved = list(manifest["features"]["title"])
    check_feature_order("title", saved, context=True, where="x")  # no error
    swapped = saved.copy()
    swapped[3], swapped[4] = swapped[4], swapped[3]
    expected = r"position 3 holds 'user_log_plays', expected 'ctx_country'.*retrain"
    with pytest.raises(ModelLoadError, match=expected):
        check_feature_order("title", swapped, context=True, where="x")
    with pytest.raises(ModelLoadError, match=r"missing \['ctx_device'\]"):
        check_feature_order("title", saved[1:], context=True, where="x")


def test_store_save_load_round_trip(tiny_world: TinyWorld, tmp_path: Path) -> None:
    ds = load_dataset(tiny_world.path)
    h = History.from_dataset(ds)
    store = FeatureStore.fit(h, ds.impressions, rankers=["a", "b"], kinds=["top_n", "trending"])
    store.save(tmp_path)
    back = FeatureStore.load(tmp_path, h)
    for name in FeatureStore._SAVED:
        np.testing.assert_array_equal(getattr(store, name), getattr(back, name), err_msg=name)
    assert (back.kinds, back.rankers, back.countries) == (
        store.kinds,
        store.rankers,
        store.countries,
    )
    other = History.from_dataset(ds, ds.clock - timedelta(days=3))
    with pytest.raises(ModelLoadError, match="mixed up"):
        FeatureStore.load(tmp_path, other)


# ----- point in time ---------------------------------------------------------------------------


def _window(ds: Dataset, bounds: list[datetime], k: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = tiny_engine_config(max_pages_per_window=300)
    page_cfg = PageModelConfig.from_section(cfg.page)
    kinds = row_kinds(cfg, build_rankers(cfg), ds)
    w = build_window(
        ds, window_config(cfg, page_cfg), page_cfg, kinds, bounds[k], bounds[k + 1], index=k
    )
    assert w is not None
    return w.title_x, w.label


def _bounds(ds: Dataset) -> list[datetime]:
    return window_bounds(ds, ds.clock, PageModelConfig.from_section(tiny_engine_config().page))


def _plant_after(ds: Dataset, t0: object, rng: np.random.Generator) -> Dataset:
    """The same dataset with the future rewritten: every play at or after t0 gets another
    progress and time-shift, hundreds of extra plays of a few titles appear after t0."""
    lit = pl.lit(t0).dt.cast_time_unit("us")
    after = pl.col(Col.TS) >= lit
    progress, seconds = pl.col(Col.PROGRESS), pl.col(Col.SECONDS_WATCHED)
    plays = ds.plays.with_columns(
        pl.when(after).then(1.0 - progress).otherwise(progress).alias(Col.PROGRESS),
        pl.when(after).then(seconds * 3).otherwise(seconds).alias(Col.SECONDS_WATCHED),
    )
    later = plays.filter(after)
    users = ds.users[Col.USER_ID].to_numpy()
    titles = ds.titles[Col.TITLE_ID].to_numpy()[:5]
    n = 600
    extra = later.sample(n, with_replacement=True, seed=1).with_columns(
        pl.Series(Col.USER_ID, rng.choice(users, n)),
        pl.Series(Col.TITLE_ID, rng.choice(titles, n)),
        pl.col(Col.PROGRESS).clip(0.0, 1.0),
    )
    return replace(ds, plays=pl.concat([plays, extra]).sort(Col.USER_ID, Col.TS))


def test_features_of_a_window_ignore_everything_after_its_start(tiny_world: TinyWorld) -> None:
    ds = load_dataset(tiny_world.path)
    bounds = _bounds(ds)  # the same windows for both datasets
    t0 = bounds[1]
    x, y = _window(ds, bounds, 1)
    planted = _plant_after(ds, t0, np.random.default_rng(0))
    x2, y2 = _window(planted, bounds, 1)
    # Same examples, same features to the bit; the labels (what happened after t0) may move.
    np.testing.assert_array_equal(x, x2)
    assert len(y) == len(y2)


def test_the_leakage_check_can_fail(tiny_world: TinyWorld) -> None:
    """Control: the same planting moved *before* the window start does change features."""
    ds = load_dataset(tiny_world.path)
    bounds = _bounds(ds)
    t0 = bounds[1]
    x, _ = _window(ds, bounds, 1)
    planted = _plant_after(ds, t0 - timedelta(days=3), np.random.default_rng(0))
    x2, _ = _window(planted, bounds, 1)
    assert x.shape == x2.shape
    assert not np.array_equal(x, x2, equal_nan=True)
