"""The two fault scenarios of bench/, small and fast, on the trained `tiny_model`:

- bench/bench_faults.py: pages under load while the model is hot-swapped 10 times (one swap to a
  directory with a flipped byte) and a ranker raises on a seeded share of its calls: zero
  failed requests, the broken model refused and the old one serving on, every injected ranker
  failure counted in /metrics, pages from both model versions served.
- bench/bench_precompute_kills.py: a real `rowrank precompute` SIGKILLed at 3 seeded moments and
  rerun: no page lost, none duplicated, every file byte-identical to an uninterrupted run.
  (tests/serving/test_precompute.py kills once after a fixed number of shards; these moments are
  drawn anywhere in the job, start-up and model loading included.)

The bench scripts print the same figures for longer runs (docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import engine
from engine.serving.precompute import run_precompute

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_load_with_reloads_and_a_failing_ranker(tiny_model: Path) -> None:
    faults = _bench("bench_faults")
    figures = faults.scenario(
        tiny_model, seconds=2.0, connections=2, reloads=10, share=0.3, seed=0, client="python"
    )
    assert figures.problems() == [], figures.report()
    load = figures.load
    assert load.requests >= 10 and load.failed == 0
    # The broken directory was tried once and refused; the nine others were swapped in.
    statuses = [(target, status) for target, status, _ in figures.reloads]
    assert statuses.count(("broken", 422)) == 1
    assert sum(status == 200 for _, status in statuses) == 9
    assert figures.reloads_under_load == 10
    # Pages came from both model directories, and only from them.
    served = {v for v, n in load.versions.items() if n}
    assert served == {figures.versions["a"], figures.versions["b"]}
    # Every injected fault is counted, once.
    assert 0 < figures.injected == figures.metric_ranker_failures
    assert figures.metric_reloads == {"ok": 9.0, "failed": 1.0}
    # The seeded share shows: 30% of the ranker's calls, within a wide binomial band.
    assert 0.1 < figures.injected / figures.ranker_calls < 0.5


@pytest.mark.slow
def test_precompute_killed_at_seeded_moments_resumes_to_the_same_output(
    tiny_model: Path, tmp_path: Path
) -> None:
    kills = _bench("bench_precompute_kills")
    users = [str(u) for u in engine.load(tiny_model).history.user_ids[:24]]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    job = kills.Job(tiny_model, users_file, shard_size=2, workers=1)
    # The uninterrupted reference, in-process (`--workers` is not part of the job's identity).
    reference = tmp_path / "reference"
    result = run_precompute(
        tiny_model,
        reference,
        users_file=users_file,
        devices=list(job.devices),
        times=[kills.AT],
        workers=1,
        shard_size=job.shard_size,
        progress=False,
    )
    assert result.completed and result.exit_code == 0
    figures = kills.scenario(job, tmp_path, kills=3, seed=1, reference=reference)
    assert figures.pages_lost == 0 and figures.pages_duplicated == 0
    assert figures.identical, figures.differing
    assert figures.landed == 3, figures.report()
    # The kills left work behind that the reruns picked up (not three clean exits).
    assert any(k.done_after < job.n_shards for k in figures.kills)
    assert f"in {job.n_shards} shard(s)" in figures.final_summary
