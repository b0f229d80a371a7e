"""Precompute killed again and again: SIGKILL a real `rowrank precompute` (parent and workers) at
N seeded random moments, rerun the same command after each kill, and compare the final output
with an uninterrupted run of the same job.

    .venv/bin/python bench/bench_precompute_kills.py                # small world, 300 users
    .venv/bin/python bench/bench_precompute_kills.py --model models/demo --users 1000 --kills 5

A moment is drawn (numpy Generator seeded with --seed) as a point of progress and a delay: kill
k waits until a seeded share of the shards is done (sorted uniform draws, so the kills walk
through the job; a share already reached kills during start-up and model loading), then a
seeded delay of up to one shard's time, so the kill lands anywhere in a shard: computing,
writing the temporary file, renaming it, writing the done marker, or the manifest.

Printed: where each kill landed (seconds into the run, shards done before and after), the
work lost to the kills (shards recomputed), the total time against the uninterrupted run, and
the checks: pages lost (users of the job missing from the output), pages duplicated, and
whether every output file is byte-identical to the uninterrupted run's. Exit 1 if any check
fails. tests/serving/test_faults.py runs the same scenario with 3 kills on 24 users.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROWRANK = (sys.executable, "-m", "engine.cli")
AT = "2030-01-07T20:00:00+00:00"
DONE_DIR = "done"  # engine.serving.precompute.DONE_DIR, not imported: this process stays light


@dataclass(frozen=True)
class Job:
    """One precompute job (the same argv for the reference, the killed runs and the rerun)."""

    model: Path
    users_file: Path
    shard_size: int
    workers: int
    devices: tuple[str, ...] = ("tv",)

    def argv(self, out: Path) -> list[str]:
        argv = [*ROWRANK, "precompute", str(self.model), str(out), "--users", str(self.users_file)]
        for d in self.devices:
            argv += ["--device", d]
        argv += ["--at", AT, "--shard-size", str(self.shard_size), "--workers", str(self.workers)]
        return argv

    @property
    def n_users(self) -> int:
        return len(self.users_file.read_text().split())

    @property
    def n_shards(self) -> int:
        return -(-self.n_users // self.shard_size)


@dataclass
class Kill:
    target_shards: int  # kill once this many shards are done ...
    delay: float  # ... plus this many seconds
    at_seconds: float = 0.0  # when it landed, from the start of that run
    done_before: int = 0  # shards done when that run started
    done_after: int = 0  # shards done (verified markers) after the kill
    temp_files: int = 0  # temporary files the kill left behind
    finished_first: bool = False  # the run completed before the moment came


@dataclass
class Figures:
    n_shards: int
    n_pages: int
    reference_seconds: float
    kills: list[Kill]
    final_seconds: float
    final_summary: str
    total_seconds: float
    pages_lost: int
    pages_duplicated: int
    identical: bool
    differing: list[str] = field(default_factory=list)

    @property
    def landed(self) -> int:
        return sum(not k.finished_first for k in self.kills)

    def problems(self) -> list[str]:
        out = []
        if self.pages_lost:
            out.append(f"{self.pages_lost} page(s) lost")
        if self.pages_duplicated:
            out.append(f"{self.pages_duplicated} page(s) duplicated")
        if not self.identical:
            out.append(f"output differs from the uninterrupted run: {self.differing[:5]}")
        if self.landed < len(self.kills):
            out.append(f"only {self.landed} of {len(self.kills)} kills landed before completion")
        return out

    def report(self) -> str:
        lines = [
            f"job: {self.n_pages:,} pages in {self.n_shards} shards; uninterrupted run "
            f"{self.reference_seconds:.1f} s",
        ]
        for i, k in enumerate(self.kills, 1):
            if k.finished_first:
                lines.append(f"kill {i}: the run finished before its moment (no kill)")
                continue
            lines.append(
                f"kill {i}: SIGKILL {k.at_seconds:.2f} s into the run (target: {k.target_shards} "
                f"shards done + {k.delay:.2f} s), shards done {k.done_before} -> {k.done_after}, "
                f"{k.temp_files} temporary file(s) left"
            )
        redone = self.total_seconds - self.reference_seconds
        lines += [
            f"final rerun: {self.final_summary} ({self.final_seconds:.1f} s)",
            f"all runs together {self.total_seconds:.1f} s = uninterrupted + {redone:.1f} s "
            f"(start-ups and work lost to {self.landed} kills)",
            f"pages lost: {self.pages_lost}, pages duplicated: {self.pages_duplicated}, "
            f"output byte-identical to the uninterrupted run: {'yes' if self.identical else 'NO'}",
        ]
        return "\n".join(lines)


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes), hidden ones included."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def count_done(out: Path) -> int:
    done = out / DONE_DIR
    return sum(1 for p in done.iterdir() if p.suffix == ".json") if done.is_dir() else 0


def count_temp(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if ".tmp." in p.name) if out.is_dir() else 0


def run_to_end(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - t0, done.stdout.strip()


def run_and_kill(argv: list[str], out: Path, kill: Kill) -> float:
    """Start the run in its own process group; SIGKILL the group at the kill's moment."""
    kill.done_before = count_done(out)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        while count_done(out) < kill.target_shards and proc.poll() is None:
            time.sleep(0.002)
        deadline = time.perf_counter() + kill.delay
        while time.perf_counter() < deadline and proc.poll() is None:
            time.sleep(0.001)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    elapsed = time.perf_counter() - t0
    kill.at_seconds = elapsed
    kill.finished_first = proc.returncode == 0
    kill.temp_files = count_temp(out)
    kill.done_after = count_done(out)
    return elapsed


def draw_kills(n_kills: int, n_shards: int, shard_seconds: float, seed: int) -> list[Kill]:
    """Seeded moments: sorted progress targets over the job, each plus a sub-shard delay."""
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.integers(0, n_shards, size=n_kills))
    delays = rng.uniform(0.0, shard_seconds, size=n_kills)
    return [Kill(int(t), float(d)) for t, d in zip(targets, delays, strict=True)]


def scenario(
    job: Job,
    work: Path,
    *,
    kills: int,
    seed: int,
    reference: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Figures:
    """Reference run (unless given), `kills` killed runs, a final rerun, and the checks."""
    if reference is None:
        reference = work / "reference"
        ref_seconds, summary = run_to_end(job.argv(reference))
        log(f"reference: {summary}")
    else:
        ref_seconds = float("nan")
    # One shard's time, from the reference's throughput (start-up included: an upper bound).
    shard_seconds = (ref_seconds if ref_seconds == ref_seconds else 2.0) / job.n_shards
    out = work / "killed"
    plan = draw_kills(kills, job.n_shards, shard_seconds, seed)
    total = 0.0
    for i, kill in enumerate(plan, 1):
        total += run_and_kill(job.argv(out), out, kill)
        log(
            f"kill {i}: {kill.at_seconds:.2f} s, shards {kill.done_before} -> {kill.done_after}"
            + (" (finished first)" if kill.finished_first else "")
        )
    final_seconds, final_summary = run_to_end(job.argv(out))
    total += final_seconds
    log(f"final: {final_summary}")

    expected = job.users_file.read_text().split()
    got = Counter(
        orjson.loads(line)["user_id"]
        for p in sorted(out.glob("shard-*.jsonl"))
        for line in p.read_bytes().splitlines()
    )
    want = Counter({u: len(job.devices) for u in expected})
    ours, theirs = tree(out), tree(reference)
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return Figures(
        n_shards=job.n_shards,
        n_pages=len(expected) * len(job.devices),
        reference_seconds=ref_seconds,
        kills=plan,
        final_seconds=final_seconds,
        final_summary=final_summary.splitlines()[-1] if final_summary else "",
        total_seconds=total,
        pages_lost=sum((want - got).values()),
        pages_duplicated=sum((got - want).values()),
        identical=not differing,
        differing=differing,
    )


def write_users(model: Path, n: int, path: Path) -> Path:
    import engine

    users = [str(u) for u in engine.load(model).history.user_ids[:n]]
    path.write_text("\n".join(users) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: train the small world)")
    ap.add_argument("--users", type=int, default=300, help="first N users of the model")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rowrank-kills-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from bench_faults import _small_model

            print("simulating and training the small world ...", file=sys.stderr)
            model = _small_model(work)
        users = write_users(model, args.users, work / "users.txt")
        job = Job(model.resolve(), users, args.shard_size, args.workers)
        figures = scenario(
            job, work, kills=args.kills, seed=args.seed, log=lambda s: print(s, file=sys.stderr)
        )
    print(figures.report())
    problems = figures.problems()
    for p in problems:
        print(f"FAILED: {p}")
    if not problems:
        print("OK: no page lost, none duplicated, output identical to the uninterrupted run")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
