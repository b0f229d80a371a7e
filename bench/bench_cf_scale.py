"""What collaborative filtering costs as the catalog grows: fit time, peak memory and the
fitted arrays (what every server worker holds) of PVR's three CF methods, by catalog size.

    .venv/bin/python bench/bench_cf_scale.py [--titles 2000 5000 10000 15000] [--members 50000]

EASE and item-kNN hold dense titles x titles matrices (n^2: the fit inverts or sorts one in
float64), ALS holds factors (n x f). Each fit runs in a child process of its own on the same
synthetic play matrix (--members members, --plays distinct titles each, title popularity
Zipf-like, seeded), with no `max_dense_titles` cap, so the figures are the methods' own; the
child reports wall seconds, its peak RSS above the matrix it started from, and the bytes of the
fitted arrays. `max_dense_titles` (rankers.pvr.MAX_DENSE_TITLES) is where the dense methods stop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import scipy.sparse as sp

from rankers.pvr import MAX_DENSE_TITLES, CFConfig, CFModel

UNCAPPED = 10**9


def play_matrix(members: int, titles: int, plays: int, seed: int) -> sp.csr_matrix:
    """Members x titles, 1 where a member played a title: `plays` draws per member from a
    Zipf-like popularity (weight 1 / (rank + 10)), repeats merged."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / (np.arange(titles) + 10.0)
    cdf = np.cumsum(weight / weight.sum())
    draws = np.minimum(np.searchsorted(cdf, rng.random(members * plays)), titles - 1)
    rows = np.repeat(np.arange(members), plays)
    x = sp.csr_matrix((np.ones(len(rows)), (rows, draws)), shape=(members, titles))
    x.data[:] = 1.0
    return x


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def child(args: argparse.Namespace) -> None:
    x = play_matrix(args.members, args.one_titles, args.plays, args.seed)
    before = rss_gb()
    cfg = CFConfig(method=args.one_method, max_dense_titles=UNCAPPED)
    t0 = time.perf_counter()
    model = CFModel.fit_plays(x, cfg)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {
        "titles": args.one_titles,
        "method": args.one_method,
        "scored": len(model.eval_items),
        "plays": int(x.nnz),
        "fit_s": seconds,
        "peak_above_gb": peak - before,
        "arrays_gb": sum(a.nbytes for a in model.arrays().values()) / 2**30,
    }
    print(json.dumps(out), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--titles", type=int, nargs="+", default=[2000, 5000, 10000, 15000])
    ap.add_argument("--methods", nargs="+", default=["ease", "item_knn", "als"])
    ap.add_argument("--members", type=int, default=50_000)
    ap.add_argument("--plays", type=int, default=40, help="draws per member (repeats merged)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-titles", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one-method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_titles:
        child(args)
        return 0
    print(
        f"{args.members:,} members x {args.plays} draws, {os.cpu_count()} cores; dense methods "
        f"stop at max_dense_titles = {MAX_DENSE_TITLES:,}",
        flush=True,
    )
    print("| titles | scored | method | fit s | peak GB above the matrix | fitted arrays GB |")
    print("|---|---|---|---|---|---|")
    for titles in args.titles:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--one-titles", str(titles), "--one-method", method]
            cmd += ["--members", str(args.members), "--plays", str(args.plays)]
            cmd += ["--seed", str(args.seed)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {titles:,} | | {method} | failed: {done.stderr.strip()[-200:]} | | |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {titles:,} | {r['scored']:,} | {method} | {r['fit_s']:.1f} | "
                f"{r['peak_above_gb']:.2f} | {r['arrays_gb']:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
