"""Time and peak memory of `rowrank simulate`, row counts, and the speed of the ground-truth API.

Each run is a separate process (`python -m engine.cli simulate ...`), measured with os.wait4:
wall time, CPU time (user + sys) and peak resident memory of that process alone. The machine is
shared: compare CPU time across runs, and quote the median wall time of --repeat runs.

    .venv/bin/python bench/bench_simulate.py                       # default size, 3 runs
    .venv/bin/python bench/bench_simulate.py --users 1000000 --titles 20000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


def run_once(out: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "engine.cli", "simulate", str(out)]
    cmd += ["--users", str(args.users), "--titles", str(args.titles)]
    cmd += ["--days", str(args.days), "--seed", str(args.seed)]
    env = dict(os.environ)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"simulate failed with status {status}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
    }


def describe(out: Path, days: int) -> None:
    def rows(name: str) -> int:
        return int(pl.scan_parquet(out / f"{name}.parquet").select(pl.len()).collect().item())

    n_users, n_plays, n_imp = rows("users"), rows("plays"), rows("impressions")
    print(
        f"rows: users {n_users:,}, titles {rows('titles'):,}, plays {n_plays:,}, "
        f"impressions {n_imp:,}"
    )
    pages = (
        pl.scan_parquet(out / "impressions.parquet")
        .select(pl.col("page_id").n_unique())
        .collect()
        .item()
    )
    print(f"pages {pages:,}, impressions per page {n_imp / max(pages, 1):.1f}")
    per_user = (
        pl.scan_parquet(out / "plays.parquet").group_by("user_id").len().collect()["len"].to_numpy()
    )
    weekly = np.concatenate([per_user, np.zeros(n_users - len(per_user))]) / (days / 7)
    q = np.quantile(weekly, [0.25, 0.5, 0.9, 0.99])
    print(
        "plays per user per week: mean {:.2f}, p25 {:.2f}, median {:.2f}, p90 {:.2f}, "
        "p99 {:.2f}".format(weekly.mean(), *q)
    )
    sizes = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    big = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items()) if v > 2**20)
    print(f"on disk {total / 2**20:.1f} MiB ({big})")


def bench_ground_truth(out: Path, n: int, seed: int) -> None:
    """Per-call latency of the GroundTruth API on `n` random users (one context each)."""
    from engine.request.context import RequestContext
    from engine.request.layout import DEFAULT_LAYOUTS
    from engine.sim.simulate import GROUND_TRUTH_DIR
    from engine.sim.world import GroundTruth

    t0 = time.perf_counter()
    gt = GroundTruth.load(out / GROUND_TRUTH_DIR)
    print(f"GroundTruth.load: {time.perf_counter() - t0:.2f} s")
    w = gt.world
    rng = np.random.default_rng(seed)
    users = rng.choice(w.n_users, min(n, w.n_users), replace=False)
    clock = pl.Series([w.end_us]).cast(pl.Datetime("us", "UTC")).to_list()[0]
    ctxs = [
        RequestContext(
            str(w.user_ids[u]),
            ("tv", "mobile", "tablet", "web")[i % 4],
            clock - timedelta(hours=int(rng.integers(1, 72))),
        )
        for i, u in enumerate(users.tolist())
    ]
    all_ids = w.title_ids.tolist()
    timings: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        res = fn()
        timings.setdefault(name, []).append(time.perf_counter() - t)
        return res

    takes = []
    for ctx in ctxs:
        lay = DEFAULT_LAYOUTS[ctx.device]
        timed(
            "play_probability(all titles)", lambda c=ctx: gt.play_probability(c.user_id, c, all_ids)
        )
        page = timed("oracle_page", lambda c=ctx, lay=lay: gt.oracle_page(c.user_id, c, lay))
        timed(
            "page_play_probabilities",
            lambda c=ctx, p=page: gt.page_play_probabilities(c.user_id, c, p),
        )
        takes.append(
            timed("expected_plays", lambda c=ctx, p=page: gt.expected_plays(c.user_id, c, p))
        )
        timed(
            "simulate_response",
            lambda c=ctx, p=page: gt.simulate_response(c.user_id, c, p, rng),
        )
    for name, ts in timings.items():
        print(
            f"  {name:32s} median {np.median(ts) * 1e3:7.2f} ms  "
            f"p90 {np.quantile(ts, 0.9) * 1e3:7.2f} ms"
        )
    print(f"  oracle take-rate: mean {np.mean(takes):.3f} over {len(takes)} requests")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--titles", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs to take the median of")
    ap.add_argument("--out", help="keep the last run's files here (default: a temporary dir)")
    ap.add_argument("--gt-calls", type=int, default=200, help="users for the API timing, 0 = skip")
    args = ap.parse_args()
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rowrank-bench-sim-"))
    print(
        f"rowrank simulate --users {args.users} --titles {args.titles} --days {args.days} "
        f"--seed {args.seed}  ({args.repeat} run(s), {os.cpu_count()} cores)"
    )
    results = []
    try:
        for i in range(args.repeat):
            if base.exists():
                shutil.rmtree(base)
            r = run_once(base, args)
            results.append(r)
            print(
                f"run {i + 1}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MiB"
            )
        med = {k: float(np.median([r[k] for r in results])) for k in results[0]}
        print(
            f"median: wall {med['wall_s']:.1f} s, cpu {med['cpu_s']:.1f} s, "
            f"peak RSS {med['peak_rss_mb']:.0f} MiB "
            f"(max {max(r['peak_rss_mb'] for r in results):.0f})"
        )
        describe(base, args.days)
        if args.gt_calls:
            bench_ground_truth(base, args.gt_calls, args.seed)
    finally:
        if not args.out:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
