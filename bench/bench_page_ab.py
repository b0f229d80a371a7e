"""Page cost of two versions of rowrank, paired page by page on one core.

    .venv/bin/python bench/bench_page_ab.py --base REV [--head REV] [--requests N]
                                            [--row-length N] [--model DIR]

This machine's speed drifts by 10-40% within minutes (other tenants), so two separate runs of
bench_page_speed.py cannot show a 5% change. Here each version runs in its own process, both
pinned to the same CPU, and the two build the same pages in strict alternation (A, B, B, A, ...
per request): each pair of timings sees the same machine. With --devices tv,mobile each
timed unit is one member's pages on those devices at one time, built one after the other as
precompute builds them. Reported: each side's CPU p50/p99 and
the median over requests of the per-page ratio head/base, with a bootstrap 95% interval, and
whether both built byte-identical pages, traces included.

--base-model DIR: the base side loads another model of the same world (its pages then differ):
what a config change (another ranker set) costs a page, code unchanged or not.

--base / --head: git revisions (extracted with `git archive` into a temporary directory); the
head defaults to this working tree. Both must load the model directory (default: the one
bench_page_speed.py uses). --row-length N also times rows of N titles (as bench_page_speed.py
--row-length does; both versions must have that option).

--mypyc MODULES (comma-separated paths, e.g. engine/request/selectors.py,engine/pipeline.py): the
head is
copied and those modules compiled to C extensions with mypyc (from the `test` extra; a few
minutes) before the run, so the ratio says what compiling the Python, unchanged, buys.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "bench" / "results" / "page_quality" / "models" / "full"

# Runs inside each version's tree: builds the page of request i for every "i" on stdin and
# answers "cpu_ms sha256" (thread CPU time: unaffected by the other process's turns; the
# digest covers the pages' JSON with and without their traces).
WORKER = r"""
import hashlib, json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "bench")]
import engine
from engine.request.context import RequestContext
model, cpu, row_length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
eng = engine.load(model)
if row_length:
    from pathlib import Path
    from bench_page_speed import with_row_length
    eng = with_row_length(eng, row_length, Path(model))
reqs = [[eng.context(u, d, at) for u, d, at in group] for group in json.loads(sys.stdin.readline())]
for group in reqs[:20]:  # warm-up
    for ctx in group:
        eng.page_for(ctx).to_json()
print("ready", flush=True)
for line in sys.stdin:
    digest = hashlib.sha256()
    pages = []
    t0 = time.thread_time()
    for ctx in reqs[int(line)]:
        pages.append(eng.page_for(ctx))
        digest.update(pages[-1].to_json())
    ms = (time.thread_time() - t0) * 1e3
    for page in pages:  # untimed: the traces (filter counts, assembly) must match too
        digest.update(page.to_json(include_trace=True))
    print(f"{ms:.6f} {digest.hexdigest()}", flush=True)
"""


def export(rev: str, into: Path) -> Path:
    """The files of `rev` (git archive) under `into`."""
    got = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=False
    )
    if got.returncode != 0:
        raise SystemExit(f"cannot export revision {rev!r}: {got.stderr.decode().strip()}")
    blob = got.stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    # bench_page_speed's helpers look for the models under bench/results of their own tree
    (into / "bench" / "results").symlink_to(ROOT / "bench" / "results")
    return into


def compiled_copy(code: Path, into: Path, modules: list[str]) -> Path:
    """A copy of the tree at `code` with `modules` compiled by mypyc (an extension module is
    imported before a .py of the same name)."""
    skip = shutil.ignore_patterns(".*", "results", "build", "*.egg-info", "__pycache__")
    shutil.copytree(code, into, ignore=skip)
    subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=into, check=True)
    return into


def requests(
    model: Path, n: int, seed: int, devices: list[str] | None
) -> list[list[tuple[str, str, str]]]:
    """Per timed unit, the (user, device, ISO time) of its pages: one request drawn as
    bench_page_speed.py draws them, or with `devices` that member and time on each device in
    turn (how precompute walks its grid)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from bench_page_speed import requests as draw

    import engine

    eng = engine.load(model)
    return [
        [(c.user_id, d, c.at.isoformat()) for d in (devices or [c.device])]
        for c in draw(eng, n, seed)
    ]


def start(code: Path, model: Path, cpu: int, row_length: int, reqs: list) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(model), str(cpu), str(row_length)],
        cwd=code,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(json.dumps(reqs) + "\n")
    p.stdin.flush()
    if p.stdout.readline().strip() != "ready":
        raise SystemExit(f"the worker in {code} did not start (see its error above)")
    return p


def ask(p: subprocess.Popen, i: int) -> tuple[float, str]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"{i}\n")
    p.stdin.flush()
    ms, digest = p.stdout.readline().split()
    return float(ms), digest


def compare(
    base: Path,
    head: Path,
    model: Path,
    reqs: list,
    cpu: int,
    row_length: int,
    label: str,
    base_model: Path | None = None,
) -> None:
    a = start(base, base_model or model, cpu, row_length, reqs)
    b = start(head, model, cpu, row_length, reqs)
    ta, tb, same = [], [], True
    try:
        for i in range(len(reqs)):
            order = (a, b) if i % 2 == 0 else (b, a)
            got = {id(p): ask(p, i) for p in order}
            ta.append(got[id(a)][0])
            tb.append(got[id(b)][0])
            same &= got[id(a)][1] == got[id(b)][1]
    finally:
        for p in (a, b):
            p.kill()
    xa, xb = np.array(ta), np.array(tb)
    ratio = xb / xa
    rng = np.random.default_rng(0)
    boot = [np.median(rng.choice(ratio, len(ratio))) for _ in range(2000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(
        f"{label}: {len(reqs)} x {len(reqs[0])} pages; base CPU p50 {np.median(xa):.2f} ms, p99 "
        f"{np.percentile(xa, 99):.2f}; head p50 {np.median(xb):.2f} ms, p99 "
        f"{np.percentile(xb, 99):.2f}; head/base per timed unit: median {np.median(ratio):.3f} "
        f"[{lo:.3f}, {hi:.3f}]; identical pages: {'yes' if same else 'NO'}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision")
    ap.add_argument("--head", default=None, help="git revision (default: this working tree)")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument(
        "--base-model",
        help="the model the base side loads (default: --model): the cost of a config change, "
        "e.g. a model trained with another ranker set on the same world",
    )
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--row-length", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--devices",
        default="",
        help="comma-separated: time each member's pages on these devices together "
        "(precompute's grid, e.g. tv,mobile) instead of one page per request",
    )
    ap.add_argument("--mypyc", default="", help="head modules to compile with mypyc first")
    args = ap.parse_args(argv)
    model = Path(args.model).resolve()
    if not (model / "manifest.json").exists():
        raise SystemExit(
            f"no model in {model}: run `python bench/bench_page_speed.py` once (it simulates the "
            "default world and trains this model), or pass --model"
        )
    devices = [d for d in args.devices.split(",") if d] or None
    reqs = requests(model, args.requests, args.seed, devices)
    with tempfile.TemporaryDirectory(prefix="rowrank-ab-") as tmp:
        base = export(args.base, Path(tmp) / "base")
        head = ROOT if args.head is None else export(args.head, Path(tmp) / "head")
        if args.mypyc:
            head = compiled_copy(head, Path(tmp) / "head-mypyc", args.mypyc.split(","))
        print(
            f"base {args.base}, head {args.head or 'working tree'}"
            f"{' compiled with mypyc: ' + args.mypyc if args.mypyc else ''}; model {model.name}; "
            f"cpu {args.cpu}; load average {os.getloadavg()[0]:.1f}"
        )
        base_model = Path(args.base_model).resolve() if args.base_model else None
        compare(base, head, model, reqs, args.cpu, 0, "default config rows", base_model)
        if args.row_length:
            compare(
                base, head, model, reqs, args.cpu, args.row_length, f"rows of {args.row_length}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
