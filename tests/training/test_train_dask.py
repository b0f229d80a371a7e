"""`rowrank train --engine dask`: the training windows built as Dask tasks on a LocalCluster of
two worker processes give the same model files as the training in one process; with
`--lightgbm dask` the page models are fitted by lightgbm.dask on the same workers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import TinyWorld

import engine
from engine.config import EngineConfig
from engine.errors import ConfigError
from engine.request.scorers import ROW_MODEL_FILE, TITLE_MODEL_FILE
from engine.training.train import train


def _files(model: Path) -> dict[str, bytes]:
    """What training wrote, but the manifest (its timings); the shared tiny model may also hold
    the event log a server test wrote beside it."""
    return {
        str(p.relative_to(model)): p.read_bytes()
        for p in sorted(model.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and p.relative_to(model).parts[0] != "events"
    }


@pytest.mark.slow
def test_windows_on_dask_workers_give_the_same_model_files(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    manifest = train(
        tiny_world.path, out, engine_config=tiny_config, progress=False, engine="dask", workers=2
    )
    assert _files(out) == _files(tiny_model)
    cluster = manifest["metrics"]["cluster"]
    assert cluster["engine"] == "dask" and cluster["workers"] == 2
    assert all(mb > 0 for mb in cluster["worker_peak_rss_mb"])
    local = orjson.loads((tiny_model / "manifest.json").read_bytes())
    assert local["windows"] == manifest["windows"]


def test_dask_refuses_what_its_workers_cannot_read(tiny_world: TinyWorld, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--engine dask"):
        train(tiny_world.path, tmp_path / "m", engine="dask", events=tmp_path / "events")


@pytest.mark.slow
def test_page_models_on_lightgbm_dask_learn_as_much_as_in_one_process(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tiny_model: Path, tmp_path: Path
) -> None:
    """lightgbm.dask's data-parallel fit over the two workers: everything but the two boosters
    is the same bytes; the boosters have the same features and their held-out NDCG is within a
    few points of one process's (distributed binning moves the trees' last bits, not what they
    learn); the model loads and serves."""
    out = tmp_path / "model"
    manifest = train(
        tiny_world.path,
        out,
        engine_config=tiny_config,
        progress=False,
        engine="dask",
        workers=2,
        lightgbm="dask",
    )
    boosters = {TITLE_MODEL_FILE, ROW_MODEL_FILE}
    mine, local_files = _files(out), _files(tiny_model)
    assert {k: v for k, v in mine.items() if k not in boosters} == {
        k: v for k, v in local_files.items() if k not in boosters
    }
    assert mine[TITLE_MODEL_FILE] != local_files[TITLE_MODEL_FILE]  # not the same trees
    local = orjson.loads((tiny_model / "manifest.json").read_bytes())["metrics"]
    got = manifest["metrics"]
    assert got["cluster"]["lightgbm"] == "dask" and got["cluster"]["workers"] == 2
    for model in ("title", "row"):
        ours, theirs = got[model]["valid_ndcg_at_10"], local[model]["valid_ndcg_at_10"]
        assert abs(ours - theirs) < 0.05, (model, ours, theirs)
        assert ours > got[model]["random_ndcg_at_10"] + 0.05
    eng = engine.load(out)
    member = str(eng.history.user_ids[0])
    assert eng.page(member, "tv").rows


def test_lightgbm_dask_needs_the_dask_engine(tiny_world: TinyWorld, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--engine dask"):
        train(tiny_world.path, tmp_path / "m", lightgbm="dask")
