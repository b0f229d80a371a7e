"""Ranker speed: fit every ranker of the engine config, then time one member's rows.

Targets: all fits under 30 s in total (2 cores); all rankers' rows for one member under 2 ms
median (one core: the process is pinned to one CPU for that part). Requests go to ~500 seeded
random members, an hour after the history's cut-off, on random devices. The filters' time per
request is printed too (not part of the target).

    .venv/bin/python bench/bench_rankers_speed.py                 # simulates the default world
    .venv/bin/python bench/bench_rankers_speed.py --data DIR [--config engine.toml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from engine.candidates import CandidateRow
from engine.config import build_rankers, load_config
from engine.data.columns import DEVICES
from engine.data.dataset import load_dataset
from engine.data.history import History
from engine.request.context import RequestContext
from engine.request.filters import apply_filters

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help="dataset directory (default: simulate one)")
    ap.add_argument("--config", type=Path, help="engine config TOML (default: built-in)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-requests", type=Path, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.time_requests is not None:
        time_requests(args.time_requests, args.config, args.requests, args.seed)
        return
    if args.data is None:
        from engine.sim.simulate import simulate

        args.data = Path(tempfile.mkdtemp(prefix="bench_speed_"))
        print(f"simulating the default world (5,000 users, 2,000 titles, 60 days) -> {args.data}")
        simulate(args.data, seed=args.seed)
    ds = load_dataset(args.data, validate=False)
    t0 = time.perf_counter()
    history = History.from_dataset(ds)
    print(
        f"dataset {args.data}: {len(history.play_ts):,} plays, {history.n_users:,} members, "
        f"{history.n_titles:,} titles; History built in {time.perf_counter() - t0:.2f} s"
    )
    print(f"CPUs available: {len(os.sched_getaffinity(0))}")

    cfg = load_config(args.config)
    rankers = build_rankers(cfg)
    fit_total = 0.0
    print("\nfit (s):")
    for name, ranker in rankers.items():
        t0 = time.perf_counter()
        ranker.fit(history)
        dt = time.perf_counter() - t0
        fit_total += dt
        print(f"  {name:<22}{dt:8.2f}")
    verdict = "ok" if fit_total < 30 else "MISSED"
    print(f"  {'total':<22}{fit_total:8.2f}   (target < 30 s: {verdict})")

    # The request path runs in a child process with one BLAS thread pinned to one CPU, as a
    # serving worker would (pinning alone leaves OpenBLAS threads fighting over one core).
    with tempfile.TemporaryDirectory(prefix="bench_speed_models_") as tmp:
        history.save(Path(tmp))
        for name, ranker in rankers.items():
            ranker.save(Path(tmp) / name)
        env = {**os.environ, **{v: "1" for v in _THREAD_VARS}}
        cmd = [sys.executable, __file__, "--time-requests", tmp, "--requests", str(args.requests)]
        cmd += ["--seed", str(args.seed)] + (["--config", str(args.config)] if args.config else [])
        subprocess.run(cmd, env=env, check=True)


def time_requests(model_dir: Path, config: Path | None, n_requests: int, seed: int) -> None:
    """Load the saved rankers and time one member's rows, on one core."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    history = History.load(model_dir)
    rankers = build_rankers(load_config(config))
    for name, ranker in rankers.items():
        ranker.load(model_dir / name, history)
    rng = np.random.default_rng(seed)
    users = rng.choice(history.n_users, size=min(n_requests, history.n_users), replace=False)
    when = datetime.fromtimestamp(history.cutoff_us / 1e6, UTC) + timedelta(hours=1)
    reqs = [RequestContext(str(history.user_ids[u]), str(rng.choice(DEVICES)), when) for u in users]
    for q in reqs[:20]:  # warm-up: caches, lazy imports
        for ranker in rankers.values():
            ranker.propose(q, history)
    # CPU time of this thread (time.thread_time) is what a request costs; wall time also counts
    # waiting for the CPU, which on a shared, loaded machine is mostly other people's work.
    per_ranker: dict[str, list[float]] = {name: [] for name in rankers}
    cpu_totals: list[float] = []
    wall_totals: list[float] = []
    filter_times: list[float] = []
    n_rows: list[int] = []
    for q in reqs:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        rows: list[CandidateRow] = []
        for name, ranker in rankers.items():
            t0 = time.thread_time()
            rows += ranker.propose(q, history)
            per_ranker[name].append(time.thread_time() - t0)
        cpu_totals.append(time.thread_time() - cpu0)
        wall_totals.append(time.perf_counter() - wall0)
        n_rows.append(len(rows))
        t0 = time.thread_time()
        apply_filters(rows, q, history, rankers)
        filter_times.append(time.thread_time() - t0)
    print(
        f"\nrows for one member ({len(reqs)} members, loaded from disk, 1 CPU, 1 BLAS thread)"
        f"\n  CPU ms                  median     p90"
    )
    for name, ts in per_ranker.items():
        a = np.array(ts) * 1e3
        print(f"  {name:<22}{np.median(a):8.3f}{np.percentile(a, 90):8.3f}")
    a = np.array(cpu_totals) * 1e3
    verdict = "ok" if np.median(a) < 2 else "MISSED"
    print(
        f"  {'all rankers':<22}{np.median(a):8.3f}{np.percentile(a, 90):8.3f}"
        f"   (target median < 2 ms: {verdict}); rows per member: median {np.median(n_rows):.0f}"
    )
    w = np.array(wall_totals) * 1e3
    print(f"  {'all rankers, wall':<22}{np.median(w):8.3f}{np.percentile(w, 90):8.3f}")
    f = np.array(filter_times) * 1e3
    print(f"  {'filters (all rows)':<22}{np.median(f):8.3f}{np.percentile(f, 90):8.3f}")
    load = os.getloadavg()[0]
    print(f"  load average during the run: {load:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
