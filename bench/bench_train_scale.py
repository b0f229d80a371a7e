"""How `rowrank train` scales with the members: wall time, CPU time, peak memory and plays per
second of whole training runs on simulated worlds of growing size, with each step's time and
peak memory from the model manifest (engine.training.steps).

Each world is simulated once under --work (reused when present) and trained in its own process
(`python -m engine.cli train`), measured with os.wait4 (wall, CPU, peak resident memory of that
process and the processes it waited for). The machine is shared: CPU time is steadier than
wall time. `--engine local dask` trains each world both ways, one after the other
(`rowrank train --engine dask`: the windows on a LocalCluster of 2 workers, whose peak memory
each comes from the model manifest); `dask-lightgbm` is `--engine dask --lightgbm dask`, the page
models fitted by lightgbm.dask on the same workers.

    .venv/bin/python bench/bench_train_scale.py --users 10000 100000 --work /tmp/scale
    .venv/bin/python bench/bench_train_scale.py --users 1000000 --days 7 --work /tmp/scale
    .venv/bin/python bench/bench_train_scale.py --users 100000 --engine local dask dask-lightgbm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl


def _run(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_gb": usage.ru_maxrss / 2**20,  # Linux reports KiB
    }


def world(work: Path, users: int, titles: int, days: int, seed: int) -> Path:
    out = work / f"world-{users}x{titles}x{days}"
    if not (out / "plays.parquet").exists():
        cmd = [sys.executable, "-m", "engine.cli", "simulate", str(out)]
        cmd += ["--users", str(users), "--titles", str(titles), "--days", str(days)]
        cmd += ["--seed", str(seed)]
        print(f"simulating {out.name} ...", flush=True)
        _run(cmd)
    return out


def train_once(data: Path, model: Path, tune_budget: float, engine: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "engine.cli", "train", str(data), str(model)]
    cmd += ["--tune-budget", str(tune_budget), "--engine", engine.removesuffix("-lightgbm")]
    if engine == "dask-lightgbm":
        cmd += ["--lightgbm", "dask"]
    measured: dict[str, Any] = _run(cmd)
    manifest = json.loads((model / "manifest.json").read_text())
    measured["steps"] = manifest["metrics"].get("steps", {})
    workers = manifest["metrics"].get("cluster", {}).get("worker_peak_rss_mb", [])
    measured["worker_peak_gb"] = [mb / 1024 for mb in workers]
    # Training resets the high-water mark between steps (engine.training.steps), which the
    # kernel's own figure for the process (wait4) then only counts from the last reset: the
    # process's peak is the larger of it and every step's.
    peaks = measured["steps"].get("peak_rss_mb", {}).values()
    measured["peak_gb"] = max([measured["peak_gb"], *(p / 1024 for p in peaks)])
    measured["plays"] = pl.scan_parquet(data / "plays.parquet").select(pl.len()).collect().item()
    return measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--titles", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tune-budget", type=float, default=0.0)
    p.add_argument("--work", type=Path, default=Path("bench/results/train_scale"))
    p.add_argument(
        "--engine", nargs="+", choices=("local", "dask", "dask-lightgbm"), default=["local"]
    )
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for users in args.users:
        data = world(args.work, users, args.titles, args.days, args.seed)
        for engine in args.engine:
            print(f"training on {data.name} ({engine}) ...", flush=True)
            name = data.name if engine == "local" else f"{data.name}-{engine}"
            r = train_once(data, args.work / f"model-{name}", args.tune_budget, engine)
            r["users"], r["engine"] = users, engine
            results.append(r)
            (args.work / f"train-{name}.json").write_text(json.dumps(r, indent=2))
    print(
        f"\n`rowrank train --tune-budget {args.tune_budget:g}`, {args.titles:,} titles, "
        f"{args.days} days"
    )
    print(
        "| members | engine | plays | wall s | CPU s | peak GB | Dask workers' peak GB | "
        "plays/s (CPU) | CPU s per M plays |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        workers = ", ".join(f"{gb:.2f}" for gb in r["worker_peak_gb"]) or "-"
        print(
            f"| {r['users']:,} | {r['engine']} | {r['plays']:,} | {r['wall_s']:.0f} | "
            f"{r['cpu_s']:.0f} | {r['peak_gb']:.2f} | {workers} | "
            f"{r['plays'] / r['cpu_s']:,.0f} | {r['cpu_s'] / r['plays'] * 1e6:.0f} |"
        )
    steps = [s for r in results for s in r["steps"].get("seconds", {})]
    names = list(dict.fromkeys(steps))
    print("\nper step, seconds / peak GB (from the model manifest):")
    print("| members | engine | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in results:
        sec, peak = r["steps"].get("seconds", {}), r["steps"].get("peak_rss_mb", {})
        cells = [f"{sec[n]:.0f} / {peak[n] / 1024:.2f}" if n in sec else "" for n in names]
        print(f"| {r['users']:,} | {r['engine']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
