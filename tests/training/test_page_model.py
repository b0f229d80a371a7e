"""The two LightGBM page models: training writes them, loading checks them, they beat random."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import orjson
import pytest
from conftest import TinyWorld, tiny_engine_config

import engine
from engine.data.dataset import load_dataset, save_dataset
from engine.errors import ConfigError, ModelLoadError
from engine.request.features import categorical_names, feature_names
from engine.request.scorers import (
    Forest,
    PageModelConfig,
    RankData,
    fit_ranker,
    ndcg_at,
)
from engine.training.train import held_out_window, row_kinds, train


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_training_writes_both_models_and_a_manifest(tiny_model: Path) -> None:
    manifest = orjson.loads((tiny_model / "manifest.json").read_bytes())
    for name in ("title_model.txt", "row_model.txt", "config.json", "history/history.npz"):
        assert name in manifest["files"], name
    assert any(f.startswith("rankers/top_picks/") for f in manifest["files"])
    # what Top Picks learned inside its fit is reported (and printed by `rowrank train`)
    assert manifest["rankers_learned"]["top_picks"]["groups"] > 0
    assert manifest["rowrank_version"] == engine.__version__
    assert len(manifest["model_version"]) == 12
    assert len(manifest["data"]["fingerprint"]) == 64
    for model in ("title", "row"):
        booster = lgb.Booster(model_file=str(tiny_model / f"{model}_model.txt"))
        assert booster.feature_name() == feature_names(model, position=True)
        assert booster.num_trees() >= 10


def test_models_beat_random_order_on_the_held_out_window(tiny_model: Path) -> None:
    m = orjson.loads((tiny_model / "manifest.json").read_bytes())["metrics"]
    for model in ("title", "row"):
        rep = m[model]
        assert rep["valid_groups_with_positive"] >= 50, model
        assert rep["valid_ndcg_at_10"] > rep["random_ndcg_at_10"] + 0.02, (model, rep)


def test_wrong_feature_order_fails_loudly(tiny_model: Path, tmp_path: Path) -> None:
    d = _copy(tiny_model, tmp_path / "m")
    manifest = orjson.loads((d / "manifest.json").read_bytes())
    order = manifest["features"]["title"]
    order[0], order[1] = order[1], order[0]
    (d / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"title_model.txt.*different feature order"):
        engine.load(d)


def test_a_booster_trained_on_other_features_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """The Booster's own feature names are checked too (the manifest could be right while the
    model file is from elsewhere); checksums are re-written so only the order check can fire."""
    d = _copy(tiny_model, tmp_path / "m")
    text = (d / "row_model.txt").read_text()
    names = feature_names("row", position=True)
    swapped = text.replace(
        "feature_names=" + " ".join(names),
        "feature_names=" + " ".join([names[1], names[0], *names[2:]]),
    )
    assert swapped != text
    (d / "row_model.txt").write_text(swapped)
    from engine.training.model_dir import sha256_file

    manifest = orjson.loads((d / "manifest.json").read_bytes())
    manifest["files"]["row_model.txt"] = sha256_file(d / "row_model.txt")
    (d / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"row_model\.txt.*position 0"):
        engine.load(d)


def test_tampered_file_or_other_version_fails(tiny_model: Path, tmp_path: Path) -> None:
    d = _copy(tiny_model, tmp_path / "m")
    with (d / "title_model.txt").open("a") as f:
        f.write("\n")
    with pytest.raises(ModelLoadError, match=r"title_model\.txt does not match its sha256"):
        engine.load(d)
    d2 = _copy(tiny_model, tmp_path / "m2")
    manifest = orjson.loads((d2 / "manifest.json").read_bytes())
    manifest["rowrank_version"] = "0.0.1"
    (d2 / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"written by rowrank 0\.0\.1"):
        engine.load(d2)
    with pytest.raises(ModelLoadError, match="not a rowrank model directory"):
        engine.load(tmp_path)


def test_page_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key 'title_tress'"):
        PageModelConfig.from_section({"title_tress": 10})
    with pytest.raises(ConfigError, match="windows"):
        PageModelConfig.from_section({"windows": 1})


def _synthetic(rng: np.random.Generator, n_groups: int) -> RankData:
    """Rows of 8 titles whose label depends on two features (and on nothing else)."""
    n_feat = len(feature_names("title"))
    size = 8
    X = rng.normal(size=(n_groups * size, n_feat)).astype(np.float32)
    names = feature_names("title")
    for c in categorical_names("title"):  # valid category codes
        X[:, names.index(c)] = 0.0
    util = X[:, 20] + 0.5 * X[:, 30] + rng.normal(scale=0.5, size=len(X))
    y = (util > 1.0).astype(np.int8) + (util > 2.0)
    return RankData(X, y, np.full(n_groups, size), None)


def test_fit_is_deterministic_and_learns() -> None:
    cfg = PageModelConfig(
        title_trees=20,
        title_leaves=7,
        train_threads=1,
        min_data_in_leaf=10,
        title_objective="lambdarank",
    )
    train = _synthetic(np.random.default_rng(0), 300)
    valid = _synthetic(np.random.default_rng(1), 200)
    a, m = fit_ranker("title", cfg, train, valid)
    b, _ = fit_ranker("title", cfg, train, valid)
    assert a.model_to_string() == b.model_to_string()
    cols = list(range(len(feature_names("title"))))
    s = a.predict(valid.X[:, cols], num_threads=1)
    rand = np.random.default_rng(2).random(len(s))
    assert ndcg_at(s, valid.y, valid.group, 5) > ndcg_at(rand, valid.y, valid.group, 5) + 0.1
    assert m["valid_ndcg_at_10"] > 0.5


def test_training_without_impressions_rebuilds_pages(tiny_world: TinyWorld, tmp_path: Path) -> None:
    """MovieLens has no impression log: pages are rebuilt at past times and labelled by what
    the member played next; no position feature (nothing was shown)."""
    ds = load_dataset(tiny_world.path)
    save_dataset(replace(ds, impressions=None), tmp_path / "data")
    cfg = tiny_engine_config(rebuilt_pages_per_window=150)
    manifest = train(tmp_path / "data", tmp_path / "model", engine_config=cfg, progress=False)
    assert manifest["features"]["title"] == feature_names("title")
    assert manifest["metrics"]["title"]["valid_groups_with_positive"] > 0
    assert "logged_order_ndcg_at_10" not in manifest["metrics"]["title"]
    eng = engine.load(tmp_path / "model")
    member = str(eng.history.user_ids[0])
    page = eng.page(member, "tv", "2025-02-04T20:00:00", country=eng.store.countries[0])
    assert page.rows and not page.fallback


def test_members_window_asks_each_member_just_after_their_kept_plays(
    tiny_world: TinyWorld,
) -> None:
    """A members window k: every member's last k x n plays are unknown to its rankers and
    features; the page is requested just after the last kept play and labelled by the next n."""
    from engine.config import build_rankers
    from engine.data.history import History, drop_last_plays
    from engine.request.scorers import PageModelConfig

    ds = replace(load_dataset(tiny_world.path), impressions=None)
    history = History.from_dataset(ds)
    cfg = tiny_engine_config()
    page_cfg = PageModelConfig(window_holdout_plays=3, rebuilt_pages_per_window=10_000)
    kinds = row_kinds(cfg, build_rankers(cfg), ds)
    w = held_out_window(ds, cfg, page_cfg, kinds, history, 2)
    assert w is not None and not w.logged
    kept, dropped = drop_last_plays(history, 6)
    _, later = drop_last_plays(history, 3)
    label_plays = dropped & ~later
    asked = w.members[w.reqs.user].tolist()
    assert len(asked) == len(set(asked)) > 50  # one page per member
    for u, at in zip(asked, w.reqs.at_us.tolist(), strict=True):
        s, k = history.user_plays(u), kept.user_plays(u)
        assert k.stop - k.start == s.stop - s.start - 6 >= 3
        assert at == kept.play_ts[k.stop - 1] + 1
        assert label_plays[s].sum() == 3
        assert (history.play_ts[s][label_plays[s]] >= at - 1).all()
    assert (w.label > 0).any()


def test_compiled_trees_equal_booster_predict(tiny_model: Path) -> None:
    """The serving path's compiled trees give Booster.predict's raw scores bit for bit, for
    both models: missing values, zeros, values LightGBM rounds to zero, category codes that
    are negative, fractional, unseen or past any int, and single-leaf trees included."""
    model = engine.load(tiny_model).model
    rng = np.random.default_rng(5)
    for booster in (model.title, model.row):
        trees = Forest(booster.model_to_string())
        assert trees.n_trees == booster.num_trees()
        X = rng.normal(size=(2000, booster.num_feature())).astype(np.float32)
        for value, share in ((np.nan, 0.1), (0.0, 0.1), (1e-40, 0.05), (-0.5, 0.05)):
            X[rng.random(X.shape) < share] = value
        codes = rng.random(X.shape) < 0.3
        X[codes] = rng.integers(-2, 70, codes.sum())
        X[:5], X[5:10] = 1e30, -1e30
        want = booster.predict(X, num_threads=1, raw_score=True)
        got = trees.raw(X)
        assert got.dtype == np.float64
        assert np.array_equal(got, want)
        assert len(trees.raw(X[:0])) == 0
        # a non-contiguous float64 view is converted, not misread
        wide = np.repeat(X.astype(np.float64), 2, axis=1)[:, ::2]
        assert np.array_equal(trees.raw(wide), want)
    # the served scores are the Booster's with the position features at the first slot (0)
    X = rng.normal(size=(50, len(feature_names("title")))).astype(np.float32)
    positions = np.zeros((50, model.title.num_feature() - X.shape[1]), dtype=np.float32)
    want = model.title.predict(np.column_stack([X, positions]), raw_score=True)
    assert positions.shape[1] == 2 and np.array_equal(model.score_titles(X), want)


def test_compiled_trees_of_a_single_leaf_and_categorical_model() -> None:
    """A model with a one-leaf tree and categorical splits over a wide code range."""
    rng = np.random.default_rng(9)
    X = np.column_stack([rng.integers(0, 90, 3000), rng.normal(size=3000)]).astype(np.float32)
    y = ((X[:, 0] % 7 < 3) ^ (X[:, 1] > 0.2)).astype(np.float64)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 15, "min_data_per_group": 5}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0]), num_boost_round=20)
    flat = lgb.train(params | {"min_data_in_leaf": 5000}, lgb.Dataset(X, y), num_boost_round=2)
    for b in (booster, flat):
        X[:20, 0] = np.array([np.nan, -1, -0.5, 0.5, 89.9, 90, 200, 1e12, 2**31, -(2**31)] * 2)
        trees = Forest(b.model_to_string())
        assert np.array_equal(trees.raw(X), b.predict(X, raw_score=True))
    cats = re.findall(r"\nnum_cat=(\d+)", booster.model_to_string())
    assert any(int(n) > 0 for n in cats)  # categorical splits were exercised
    assert "num_leaves=1\n" in flat.model_to_string()  # and single-leaf trees


def test_members_without_a_country_train_in_the_default_country(
    tiny_world: TinyWorld, tmp_path: Path
) -> None:
    """Titles licensed per country, members with none: training replays their pages in
    `[serving] default_country`, as serving answers them (without it no window has a page)."""
    import polars as pl

    ds = load_dataset(tiny_world.path)
    users = ds.users.with_columns(pl.lit(None, dtype=pl.String).alias("country"))
    save_dataset(replace(ds, users=users, impressions=None), tmp_path / "data")
    doc = tiny_engine_config(rebuilt_pages_per_window=150).to_document()
    doc["serving"] = {**doc.get("serving", {}), "default_country": eng_country(ds)}
    from engine.config import parse_config

    manifest = train(tmp_path / "data", tmp_path / "m", engine_config=parse_config(doc))
    assert manifest["metrics"]["title"]["valid_groups_with_positive"] > 0
    page = engine.load(tmp_path / "m").page(str(ds.users["user_id"][0]), "tv")
    assert page.context.country == eng_country(ds) and page.rows


def eng_country(ds: object) -> str:
    """A country some titles are licensed in."""
    titles = ds.titles  # type: ignore[attr-defined]
    return str(titles["countries"].explode().drop_nulls().mode().sort()[0])


def test_rebuilt_rows_below_a_pinned_row_are_judged_without_its_titles(
    tiny_world: TinyWorld,
) -> None:
    """On a rebuilt page the pinned row (Top Picks in the built-in config) goes first and
    dedupe takes its visible titles from every other row, as the served assembly does: the
    row model's examples see each row as it would show below the pin, never a title the pin
    already shows."""
    from engine.config import build_rankers
    from engine.data.history import History

    ds = replace(load_dataset(tiny_world.path), impressions=None)
    history = History.from_dataset(ds)
    cfg = tiny_engine_config()
    assert list(cfg.assembly.pinned) == ["top_picks"]
    page_cfg = PageModelConfig(window_holdout_plays=3, rebuilt_pages_per_window=10_000)
    kinds = row_kinds(cfg, build_rankers(cfg), ds)
    w = held_out_window(ds, cfg, page_cfg, kinds, history, 1)
    assert w is not None and w.row_pinned is not None and w.pair_title is not None
    # Top Picks, and Continue Watching above it for a member in the middle of something
    tp, cw = w.store.kind_code("top_picks"), w.store.kind_code("continue_watching")
    assert (w.row_req[w.row_pinned & (w.row_kind == tp)] == np.arange(len(w.page_size))).all()
    assert np.isin(w.row_kind[w.row_pinned], [tp, cw]).all()
    assert (w.row_pinned & (w.row_kind == cw)).any()
    scores = np.random.default_rng(0).normal(size=len(w.label))
    starts = np.cumsum(w.row_size) - w.row_size
    full = [
        s + np.lexsort((np.arange(n), -scores[s : s + n]))
        for s, n in zip(starts, w.row_size, strict=True)
    ]
    deduped = w.deduped_below_pins(full)
    removed = 0
    for i, (before, after) in enumerate(zip(full, deduped, strict=True)):
        page = w.row_req[i]
        pins = np.flatnonzero(w.row_pinned & (w.row_req == page))
        if w.row_pinned[i]:
            np.testing.assert_array_equal(after, before)
            continue
        shown = np.concatenate([w.pair_title[full[p][: w.row_visible[p]]] for p in pins])
        assert not np.isin(w.pair_title[after], shown).any()
        # the rest keep their order
        np.testing.assert_array_equal(after, before[~np.isin(w.pair_title[before], shown)])
        removed += len(before) - len(after)
    assert removed > 0
    # each row is labelled by its best grade among what it shows below the pin, which is not
    # what it would show on top
    y_pin = w.row_data(scores).y
    want = [w.label[d[:v]].max(initial=0) for d, v in zip(deduped, w.row_visible, strict=True)]
    np.testing.assert_array_equal(y_pin, want)
    assert (y_pin != replace(w, row_pinned=None).row_data(scores).y).any()
