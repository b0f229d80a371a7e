"""Load test of `rowrank serve` on 127.0.0.1: pages/s, p50 and p99 at 1 and 2 workers.

    .venv/bin/python bench/bench_serve_load.py                 # default world: 5,000 users
    .venv/bin/python bench/bench_serve_load.py --duration 10 --connections 8 --workers 1,2

Builds (once, cached in --work) the default simulated world with `rowrank simulate` and a model
with `rowrank train`, then for each worker count starts `rowrank serve` as a subprocess, warms it
up, and drives it with wrk (Debian `apt-get install -y wrk`) for --duration seconds: a closed
loop of --connections connections, each request a different member and device in turn. The
client is pinned to the last core with taskset and a 1-worker server to the others, so with 2
cores a 1-worker run has client and server apart; a 2-worker run shares a core with the client
(said in the output). wrk exits 0 even when every answer is an error, so its "Non-2xx" line and
socket errors are read and reported; any of them fails the run. After each run one /metrics
scrape (with several workers it sums them all, whichever worker answers) gives the pages each
worker built (`rowrank_worker_pages{pid}`), the mean page build time inside the server and the
fallback pages.

Targets (the task): >= 300 pages/s at 2 workers with p99 < 50 ms and zero non-2xx.
Every run is bounded: wrk stops after --duration (at most 30 s), the server is stopped after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

ROWRANK = [sys.executable, "-m", "engine.cli"]
MAX_DURATION = 30
DEVICES = ("tv", "mobile", "web", "tablet")


@dataclass
class Result:
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    pinning: str
    page_ms: float  # mean build time of a page inside the server (/metrics, all workers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def build_model(work: Path, users: int) -> Path:
    data, model = work / f"data-{users}", work / f"model-{users}"
    if not (data / "dataset.json").exists():
        print(f"simulating the default world ({users:,} users) into {data} ...", flush=True)
        subprocess.run([*ROWRANK, "simulate", str(data), "--users", str(users)], check=True)
    from engine.config import load_config
    from engine.training.train import trained_with

    # Trained again when the saved model is missing or is not what `rowrank train` writes now
    # (another model format, built-in config or world).
    if not trained_with(model, data, load_config()):
        print(f"training {model} ...", flush=True)
        shutil.rmtree(model, ignore_errors=True)
        subprocess.run([*ROWRANK, "train", str(data), str(model)], check=True)
    return model


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_ready(url: str, workers: int, timeout: float = 120) -> None:
    """Until every worker answers /readyz with 200 (each reports its pid)."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(f"{url}/readyz")
        if status == 200:
            pids.add(json.loads(body)["pid"])
            if len(pids) >= workers:
                return
        time.sleep(0.05)
    raise SystemExit(f"server at {url} not ready with {workers} worker(s) after {timeout} s")


def scrape(port: int) -> tuple[int, str]:
    """(pid of the worker that answered, its /metrics text), both asked on one connection. With
    several workers the text already sums every worker, so one scrape is the whole server."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        pid = int(json.loads(conn.getresponse().read())["pid"])
        conn.request("GET", "/metrics")
        return pid, conn.getresponse().read().decode()
    finally:
        conn.close()


def sample(metrics: str, name: str) -> float:
    """One unlabelled sample of a Prometheus text page (NaN when absent)."""
    m = re.search(rf"^{name} ([\d.e+-]+)$", metrics, re.M)
    return float(m.group(1)) if m else float("nan")


def pages_by_worker(metrics: str, answered: int) -> dict[int, float]:
    """`rowrank_worker_pages` by pid: one series per worker with a `pid` label (several
    workers), or one unlabelled series for a single process, which is then `answered`'s."""
    out: dict[int, float] = {}
    for m in re.finditer(r"^rowrank_worker_pages(?:\{([^}]*)\})? (\S+)$", metrics, re.M):
        pid = re.search(r'pid="(\d+)"', m.group(1) or "")
        out[int(pid.group(1)) if pid else answered] = float(m.group(2))
    return out


def lua_script(path: Path, users: list[str], at: str, delay_ms: float = 0.0) -> None:
    """wrk's requests: members and devices in turn at `at`; each connection waits `delay_ms`
    after an answer before its next request (0: a closed loop, as fast as answers come)."""
    ids = ",".join(json.dumps(u) for u in users)
    devices = ",".join(json.dumps(d) for d in DEVICES)
    pause = f"delay = function() return {delay_ms:g} end\n" if delay_ms > 0 else ""
    path.write_text(
        pause
        + f"""local users = {{{ids}}}
local devices = {{{devices}}}
local i = 0
request = function()
  i = i + 1
  local u = users[(i % #users) + 1]
  local d = devices[(math.floor(i / #users) + i) % #devices + 1]
  return wrk.format("GET", "/v1/users/" .. u .. "/page?device=" .. d .. "&at={at}")
end
"""
    )


def parse_wrk(out: str) -> tuple[float, float, float, int, int, int]:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non_2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(g) for g in m.groups()) if m else 0
    return rps, p50, p99, total, non_2xx, sock


def run(
    model: Path,
    workers: int,
    script: Path,
    duration: int,
    connections: int,
    warmup: int,
    log_dir: Path,
) -> Result:
    ncpu = os.cpu_count() or 1
    client_cpu = str(ncpu - 1)
    server_cpus = ",".join(str(c) for c in range(ncpu - 1)) if ncpu > 1 else "0"
    if workers >= ncpu or ncpu == 1:
        server_cpus = ",".join(str(c) for c in range(ncpu))
        pinning = f"server on cpus {server_cpus}, client on cpu {client_cpu} (shared)"
    else:
        pinning = f"server on cpus {server_cpus}, client on cpu {client_cpu} (apart)"
    taskset = shutil.which("taskset")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*ROWRANK, "serve", str(model), "--port", str(port), "--workers", str(workers)]
    if taskset:
        cmd = [taskset, "-c", server_cpus, *cmd]
    log = (log_dir / f"server-{workers}.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, workers)
        wrk = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", "--latency"]
        wrk += ["-s", str(script)]
        if taskset:
            wrk = [taskset, "-c", client_cpu, *wrk]
        subprocess.run([*wrk, f"-d{warmup}s", url], check=True, capture_output=True)
        out = subprocess.run(
            [*wrk, f"-d{duration}s", url], check=True, capture_output=True, text=True
        ).stdout
        print(out, flush=True)
        rps, p50, p99, total, non_2xx, sock = parse_wrk(out)
        # The same server without a page: what the HTTP layer alone can do (/readyz).
        bare = [w for w in wrk if w not in ("-s", str(script))]
        ready = subprocess.run(
            [*bare, "-d3s", f"{url}/readyz"], check=True, capture_output=True, text=True
        ).stdout
        r_rps, r_p50, r_p99, _, r_bad, _ = parse_wrk(ready)
        print(
            f"/readyz (no page), same server: {r_rps:.0f} req/s, p50 {r_p50:.2f} ms, "
            f"p99 {r_p99:.2f} ms, {r_bad} non-2xx"
        )
        answered, metrics = scrape(port)
        counts = pages_by_worker(metrics, answered)
        pages = sample(metrics, "rowrank_page_seconds_count")  # every worker's, summed
        build_s = sample(metrics, "rowrank_page_seconds_sum")
        page_ms = 1000 * build_s / pages if pages else float("nan")
        fallback = sample(metrics, "rowrank_fallback_pages_total")
        print(
            "pages per worker (warm-up included): "
            + ", ".join(f"pid {pid} {n:.0f}" for pid, n in sorted(counts.items()))
            + f" (total {pages:.0f}); mean page build {page_ms:.1f} ms; "
            f"{fallback:.0f} fallback pages"
        )
        return Result(workers, rps, p50, p99, total, non_2xx, sock, pinning, page_ms)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def engine_baseline(
    model: Path, users: list[str], at: datetime, seconds: float
) -> tuple[float, float, float]:
    """(pages/s, p50 ms, p99 ms) of `engine.page(...).to_json()` in this process, one thread:
    what the HTTP service is measured against (same members, devices and time)."""
    import engine

    eng = engine.load(model)
    for u in users[:20]:  # warm-up
        eng.page(u, device="tv", at=at).to_json()
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        eng.page(users[i % len(users)], device=DEVICES[i % len(DEVICES)], at=at).to_json()
        times.append(time.perf_counter() - t)
        i += 1
    times.sort()
    total = time.perf_counter() - start
    return len(times) / total, 1000 * times[len(times) // 2], 1000 * times[int(len(times) * 0.99)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=5000, help="simulated members (default 5000)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rowrank-bench-serve"))
    ap.add_argument("--model", help="use this model directory instead of building one")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument(
        "--duration", type=int, default=10, help=f"seconds per run (max {MAX_DURATION})"
    )
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--sample-users", type=int, default=2000, help="distinct members requested")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    duration = min(args.duration, MAX_DURATION)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_model(work, args.users)
    manifest = json.loads((model / "manifest.json").read_text())
    users_file = Path(manifest["data"]["dir"]) / "users.parquet"
    users = pl.read_parquet(users_file)["user_id"].sort().to_list()[: args.sample_users]
    # Prime time on the day after the cut-off: the hour most pages are asked for.
    at_time = datetime.fromisoformat(manifest["cutoff"]) + timedelta(hours=20)
    at = at_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    script = work / "pages.lua"
    lua_script(script, users, at)
    print(
        f"model {manifest['model_version']} ({model}), {len(users):,} members requested, "
        f"at={at}, {args.connections} connections, {duration} s per run, cpus={os.cpu_count()}"
    )
    baseline = engine_baseline(model, users, at_time, seconds=min(5, duration))
    print(
        f"engine alone, in-process, 1 thread: {baseline[0]:.0f} pages/s, p50 {baseline[1]:.1f} "
        f"ms, p99 {baseline[2]:.1f} ms (load average now {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    results = [
        run(model, int(w), script, duration, args.connections, args.warmup, work)
        for w in args.workers.split(",")
    ]
    print(
        f"\n{'workers':>7} {'pages/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'requests':>9} "
        f"{'non-2xx':>8} {'sock err':>8} {'build ms':>8}  pinning"
    )
    failed = False
    for r in results:
        print(
            f"{r.workers:>7} {r.rps:>8.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.requests:>9} "
            f"{r.non_2xx:>8} {r.socket_errors:>8} {r.page_ms:>8.1f}  {r.pinning}"
        )
        failed |= r.non_2xx > 0 or r.socket_errors > 0
    two = [r for r in results if r.workers == 2]
    if two:
        r = two[0]
        ok = r.rps >= 300 and r.p99_ms < 50 and r.non_2xx == 0
        print(
            f"target (2 workers: >= 300 pages/s, p99 < 50 ms, 0 non-2xx): "
            f"{'met' if ok else 'MISSED'} ({r.rps:.0f} pages/s, p99 {r.p99_ms:.1f} ms, "
            f"{r.non_2xx} non-2xx)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
