"""`rowrank train --engine dask`: the training windows built as Dask tasks on a LocalCluster of
two worker processes give the same model files as the training in one process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import TinyWorld

from engine.config import EngineConfig
from engine.errors import ConfigError
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
