"""Session fixtures shared by the test files.

- `tiny_world`: a small simulated world (dataset directory + its GroundTruth), built once.
- `tiny_config`: the built-in engine config with a small, fast page-model section.
- `tiny_model`: a model directory trained on `tiny_world` with `tiny_config` (a Path).
- `movielens_files`: the MovieLens-format test files (invented lines, written by
  fixtures/movielens/make_fixtures.py), one directory per layout plus `broken/`.

Both are deterministic: the same seed gives the same files, so golden pages stay stable.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

# Before LightGBM loads its OpenMP runtime (see engine/request/scorers.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from engine.config import EngineConfig, load_config, parse_config
from engine.sim.world import GroundTruth

TINY_USERS, TINY_TITLES, TINY_DAYS, TINY_SEED = 300, 300, 28, 5
# Small and fast: three windows (two train + one held out), few trees, one thread so the trees
# are the same on every machine.
TINY_PAGE = {
    "windows": 3,
    "window_days": 5.0,
    "max_pages_per_window": 1500,
    "title_trees": 40,
    "title_leaves": 15,
    "row_trees": 30,
    "row_leaves": 7,
    "min_data_in_leaf": 20,
    "train_threads": 1,
}


@dataclass(frozen=True)
class TinyWorld:
    """A simulated dataset directory and the ground truth it was drawn from."""

    path: Path
    truth: GroundTruth

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    from engine.sim.simulate import GROUND_TRUTH_DIR, simulate

    out = tmp_path_factory.mktemp("tiny_world")
    simulate(
        out,
        users=TINY_USERS,
        titles=TINY_TITLES,
        days=TINY_DAYS,
        seed=TINY_SEED,
        progress=False,
    )
    return TinyWorld(out, GroundTruth.load(out / GROUND_TRUTH_DIR))


def tiny_engine_config(**page: object) -> EngineConfig:
    """The built-in config with TINY_PAGE (plus `page` overrides) as its [page] table."""
    doc = load_config(None).to_document()
    doc["page"] = {**TINY_PAGE, **page}
    return parse_config(doc, source="tests/conftest.py")


@pytest.fixture(scope="session")
def tiny_config() -> EngineConfig:
    return tiny_engine_config()


@pytest.fixture(scope="session")
def tiny_model(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from engine.training.train import train

    out = tmp_path_factory.mktemp("tiny_model") / "model"
    train(tiny_world.path, out, engine_config=tiny_config, progress=False)
    return out


@pytest.fixture(scope="session")
def movielens_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written at test time, not committed: only the generator is in the repo."""
    path = Path(__file__).resolve().parents[1] / "fixtures" / "movielens" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    root = tmp_path_factory.mktemp("movielens")
    make.write(root)
    return root
