"""Precompute throughput and memory: prints pages/s and peak memory (docs/precompute.md).

    .venv/bin/python bench/bench_precompute.py [--work DIR] [--repeats 3] [--model DIR]
        [--limit-users N] [--memory-users 100000] [--skip-memory] [--interrupt]
        [--block-users 1000] [--block-pages 512] [--block-only]

1. Builds the default simulated world (`rowrank simulate`: 5,000 users) and trains a model on it
   (`rowrank train`) under --work (default bench/results/precompute); both are kept between
   runs, and the model is retrained when it is not what `rowrank train` writes now
   (engine.training.train.trained_with: loadable by this rowrank, built-in config, world).
2. The engine alone: a loop of `Engine.page(...).to_json()` in this process (the ceiling); and
   what precompute's parent reads before its workers start (`read_history`) against a whole
   `engine.load`, each in a fresh interpreter.
3. Throughput: `rowrank precompute` over every known user (or the first --limit-users) with the
   default contexts (tv and mobile at 20:00 after the cut-off), in 20 shards, as 1 process,
   local with 2 workers, and Dask (LocalCluster) with 2 workers; --repeats rounds, the three
   configs interleaved in each round so load from other jobs hits them alike; medians. Per run:
   end to end (wall clock of the whole command: start-up, model loads, pages, manifest), steady
   state (pages of shards 2..n over the time from the first to the last shard's done marker:
   no start-up), CPU ms per page of the whole process tree (start-up included; insensitive to
   other jobs), the seconds to the first shard's done marker (start-up: the parent's reading,
   the workers' spawn, imports and model loads, the first shard) and from the last marker to
   the command's exit, and the load average. Also checks that all runs wrote identical shards.
4. Memory: a world like the default one but with --memory-users members (default 100,000;
   simulated and trained once under --work), precompute of every member in one context, local
   with 2 workers; the summed RSS of the command's process tree is sampled every 50 ms. The same
   model with the first tenth of the members shows whether memory grows with the user count.
   (Every member is known to the model: cold-start ids without a country get empty pages, which
   would flatter both memory and speed.)
5. A paper estimate for 100M users x 4 contexts at the measured per-core rate.

--block (the block path, engine.pipeline.Engine.pages; run alone with --block-only): in this
process, pinned to one core, on the same members (--block-users, default 1,000) and the default
contexts, interleaved --repeats times: the per-request loop (`Engine.page(...).to_json()`) and
the batch path as precompute runs it (`Engine.iter_pages` on blocks of --block-pages requests,
then `to_json`), each in pages per CPU-second, and their ratio; the sha256 of all pages of each
(equal digests: the same pages, so every quality figure stands); then the floor of one block,
the bare arithmetic a page needs: PVR/EASE scores for the block's members as one sparse x dense
product and their top 200, one title-model call over every (row, title) pair of the block, and
orjson of the block's finished page documents; and how far the batch path is above it.

--interrupt measures only Ctrl-C instead (measure_interrupt): seconds from SIGINT to exit, what
the manifest lists, and that the resume ends with the uninterrupted run's shards.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil  # a dependency of dask.distributed (the `dask` extra)

ROOT = Path(__file__).resolve().parents[1]
ROWRANK = [sys.executable, "-m", "engine.cli"]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def build_model(work: Path, users: int | None = None) -> Path:
    """The default world (or one with `users` members) and a model trained on it; retrained
    when the saved one is not what `rowrank train` writes now (engine.training.train.trained_with:
    model
    format, built-in config, world)."""
    suffix = "" if users is None else f"-{users}"
    world, model = work / f"world{suffix}", work / f"model{suffix}"
    if not (world / "dataset.json").exists():
        shutil.rmtree(world, ignore_errors=True)
        t = time.perf_counter()
        more = [] if users is None else ["--users", str(users)]
        run([*ROWRANK, "simulate", str(world), *more])
        print(f"simulated the default world in {time.perf_counter() - t:.0f} s -> {world}")
    from engine.cli import TUNE_BUDGET_S
    from engine.config import load_config
    from engine.training.train import trained_with

    # `rowrank train` tunes for TUNE_BUDGET_S by default: the model it writes records that.
    if not trained_with(model, world, load_config(), tune_budget=TUNE_BUDGET_S):
        print("(re)training: no model yet, or not the one `rowrank train` writes now")
        t = time.perf_counter()
        run([*ROWRANK, "train", str(world), str(model)])
        print(f"trained in {time.perf_counter() - t:.0f} s -> {model}")
    return model


def children_cpu() -> float:
    """CPU seconds of every finished, reaped descendant (workers roll up through their parent)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Run:
    pages: int
    wall: float  # seconds, the whole command
    steady: float  # pages/s between the first and the last shard's done marker
    cpu: float  # CPU seconds of the whole process tree
    load: float  # 1-minute load average at the end (other jobs share the machine)
    digest: str  # of the shards' sha256s: equal digests = identical output
    first: float  # seconds from the command's start to its first shard's done marker
    last: float  # seconds from the last shard's done marker to the command's exit

    @property
    def rate(self) -> float:
        return self.pages / self.wall


def precompute(model: Path, out: Path, *extra: str) -> Run:
    """One fresh `rowrank precompute` run, measured."""
    shutil.rmtree(out, ignore_errors=True)
    cpu0, t, started = children_cpu(), time.perf_counter(), time.time()
    run([*ROWRANK, "precompute", str(model), str(out), *extra])
    wall, cpu, ended = time.perf_counter() - t, children_cpu() - cpu0, time.time()
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["completed"], f"{out}: run did not complete"
    marks = sorted(
        (p.stat().st_mtime, orjson.loads(p.read_bytes())["pages"])
        for p in (out / "done").glob("*.json")
    )
    steady = float("nan")
    if len(marks) >= 3:
        steady = sum(n for _, n in marks[1:]) / (marks[-1][0] - marks[0][0])
    digest = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode())
    return Run(
        int(manifest["pages"]),
        wall,
        steady,
        cpu,
        os.getloadavg()[0],
        digest.hexdigest()[:12],
        first=marks[0][0] - started,
        last=ended - marks[-1][0],
    )


def peak_rss(cmd: list[str]) -> tuple[float, float, float]:
    """(peak summed RSS of the process tree, peak RSS of the largest process, seconds)."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_sum = peak_one = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_sum, peak_one
        while not stop.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                rss = []
                for p in procs:
                    with contextlib.suppress(psutil.Error):  # a process may just have ended
                        rss.append(p.memory_info().rss)
                peak_sum = max(peak_sum, sum(rss))
                peak_one = max(peak_one, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(0.05)

    t = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    return peak_sum / 2**20, peak_one / 2**20, time.perf_counter() - t


def fresh_interpreter_seconds(import_f: str, model: Path) -> float:
    """Seconds for `f(model)` in a new Python process, its imports included (`import_f` binds
    f), timed inside that process, so interpreter start-up is left out."""
    code = (
        "import time; t = time.perf_counter(); from pathlib import Path; "
        f"{import_f}; f(Path({str(model)!r})); print(time.perf_counter() - t)"
    )
    return float(run([sys.executable, "-c", code]).stdout)


def measure_interrupt(model: Path, work: Path, repeats: int, limit: int | None) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the process group) to `rowrank precompute
    --workers 2` (default shard size) once a shard is done: seconds to exit, exit code, shards
    the manifest lists against the done markers; then the same command resumes to the end and
    its shards must equal an uninterrupted run's (sha256 of the manifest's shard list)."""
    import signal

    out, ref = work / "interrupt-out", work / "interrupt-ref"
    extra = ["--workers", "2"] + (["--limit", str(limit)] if limit else [])
    reference = precompute(model, ref, *extra)
    print(f"uninterrupted: {reference.pages:,} pages in {reference.wall:.1f} s")
    for i in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        cmd = [*ROWRANK, "precompute", str(model), str(out), *extra]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while proc.poll() is None and not list((out / "done").glob("*.json")):
            time.sleep(0.005)
        time.sleep(0.5)  # mid-shard
        os.killpg(proc.pid, signal.SIGINT)
        t = time.perf_counter()
        proc.wait(timeout=120)
        took = time.perf_counter() - t
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        listed = len(manifest["shards"])
        markers = len(list((out / "done").glob("*.json")))
        run(cmd)  # the same command resumes
        final = orjson.loads((out / "manifest.json").read_bytes())
        same = final["shards"] == orjson.loads((ref / "manifest.json").read_bytes())["shards"]
        print(
            f"run {i + 1}: exit {proc.returncode} {took:.2f} s after SIGINT; manifest lists "
            f"{listed} of {manifest['n_shards']} shards ({markers} done markers); resumed: "
            f"{'identical to' if same and final['completed'] else 'DIFFERENT FROM'} the "
            f"uninterrupted run; load avg {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def digest(pages: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in pages:
        h.update(p + b"\n")
    return h.hexdigest()[:16]


def block_path(model: Path, n_users: int, block: int, repeats: int) -> None:
    """The per-request loop against the batch path, and the floor of a block (see --block)."""
    import numpy as np

    import engine
    from engine.serving.precompute import build_contexts
    from engine.serving.processes import load_frozen

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    eng = load_frozen(engine.load, model)  # as precompute's workers load it
    users = [str(u) for u in eng.history.user_ids[:n_users].tolist()]
    grid = build_contexts(None, None, int(eng.history.cutoff_us))
    cells = [(u, c) for u in users for c in grid]
    n = len(cells)
    print(
        f"block path: {len(users):,} members x {len(grid)} contexts = {n:,} pages, one core, "
        f"blocks of {block} pages"
    )

    def loop() -> list[bytes]:
        return [eng.page(u, device=c.device, at=c.at).to_json() for u, c in cells]

    def batch() -> list[bytes]:
        out: list[bytes] = []
        for s in range(0, n, block):
            ctxs = [eng.context(u, device=c.device, at=c.at) for u, c in cells[s : s + block]]
            out += [p.to_json() for p in eng.iter_pages(ctxs)]
        return out

    for u, c in cells[:20]:  # the compiled loops loaded
        eng.page(u, device=c.device, at=c.at)
    rates: dict[str, list[float]] = {"loop": [], "batch": []}
    digests: dict[str, set[str]] = {"loop": set(), "batch": set()}
    for _ in range(repeats):
        for label, build in (("loop", loop), ("batch", batch)):
            t0 = time.process_time()
            pages = build()
            cpu = time.process_time() - t0
            rates[label].append(n / cpu)
            digests[label].add(digest(pages))
    med = statistics.median
    loop_rate, batch_rate = med(rates["loop"]), med(rates["batch"])
    for label in ("loop", "batch"):
        print(
            f"  {label:5s}: {med(rates[label]):6.0f} pages per CPU-second "
            f"({1000 / med(rates[label]):.2f} ms/page; runs "
            f"{', '.join(f'{r:.0f}' for r in rates[label])}); page digest "
            f"{', '.join(sorted(digests[label]))}"
        )
    same = digests["loop"] == digests["batch"] and len(digests["loop"]) == 1
    print(
        f"  batch / loop: {batch_rate / loop_rate:.2f}x pages per CPU-second (target >= 5x); "
        f"pages identical: {'yes' if same else 'NO'}; load avg {os.getloadavg()[0]:.1f}"
    )

    # The floor of one block: the arithmetic alone, each step timed on its own.
    part = cells[:block]
    ctxs = [eng.context(u, device=c.device, at=c.at) for u, c in part]
    docs = [p.to_dict() for p in eng.pages(ctxs)]
    h = eng.history
    from engine.pipeline import candidate_rows_block

    cands = candidate_rows_block(eng.rankers, ctxs, h, eng.page_config)
    pvrs = [eng.pvr.scores(h.user_index(c.user_id), h, c.at_us)[0] for c in ctxs]
    ranked = [i for i, c in enumerate(cands) if c.rows]
    scored = eng.score_block(
        [ctxs[i] for i in ranked], [cands[i].rows for i in ranked], [pvrs[i] for i in ranked]
    )
    pairs_x = np.vstack([s.title_x for s in scored])
    assert eng.pvr.ranker is not None, "the floor's sparse product needs a PVR ranker"
    cf = eng.pvr.ranker.model_  # the PVR ranker's EASE (or item-kNN) weights
    members = np.unique([h.user_index(c.user_id) for c in ctxs])
    from rankers.pvr import play_matrix

    plays = play_matrix(h)[members][:, cf.eval_items].tocsr().astype(np.float32)

    def sparse_product() -> None:
        scores = plays @ cf.item_weights
        np.argpartition(-scores, 200, axis=1)[:, :200]

    def title_model() -> None:
        eng.model.score_titles(pairs_x)

    def serialize() -> None:
        for d in docs:
            orjson.dumps(d)

    floor: dict[str, float] = {}
    for label, step in (
        ("PVR/EASE sparse x dense + top 200", sparse_product),
        ("title model, one call over the block's pairs", title_model),
        ("orjson of the pages", serialize),
    ):
        took = []
        for _ in range(5):
            t = time.process_time()
            step()
            took.append(time.process_time() - t)
        floor[label] = 1000 * min(took) / len(part)
        print(f"  floor: {label}: {floor[label]:.3f} ms/page")
    total = sum(floor.values())
    print(
        f"  floor {total:.2f} ms/page ({len(pairs_x) / len(part):.0f} title-model rows a page, "
        f"{len(members)} members in the block); the batch path {1000 / batch_rate:.2f} ms/page "
        f"= {1000 / batch_rate / total:.1f}x the floor (the loop {1000 / loop_rate / total:.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "precompute")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-users", type=int, default=100_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--limit-users", type=int, help="throughput on the first N users only (a quick check)"
    )
    ap.add_argument(
        "--interrupt",
        action="store_true",
        help="only measure Ctrl-C: seconds from SIGINT to exit, then the resume (--repeats runs)",
    )
    ap.add_argument("--model", type=Path, help="use this model instead of building one")
    ap.add_argument("--block-users", type=int, default=1000, help="members of the --block part")
    ap.add_argument("--block-pages", type=int, default=512, help="requests per Engine.pages")
    ap.add_argument(
        "--block-only", action="store_true", help="only the loop / batch / floor comparison"
    )
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    model = args.model.resolve() if args.model else build_model(work)
    if args.interrupt:
        measure_interrupt(model, work, args.repeats, args.limit_users)
        return
    # In a child process: it pins itself to one core, and the runs below want both.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_precompute as b; "
        "from pathlib import Path; b.block_path(Path(sys.argv[2]), *map(int, sys.argv[3:]))"
    )
    block_args = [str(args.block_users), str(args.block_pages), str(args.repeats)]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    child = [sys.executable, "-c", code, str(ROOT / "bench"), str(model), *block_args]
    print(run(child, env=one_thread).stdout)
    if args.block_only:
        return
    import engine

    known = [str(u) for u in engine.load(model).history.user_ids.tolist()]
    print(f"model: {model} ({len(known):,} users)")

    # The engine alone, no precompute around it: the ceiling for one process.
    eng = engine.load(model)
    from engine.serving.precompute import build_contexts

    grid = build_contexts(None, None, int(eng.history.cutoff_us))
    sample = known[: min(len(known), args.limit_users or 500)]
    t, cpu = time.perf_counter(), time.process_time()
    for u in sample:
        for c in grid:
            eng.page(u, device=c.device, at=c.at).to_json()
    n = len(sample) * len(grid)
    bare, cpu_ms = n / (time.perf_counter() - t), 1000 * (time.process_time() - cpu) / n
    print(
        f"engine alone (a loop of Engine.page(...).to_json(), {len(sample)} users x "
        f"{len(grid)} contexts, in this process): {bare:,.0f} pages/s, CPU {cpu_ms:.1f} ms/page, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    del eng

    # What the parent waits for before its workers can start: since this change, the manifest
    # and the History (engine.training.model_dir.read_history), formerly a whole engine.
    for what, code in (
        ("read_history", "from engine.training.model_dir import read_history as f"),
        ("engine.load", "from engine import load as f"),
    ):
        took = [fresh_interpreter_seconds(code, model) for _ in range(3)]
        print(
            f"parent start-up, {what} in a fresh interpreter (imports included): median "
            f"{statistics.median(took):.2f} s (runs {', '.join(f'{x:.2f}' for x in took)})"
        )

    # 20 shards (250 users each for 5,000 users), enough for a steady-state rate between the
    # first and the last; per-page costs do not depend on the shard size.
    n_users = min(len(known), args.limit_users or len(known))
    subset: list[str] = ["--shard-size", str(max(1, n_users // 20))]
    if args.limit_users:
        users = work / f"users-first-{args.limit_users}.txt"
        users.write_text("\n".join(known[: args.limit_users]) + "\n")
        subset += ["--users", str(users)]
    configs = [
        ("1 process", [*subset, "--workers", "1"]),
        ("local, 2 workers", [*subset, "--workers", "2"]),
        ("dask LocalCluster, 2 workers", [*subset, "--engine", "dask", "--workers", "2"]),
    ]
    # Interleaved (every config once per round), so load from other jobs on a shared machine
    # hits all configs alike.
    results: dict[str, list[Run]] = {label: [] for label, _ in configs}
    for i in range(args.repeats):
        for label, extra in configs:
            out = work / "out" / f"run-{i}"
            results[label].append(precompute(model, out, *extra))
            shutil.rmtree(out)
    med = statistics.median
    for label, runs in results.items():
        print(
            f"{label:30s} {runs[0].pages:,} pages: end to end {med(r.rate for r in runs):5.0f} "
            f"pages/s (runs {', '.join(f'{r.rate:.0f}' for r in runs)}); steady state "
            f"{med(r.steady for r in runs):5.0f} pages/s (runs "
            f"{', '.join(f'{r.steady:.0f}' for r in runs)}); CPU "
            f"{med(1000 * r.cpu / r.pages for r in runs):.1f} ms/page; first shard done after "
            f"{med(r.first for r in runs):.2f} s, exit {med(r.last for r in runs):.2f} s after "
            f"the last; load avg {', '.join(f'{r.load:.1f}' for r in runs)}"
        )
    digests = {r.digest for runs in results.values() for r in runs}
    print(
        f"identical shards across engines and repeats: {'yes' if len(digests) == 1 else 'NO'} "
        f"(digest of the shards' sha256s: {', '.join(sorted(digests))})"
    )

    def med_rate(label: str, steady: bool = False) -> float:
        return statistics.median(r.steady if steady else r.rate for r in results[label])

    one, two = "1 process", "local, 2 workers"
    print(
        f"2 local workers vs 1 process: end to end {med_rate(two):.0f} vs {med_rate(one):.0f} "
        f"pages/s = {med_rate(two) / med_rate(one):.2f}x; steady state "
        f"{med_rate(two, True):.0f} vs {med_rate(one, True):.0f} pages/s = "
        f"{med_rate(two, True) / med_rate(one, True):.2f}x "
        "(targets: >= 2,000 pages/s with 2 workers, >= 1.7x)"
    )

    if not args.skip_memory:
        big = build_model(work, args.memory_users)
        members = [str(u) for u in engine.load(big).history.user_ids.tolist()]
        for n in (len(members) // 10, len(members)):
            users = work / f"users-{n}.txt"
            users.write_text("\n".join(members[:n]) + "\n")
            out = work / "out" / f"memory-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*ROWRANK, "precompute", str(big), str(out), "--users", str(users)]
            # One context (tv): memory per page does not depend on how many contexts there are.
            total, largest, secs = peak_rss([*cmd, "--device", "tv", "--workers", "2"])
            print(
                f"memory, {n:,} of the {len(members):,}-member world's members x 1 context, "
                f"local 2 workers: peak RSS of all processes {total:,.0f} MiB, largest process "
                f"{largest:,.0f} MiB ({n / secs:,.0f} pages/s over {secs:.0f} s, start-up included)"
            )
            shutil.rmtree(out)

    # Per core: the 2-worker steady state over 2, and, robust to other jobs on the machine, the
    # 2-worker run's pages per CPU-second (start-up included).
    per_core = med_rate(two, True) / 2
    per_cpu = statistics.median(r.pages / r.cpu for r in results[two])
    for label, rate in (("steady state / 2", per_core), ("pages per CPU-second", per_cpu)):
        need = 100e6 * 4 / rate / 3600
        print(
            f"paper estimate ({label}: {rate:,.0f} pages/s per core): 100M users x 4 contexts "
            f"= 400M pages = {need:,.0f} core-hours, i.e. {need / 4:,.0f} cores for a 4-hour "
            f"nightly window ({need / 8:,.0f} for 8 hours); page building only, not loading "
            "the pages into a serving store"
        )


if __name__ == "__main__":
    main()
