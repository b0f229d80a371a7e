"""Feature declarations (order saved and checked) and point-in-time correctness (no leakage)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
from conftest import TinyWorld, tiny_engine_config

import engine
from engine.config import build_rankers
from engine.data.columns import DEVICES, Col
from engine.data.dataset import Dataset, load_dataset
from engine.data.history import History
from engine.errors import ModelLoadError
from engine.pipeline import request_arrays
from engine.request.context import RequestContext
from engine.request.feature_fit import fit_feature_store
from engine.request.features import (
    _ROW_AGG_SOURCES,
    CONTEXT_FEATURES,
    FEATURE_SETS,
    ROW_FEATURES,
    TITLE_FEATURES,
    USER_FEATURES,
    FeatureStore,
    Requests,
    check_feature_order,
    feature_names,
)
from engine.request.scorers import PageModelConfig
from engine.training.train import WindowData, build_window, row_kinds, window_bounds, window_config


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
    store = fit_feature_store(h, ds.impressions, rankers=["a", "b"], kinds=["top_n", "trending"])
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


def _window_data(ds: Dataset, bounds: list[datetime], k: int) -> WindowData:
    cfg = tiny_engine_config(max_pages_per_window=300)
    page_cfg = PageModelConfig.from_section(cfg.page)
    kinds = row_kinds(cfg, build_rankers(cfg), ds)
    w = build_window(
        ds, window_config(cfg, page_cfg), page_cfg, kinds, bounds[k], bounds[k + 1], index=k
    )
    assert w is not None
    return w


def _window(ds: Dataset, bounds: list[datetime], k: int) -> tuple[np.ndarray, np.ndarray]:
    w = _window_data(ds, bounds, k)
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


# ----- the row matrix's compiled pass ---------------------------------------------------------


def _row_static_numpy(
    store: FeatureStore,
    req: Requests,
    row_req: np.ndarray,
    row_kind: np.ndarray,
    row_ranker: np.ndarray,
    row_len: np.ndarray,
    row_top_score: np.ndarray,
    title_x: np.ndarray,
    title_scores: np.ndarray,
    vis: np.ndarray,
    owner: np.ndarray,
) -> np.ndarray:
    """FeatureStore.row_static as first written, in numpy: the formulas the models were
    trained with, which the compiled pass must give to the bit."""
    n_rows = len(row_req)
    X = np.full((n_rows, len(ROW_FEATURES)), np.nan, dtype=np.float32)
    col = {f.name: i for i, f in enumerate(ROW_FEATURES)}
    tcol = {f.name: i for i, f in enumerate(TITLE_FEATURES)}

    def rate(counts: np.ndarray, prior: np.ndarray | float) -> np.ndarray:
        shown, hits = counts[..., 0].astype(np.float64), counts[..., 1].astype(np.float64)
        return (hits + 20.0 * np.asarray(prior, dtype=np.float64)) / (shown + 20.0)

    def segment_mean(values: np.ndarray) -> np.ndarray:
        v = values.astype(np.float64)
        ok = ~np.isnan(v)
        s = np.bincount(owner[ok], weights=v[ok], minlength=n_rows)
        c = np.bincount(owner[ok], minlength=n_rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(s / c)

    first = np.full(n_rows, -1, dtype=np.int64)
    first[owner[::-1]] = vis[::-1]
    has = first >= 0
    for f in (*CONTEXT_FEATURES, *USER_FEATURES):
        X[has, col[f.name]] = title_x[first[has], tcol[f.name]]
    X[~has, col["ctx_device"]] = req.device[row_req[~has]]
    X[~has, col["ctx_hour"]] = req.hour[row_req[~has]]
    X[~has, col["ctx_weekend"]] = req.weekend[row_req[~has]]
    X[~has, col["ctx_country"]] = req.country[row_req[~has]]
    X[:, col["row_kind"]] = row_kind
    X[:, col["row_ranker"]] = row_ranker
    X[:, col["row_len"]] = row_len
    X[:, col["row_top_score"]] = row_top_score
    scores = title_scores[vis].astype(np.float64)
    top = np.full(n_rows, -np.inf)
    with np.errstate(invalid="ignore"):  # NaN scores (the harder cases) make the max NaN
        np.maximum.at(top, owner, scores)
    top[np.isinf(top)] = np.nan
    X[:, col["rs_top"]] = top
    X[:, col["rs_mean_visible"]] = segment_mean(scores)
    est = np.zeros(n_rows)
    if len(scores):
        p = 1.0 / (1.0 + np.exp(-np.clip(scores, -30, 30)))
        starts = np.searchsorted(owner, np.arange(n_rows))
        c = np.arange(len(owner)) - starts[owner]
        width = int(c.max()) + 1
        P = np.zeros((n_rows, width))
        P[owner, c] = p
        survive = np.cumprod(np.concatenate([np.ones((n_rows, 1)), 1.0 - P[:, :-1]], axis=1), 1)
        device = req.device[row_req].astype(np.int64)
        est = (survive * store.col_decay[device][:, None] ** np.arange(width) * P).sum(axis=1)
    X[:, col["rs_play_est"]] = est
    for name, src in _ROW_AGG_SOURCES:
        X[:, col[name]] = segment_mean(title_x[vis, tcol[src]])
    u = req.user[row_req].astype(np.int64)
    k = row_kind.astype(np.int64)
    uk, kk, ok = np.where(u >= 0, u, 0), np.where(k >= 0, k, 0), (u >= 0) & (k >= 0)
    d = req.device[row_req].astype(np.int64)
    dp = req.hour[row_req].astype(np.int64) // 4
    base_dev = rate(store.kind_device[kk, d], 0.0)
    base_dp = rate(store.kind_daypart[kk, dp], 0.0)
    base_kind = rate(store.kind_device[kk].sum(axis=1), 0.0)
    uk_all = store.user_kind[uk, kk]
    X[:, col["re_user_kind_shown"]] = np.where(ok, np.log1p(uk_all[:, 0]), 0.0)
    X[:, col["re_user_kind_rate"]] = np.where(ok, rate(uk_all, base_kind), base_kind)
    X[:, col["re_user_kind_device_rate"]] = np.where(
        ok, rate(store.user_kind_device[uk, kk, d], base_dev), base_dev
    )
    X[:, col["re_user_kind_daypart_rate"]] = np.where(
        ok, rate(store.user_kind_daypart[uk, kk, dp], base_dp), base_dp
    )
    X[:, col["re_kind_device_rate"]] = base_dev
    X[:, col["re_kind_daypart_rate"]] = base_dp
    cats = [i for i, f in enumerate(ROW_FEATURES) if f.dtype == "category"]
    sub = X[:, cats]
    sub[sub < 0] = np.nan
    X[:, cats] = sub
    rates = ["re_user_kind_rate", "re_user_kind_device_rate", "re_user_kind_daypart_rate"]
    for name in (*rates, "re_kind_device_rate", "re_kind_daypart_rate"):
        X[k < 0, col[name]] = np.nan
    return X


def _odd_rows(call: tuple[Any, ...], rng: np.random.Generator) -> tuple[Any, ...]:
    """A captured row_static call made harder: an unknown member, an unknown row kind, NaN
    title scores and NaN aggregated title columns, and a row left with no visible pair."""
    req, row_req, kind, ranker, length, top, title_x, scores, vis, owner = call
    req = replace(req, user=np.where(np.arange(len(req.user)) % 2 == 0, -1, req.user))
    kind = np.where(rng.random(len(kind)) < 0.3, -1, kind)
    scores = np.where(rng.random(len(scores)) < 0.1, np.nan, scores)
    title_x = title_x.copy()
    title_x[rng.random(len(title_x)) < 0.3, feature_names("title").index("ut_pvr_score")] = np.nan
    keep = owner != owner[len(owner) // 2]
    return req, row_req, kind, ranker, length, top, title_x, scores, vis[keep], owner[keep]


def test_the_compiled_row_matrix_equals_the_numpy_formulas(
    tiny_world: TinyWorld, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FeatureStore.row_static (one compiled pass) gives the numpy formulas' matrix on served
    pages, on a training window's logged rows, on rebuilt rows, and on harder variants of each
    (unknown members and kinds, NaN scores and values, a row with nothing visible)."""
    calls: list[tuple[FeatureStore, tuple[Any, ...]]] = []
    compiled = FeatureStore.row_static

    def spy(store: FeatureStore, *args: Any) -> np.ndarray:
        calls.append((store, args))
        return compiled(store, *args)

    monkeypatch.setattr(FeatureStore, "row_static", spy)
    eng = engine.load(tiny_model)
    at = datetime.fromtimestamp(eng.history.cutoff_us / 1e6, UTC)
    # The unknown member names a country: without one the engine refuses the page.
    for user in [*(str(u) for u in eng.history.user_ids[:5]), "someone-new"]:
        country = eng.store.countries[0] if user == "someone-new" else None
        for device in DEVICES:
            for hours in (2, 13):
                eng.page(user, device, at=at + timedelta(hours=hours), country=country)
    ds = load_dataset(tiny_world.path)
    w = _window_data(ds, _bounds(ds), 1)
    scores = np.random.default_rng(1).normal(size=len(w.label))
    w.row_data(scores)  # logged: the rows as the log shows them
    replace(w, logged=False).row_data(scores)  # rebuilt: each row's best titles by score
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    cases = [*calls, *((store, _odd_rows(args, rng)) for store, args in calls)]
    for store, args in cases:
        got = store.row_static(*args)
        np.testing.assert_array_equal(got, _row_static_numpy(store, *args))
    assert sum(store is eng.store for store, _ in calls) >= 24  # pages
    assert sum(store is not eng.store for store, _ in calls) == 2  # the window's two
    assert any(len(np.unique(a[-1])) < len(a[1]) for _, a in cases)  # a row with nothing shown


def test_a_windows_row_examples_read_the_same_from_its_slim_store(tiny_model: Path) -> None:
    """FeatureStore.for_row_examples keeps only what row_static reads, for the requests' own
    members (renumbered): the row matrix is the same bits, unknown members included, and the
    rest of the store is gone."""
    eng = engine.load(tiny_model)
    store, h = eng.store, eng.history
    at = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC)
    ctxs = [
        RequestContext(str(u), device, at + timedelta(hours=hours))
        for u in h.user_ids[[3, 1, 3, 4]].tolist()
        for device, hours in (("tv", 2), ("mobile", 13))
    ]
    ctxs.append(RequestContext("someone-new", "tv", at, country=store.countries[0]))
    req = request_arrays(store, h, ctxs)
    rng = np.random.default_rng(0)
    n_rows, width = 40, 6
    row_req = rng.integers(0, len(ctxs), n_rows)
    kind = rng.integers(0, len(store.kinds), n_rows)
    owner = np.repeat(np.arange(n_rows), width)
    title_x = rng.normal(size=(n_rows * width, len(feature_names("title")))).astype(np.float32)
    args = (
        row_req,
        kind,
        rng.integers(0, len(store.rankers), n_rows),
        rng.integers(1, 40, n_rows).astype(np.float64),
        rng.normal(size=n_rows),
        title_x,
        rng.normal(size=n_rows * width),
        np.arange(n_rows * width),
        owner,
    )
    slim, slim_req, members = store.for_row_examples(req)
    np.testing.assert_array_equal(slim.row_static(slim_req, *args), store.row_static(req, *args))
    assert members.tolist() == [0, 1, 3, 4]  # member 0 is always kept
    assert (members[slim_req.user[:-1]] == req.user[:-1]).all()
    assert slim_req.user[-1] == -1 and slim.shown_keys.size == 0 and slim.user_genre.size == 0
