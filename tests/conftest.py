"""Fixtures and helpers shared by the test files: a tiny world and model, and running the CLI.

- `tiny_world`: a small simulated world (dataset directory + its GroundTruth), built once.
- `tiny_config`: the built-in engine config with a small, fast page-model section.
- `tiny_model`: a model directory trained on `tiny_world` with `tiny_config` (a Path).
- `movielens_files`: the MovieLens-format test files (invented lines, written by
  fixtures/movielens/make_fixtures.py), one directory per layout plus `broken/`.
- `run_cli`: `rowrank ARGS` in this process, (exit code, stdout, stderr).
- `rowrank_cmd(*args)` / `run_rowrank(*args)` (import them: `from conftest import ...`): the
  argv of `rowrank ARGS` in a new process of this interpreter, and that process run to its end.

The world and model are deterministic: the same seed gives the same files, so golden pages stay
stable.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Before LightGBM loads its OpenMP runtime (see engine/request/scorers.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before numpy picks its SIMD kernels by the CPU: its AVX-512 ones round some functions (log,
# exp, ...) in the last bit otherwise than the AVX2 ones, so on a CPU with AVX-512 the tiny
# model trained here, and the golden pages, would differ from those of the machine that wrote
# them. The tests take the AVX2 kernels on every machine (docs/page_model.md, "Same bytes").
# Subprocesses inherit it. A numpy that names its kernels otherwise warns and keeps its own.
os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V4 AVX512_ICL AVX512_SPR")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ImportWarning)
    import numpy as np
import pytest

from engine.cli import main as cli_main
from engine.config import EngineConfig, load_config, parse_config
from engine.events.state import LiveState
from engine.pipeline import Engine
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


@pytest.fixture(scope="module")
def eng(tiny_model: Path) -> Engine:
    """The tiny model, loaded once per test module (a module may change it)."""
    import engine

    return engine.load(tiny_model)


@pytest.fixture(scope="module")
def at(eng: Engine) -> str:
    """20:00 on the day after the tiny model's cut-off, as an ISO string."""
    cut = datetime.fromtimestamp(eng.history.cutoff_us / 1e6, UTC)
    return (cut + timedelta(hours=20)).replace(minute=0, second=0, microsecond=0).isoformat()


@pytest.fixture(scope="module")
def member(eng: Engine) -> str:
    """The member with the most plays (so most rankers have rows for them)."""
    counts = np.diff(eng.history.user_offsets)
    return str(eng.history.user_ids[int(np.argmax(counts))])


@pytest.fixture
def live(eng: Engine, tmp_path: Path) -> Iterator[LiveState]:
    """A live state on a fresh event log, attached to the tiny model's engine for one test."""
    state = LiveState(tmp_path / "events")
    eng.live = state
    try:
        yield state
    finally:
        eng.live = None
        state.close()


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


ROWRANK = (sys.executable, "-m", "engine.cli")
# The thread limits `rowrank precompute` sets in its own process (precompute._limit_threads).
THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")


def rowrank_cmd(*args: str | os.PathLike[str]) -> list[str]:
    """The argv of `rowrank ARGS` in a new process of this interpreter (for subprocess.Popen)."""
    return [*ROWRANK, *map(str, args)]


def run_rowrank(
    *args: str | os.PathLike[str], timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """`rowrank ARGS` in a new process, run to its end: returncode, stdout, stderr (bytes). For
    what must not share the test's process: a crash, a kill, the interpreter's start-up."""
    return subprocess.run(rowrank_cmd(*args), capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`run_cli(*args)`: `rowrank ARGS` in this process (engine.cli.main, no interpreter
    start-up) -> (exit code, stdout, stderr)."""

    def call(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        if args and args[0] == "precompute":
            # It limits compute threads through the environment (setdefault): preset them so
            # monkeypatch puts the environment back after the test.
            for var in THREAD_LIMITS:
                monkeypatch.setenv(var, os.environ.get(var, "1"))
        code = cli_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


# ----- play events (tests/events) ---------------------------------------------------------


@pytest.fixture(scope="session")
def watcher(tiny_model: Path) -> dict[str, Any]:
    """The member with the most plays, 20:00 the day after the cut-off, and the movies the
    member never played that their page can show (licensed in their country, within their
    maturity)."""
    import engine
    from engine.request.filters import request_masks

    eng = engine.load(tiny_model)
    h = eng.history
    member = str(h.user_ids[int(np.argmax(np.diff(h.user_offsets)))])
    cut = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC)
    at = (cut + timedelta(hours=20)).replace(minute=0, second=0, microsecond=0)
    masks = request_masks(eng.context(member, "tv", at), h)
    played = set(h.play_title[h.user_plays(h.user_index(member))].tolist())
    movies = [
        str(h.title_ids[t])
        for t in range(h.n_titles)
        if h.series[t] < 0 and t not in played and masks.reason[t] == 0
    ]
    return {"member": member, "at": at, "movies": movies}


@pytest.fixture(scope="session")
def events(tiny_model: Path) -> list[dict[str, Any]]:
    """Three members' plays three hours after the cut-off (ids cli-0, cli-1, cli-2)."""
    from engine.training.model_dir import read_history

    _, h = read_history(tiny_model)
    at = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC) + timedelta(hours=3)
    return [
        {
            "event_id": f"cli-{k}",
            "user_id": str(h.user_ids[k]),
            "title_id": str(h.title_ids[k]),
            "ts": (at + timedelta(minutes=k)).isoformat(),
            "device": "mobile",
            "seconds_watched": 300.0,
            "progress": 0.25,
        }
        for k in range(3)
    ]
