"""`rowrank serve --workers 2` against gunicorn with uvicorn workers, same model, same cores.

    .venv/bin/python bench/bench_serve_supervisor.py [--model DIR] [--rounds 2] [--duration 10]

Two ways to run the same app (engine.serving.http:app_from_env) with 2 worker processes:

- rowrank: `rowrank serve MODEL --workers 2`, rowrank's supervisor (engine/serving/runner.py):
  one SO_REUSEPORT listening socket per worker, the kernel spreads connections over them;
- gunicorn: `gunicorn -k uvicorn.workers.UvicornWorker -w 2 --reuse-port`, gunicorn's arbiter
  binds one socket and the workers accept on it in turn.

Both get the same environment (ROWRANK_SERVE_CONFIG, a fresh PROMETHEUS_MULTIPROC_DIR), are
pinned to the same cores (all of them; wrk shares the last one, as in bench_serve_load.py), and
are driven by the same wrk closed loop (--connections, each request another member and device,
at prime time after the model's cut-off). The two alternate, --rounds times, so load from other
tenants hits both alike; each run prints pages/s, p50 and p99, and the end the medians. wrk's
non-2xx and socket errors fail the run. The model: --model, else the default world built and
trained once under --work (bench_serve_load.build_model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_load import (  # a sibling script, on the path just above
    ROWRANK,
    build_model,
    free_port,
    lua_script,
    parse_wrk,
    wait_ready,
)

MAX_DURATION = 30
WORKERS = 2


@dataclass
class Run:
    stack: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx answers + socket errors


def server_cmd(stack: str, port: int) -> list[str]:
    if stack == "rowrank":
        return [*ROWRANK, "serve", "MODEL", "--port", str(port), "--workers", str(WORKERS)]
    gunicorn = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker"]
    return [
        *gunicorn,
        "-w",
        str(WORKERS),
        "--bind",
        f"127.0.0.1:{port}",
        "--reuse-port",
        "--timeout",
        "30",
        "--log-level",
        "warning",
        "engine.serving.http:app_from_env()",
    ]


def run_one(
    stack: str, model: Path, script: Path, duration: int, warmup: int, connections: int, log: Path
) -> Run:
    ncpu = os.cpu_count() or 1
    taskset = shutil.which("taskset")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(model) if a == "MODEL" else a for a in server_cmd(stack, port)]
    if taskset:
        cmd = [taskset, "-c", ",".join(str(c) for c in range(ncpu)), *cmd]
    with tempfile.TemporaryDirectory(prefix="bench-supervisor-") as tmp:
        env = {
            **os.environ,
            # What `rowrank serve` hands its workers; gunicorn's workers read the same.
            "ROWRANK_SERVE_CONFIG": json.dumps({"model_dir": str(model)}),
            "PROMETHEUS_MULTIPROC_DIR": tmp,
        }
        with log.open("wb") as out:
            server = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                wait_ready(url, WORKERS)
                wrk = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", "--latency"]
                wrk += ["-s", str(script)]
                if taskset:
                    wrk = [taskset, "-c", str(ncpu - 1), *wrk]
                subprocess.run([*wrk, f"-d{warmup}s", url], check=True, capture_output=True)
                text = subprocess.run(
                    [*wrk, f"-d{duration}s", url], check=True, capture_output=True, text=True
                ).stdout
                rps, p50, p99, total, non_2xx, sock = parse_wrk(text)
                return Run(stack, rps, p50, p99, total, non_2xx + sock)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="model directory (default: build the default world's)")
    ap.add_argument("--users", type=int, default=5000, help="members of the built world")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rowrank-bench-serve"))
    ap.add_argument("--rounds", type=int, default=2, help="runs of each stack, alternating")
    ap.add_argument("--duration", type=int, default=10, help=f"seconds a run (max {MAX_DURATION})")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up a run")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--sample-users", type=int, default=2000, help="distinct members requested")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    from engine.training.model_dir import read_history

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model).resolve() if args.model else build_model(work, args.users)
    manifest, history = read_history(model)
    users = sorted(str(u) for u in history.user_ids.tolist())[: args.sample_users]
    at_time = datetime.fromisoformat(manifest["cutoff"]) + timedelta(hours=20)
    at = at_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    script = work / "supervisor-pages.lua"
    lua_script(script, users, at)
    duration = min(args.duration, MAX_DURATION)
    print(
        f"model {manifest['model_version']} ({model}), {len(users):,} members, at={at}, "
        f"{WORKERS} workers, wrk {args.connections} connections, {duration} s a run, "
        f"{args.rounds} round(s), cpus={os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    runs: list[Run] = []
    for i in range(args.rounds):
        order = ("rowrank", "gunicorn") if i % 2 == 0 else ("gunicorn", "rowrank")
        for stack in order:
            t = time.monotonic()
            r = run_one(
                stack,
                model,
                script,
                duration,
                args.warmup,
                args.connections,
                work / f"server-{stack}-{i}.log",
            )
            runs.append(r)
            print(
                f"round {i + 1} {stack:>8}: {r.rps:6.0f} pages/s, p50 {r.p50_ms:5.1f} ms, "
                f"p99 {r.p99_ms:5.1f} ms, {r.requests} requests, {r.bad} errors "
                f"({time.monotonic() - t:.0f} s with start-up; load average "
                f"{os.getloadavg()[0]:.1f})",
                flush=True,
            )
    print(f"\n{'stack':>8} {'pages/s':>8} {'p50 ms':>7} {'p99 ms':>7}  (medians of the runs)")
    for stack in ("rowrank", "gunicorn"):
        mine = [r for r in runs if r.stack == stack]
        print(
            f"{stack:>8} {statistics.median(r.rps for r in mine):>8.0f} "
            f"{statistics.median(r.p50_ms for r in mine):>7.1f} "
            f"{statistics.median(r.p99_ms for r in mine):>7.1f}"
        )
    return 1 if any(r.bad for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
