"""Play events on a real `rowrank serve --workers 2`: ingest rate while pages are served, page
latency with and without events, freshness, and a kill test.

    .venv/bin/python bench/bench_events.py                      # default world: 5,000 users
    .venv/bin/python bench/bench_events.py --duration 10 --kills 5 --seed 0

Builds (once, cached in --work) the default simulated world and a model, as
bench/bench_serve_load.py does. Then, each against a fresh event log (`--state`):

1. Load, side by side: wrk drives pages (a closed loop of --connections connections, members
   and devices in turn, at 20:00 the day after the cut-off; with --page-delay-ms each
   connection pauses that long between pages, below saturation) for --duration seconds; then the
   same wrk run again while --event-clients Python threads post batches of --batch events, at
   --event-rate events/s in all (0: back to back). Reported: pages/s and page p50/p99 of both
   runs, events/s acknowledged.
   Targets (issue 23): >= 5,000 events/s with page p99 within 1.2x of the run without events.
2. Freshness: --fresh-events events, one at a time, each a member playing a movie their page
   offers to progress 0.4. After the 2xx, pages of that member are asked on fresh connections
   (the kernel picks the worker) until one has the movie in Continue Watching at 0.4; the time
   from the 2xx to that page is the freshness. Target: p99 <= 1 s.
   With --redis, the log is a Redis stream (`--state redis://`, Debian's redis-server started
   in --work with appendonly yes, appendfsync always) shared by two `rowrank serve --workers 1`,
   as on two machines: events go to one, pages are asked of the other.
3. Kill test: two client threads post batches of unique events, retrying a batch until it is
   acknowledged (as a client does); at --kills seeded moments SIGKILL hits either one worker
   (the supervisor restarts it) or the whole server's process group (started again on the same
   port and log). Afterwards the log is read and replayed: acknowledged events missing from it
   (lost) and events written or applied more than once must both be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_load import ROWRANK, build_model, free_port, lua_script, parse_wrk, wait_ready

from engine.events.log import LOG_FILE
from engine.events.state import LiveState

TIMEOUT = 30.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(
    model: Path, state: str | Path, port: int, log_path: Path, workers: int = 2
) -> Server:
    env = {**os.environ, "ROWRANK_WORKER_MIN_UPTIME": "0.5"}
    cmd = [*ROWRANK, "serve", str(model), "--port", str(port), "--workers", str(workers)]
    cmd += ["--state", str(state)]
    log = log_path.open("ab")
    # Its own process group: the kill test can SIGKILL the supervisor and every worker at once.
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = Server(proc, port, log)
    wait_ready(server.url, workers)
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    server.log.close()


def request(
    port: int, method: str, path: str, body: bytes | None = None, with_pid: bool = False
) -> tuple[int, int, bytes]:
    """On a fresh connection: (worker pid or -1, status, body); status 0 on a socket error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    pid = -1
    try:
        if with_pid:
            conn.request("GET", "/readyz")
            r = conn.getresponse()
            doc = r.read()
            if r.status == 200:
                pid = int(json.loads(doc)["pid"])
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return pid, r.status, r.read()
    except (OSError, http.client.HTTPException):
        return pid, 0, b""
    finally:
        conn.close()


@dataclass(frozen=True)
class World:
    model: Path
    members: list[str]
    titles: list[str]
    cutoff: datetime
    at: datetime


def world_of(model: Path) -> World:
    from engine.training.model_dir import read_history

    _, h = read_history(model)
    cutoff = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC)
    at = (cutoff + timedelta(hours=20)).replace(minute=0, second=0, microsecond=0)
    return World(model, [str(u) for u in h.user_ids], [str(t) for t in h.title_ids], cutoff, at)


def event(
    w: World, event_id: str, member: str, title: str, progress: float, ts: datetime
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": member,
        "title_id": title,
        "ts": ts.isoformat(),
        "device": "tv",
        "seconds_watched": round(progress * 3000.0, 1),
        "progress": progress,
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ----- 1. ingest while pages are served --------------------------------------------------------


def event_bodies(w: World, n_batches: int, batch: int, seed: int, tag: str) -> list[bytes]:
    """POST bodies made before the clock starts, so the load generator's own Python does not
    take the cores the server is measured on."""
    rng = np.random.default_rng(seed)
    span = (w.at - w.cutoff).total_seconds()
    bodies = []
    for b in range(n_batches):
        members = rng.integers(0, len(w.members), batch)
        titles = rng.integers(0, len(w.titles), batch)
        offsets = rng.uniform(0, span, batch)
        progress = rng.uniform(0.05, 1.0, batch).round(3)
        docs = [
            event(
                w,
                f"{tag}-{b}-{i}",
                w.members[members[i]],
                w.titles[titles[i]],
                float(progress[i]),
                w.cutoff + timedelta(seconds=float(offsets[i])),
            )
            for i in range(batch)
        ]
        bodies.append(json.dumps({"events": docs}).encode())
    return bodies


def post_loop(
    port: int,
    bodies: list[bytes],
    stop: threading.Event,
    accepted: list[int],
    failures: list[int],
    interval: float = 0.0,
) -> None:
    """Event batches on one keep-alive connection until `stop` (or the bodies run out): one
    every `interval` seconds (a batch late by more is sent at once), or back to back."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    try:
        for k, body in enumerate(bodies):
            if stop.is_set():
                break
            wait = start + k * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                conn.request("POST", "/v1/events", body=body, headers=headers)
                r = conn.getresponse()
                doc = r.read()
                if r.status == 200:
                    accepted.append(int(json.loads(doc)["accepted"]))
                else:
                    failures.append(r.status)
            except (OSError, http.client.HTTPException):
                failures.append(0)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    finally:
        conn.close()


def wrk_pages(
    w: World, url: str, script: Path, duration: int, connections: int
) -> tuple[float, float, float, int]:
    cmd = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*cmd, f"-d{duration}s", url], check=True, capture_output=True, text=True
    ).stdout
    rps, p50, p99, _, non_2xx, sock = parse_wrk(out)
    return rps, p50, p99, non_2xx + sock


def with_events(
    w: World, server: Server, ingest: Server, script: Path, args: argparse.Namespace, round_: int
) -> tuple[tuple[float, float, float, int], int, float, int]:
    """One wrk run on `server` while events are posted to `ingest`: (wrk figures, events
    acknowledged, seconds, failed batches)."""
    stop = threading.Event()
    counts: list[int] = []
    failures: list[int] = []
    # enough for 20,000 events/s for the whole run
    n_batches = (20_000 * (args.duration + 2)) // (args.batch * args.event_clients) + 1
    bodies = [
        event_bodies(w, n_batches, args.batch, args.seed + 1 + k, f"load{round_}-{k}")
        for k in range(args.event_clients)
    ]
    threads = posters(ingest, bodies, args, stop, counts, failures)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    pages = wrk_pages(w, server.url, script, args.duration, args.connections)
    stop.set()
    for t in threads:
        t.join()
    return pages, sum(counts), time.perf_counter() - t0, len(failures)


def posters(
    server: Server,
    bodies: list[list[bytes]],
    args: argparse.Namespace,
    stop: threading.Event,
    counts: list[int],
    failures: list[int],
) -> list[threading.Thread]:
    """One thread per event client, each posting its bodies until `stop`, paced so that all
    clients together send --event-rate events/s (0: each client back to back)."""
    interval = args.batch * args.event_clients / args.event_rate if args.event_rate else 0.0
    return [
        threading.Thread(
            target=post_loop, args=(server.port, body, stop, counts, failures, interval)
        )
        for body in bodies
    ]


def server_cpu_seconds(server: Server) -> float:
    """User + system CPU of the supervisor and its workers so far (/proc)."""
    total = 0
    for pid in [server.proc.pid, *worker_pids(server.proc.pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def events_alone(w: World, server: Server, args: argparse.Namespace) -> tuple[float, float]:
    """Events at --event-rate with no page load: (events/s, server CPU microseconds an event)."""
    stop = threading.Event()
    counts: list[int] = []
    failures: list[int] = []
    n_batches = int(args.event_rate * args.duration) // (args.batch * args.event_clients) + 1
    bodies = [
        event_bodies(w, n_batches, args.batch, args.seed + 50 + k, f"alone-{k}")
        for k in range(args.event_clients)
    ]
    threads = posters(server, bodies, args, stop, counts, failures)
    cpu0, t0 = server_cpu_seconds(server), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, cpu = time.perf_counter() - t0, server_cpu_seconds(server) - cpu0
    n = max(sum(counts), 1)
    return n / seconds, 1e6 * cpu / n


def bench_load(w: World, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """--rounds pairs of runs, without then with events, on one server: the machine's other
    load drifts, so the pairs are compared and the medians reported."""
    state = Path(tempfile.mkdtemp(prefix="events-load-", dir=work))
    script = work / "pages.lua"
    rng = np.random.default_rng(args.seed)
    users = [w.members[i] for i in rng.permutation(len(w.members))[:500]]
    lua_script(script, users, w.at.isoformat().replace("+", "%2B"), args.page_delay_ms)
    server = start_server(w.model, state, free_port(), work / "server-load.log")
    ingest = server
    if args.ingest_server:  # events to a server of their own on the same log
        ingest = start_server(w.model, state, free_port(), work / "server-ingest.log", 1)
    rounds = []
    try:
        wrk_pages(w, server.url, script, 3, args.connections)  # warm-up
        alone_rate, cpu_us = events_alone(w, ingest, args)
        print(
            f"load: events alone (no pages) {alone_rate:,.0f}/s, server CPU {cpu_us:.0f} us an "
            f"event ({alone_rate * cpu_us / 1e6:.2f} cores)",
            flush=True,
        )
        for r in range(args.rounds):
            base = wrk_pages(w, server.url, script, args.duration, args.connections)
            pages, events, seconds, failed = with_events(w, server, ingest, script, args, r)
            rounds.append((base, pages, events / seconds, failed))
            print(
                f"load round {r + 1}: without events {base[0]:.0f} pages/s p50 {base[1]:.1f} ms "
                f"p99 {base[2]:.1f} ms ({base[3]} errors) | with {events / seconds:,.0f} events/s "
                f"({failed} failed batches): {pages[0]:.0f} pages/s p50 {pages[1]:.1f} ms p99 "
                f"{pages[2]:.1f} ms ({pages[3]} errors) | p99 ratio {pages[2] / base[2]:.2f}x",
                flush=True,
            )
    finally:
        stop_server(server)
        if ingest is not server:
            stop_server(ingest)
    log_lines = len((state / LOG_FILE).read_bytes().splitlines())
    shutil.rmtree(state, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    out = {
        "pages_s": med([r[0][0] for r in rounds]),
        "p50_ms": med([r[0][1] for r in rounds]),
        "p99_ms": med([r[0][2] for r in rounds]),
        "pages_s_events": med([r[1][0] for r in rounds]),
        "p50_ms_events": med([r[1][1] for r in rounds]),
        "p99_ms_events": med([r[1][2] for r in rounds]),
        "events_s": med([r[2] for r in rounds]),
        "p99_ratio": med([r[1][2] / r[0][2] for r in rounds]),
        "failed_batches": sum(r[3] for r in rounds),
        "events_alone_s": alone_rate,
        "server_cpu_us_per_event": cpu_us,
        "log_lines": log_lines,
    }
    print(
        f"load, medians of {len(rounds)} rounds: without events {out['pages_s']:.0f} pages/s p99 "
        f"{out['p99_ms']:.1f} ms; with {out['events_s']:,.0f} events/s {out['pages_s_events']:.0f} "
        f"pages/s p99 {out['p99_ms_events']:.1f} ms; p99 ratio {out['p99_ratio']:.2f}x",
        flush=True,
    )
    return out


# ----- 2. freshness ------------------------------------------------------------------------------


def cw_progress(page: bytes, title: str) -> float | None:
    doc = json.loads(page)
    for row in doc["rows"]:
        if row["kind"] == "continue_watching":
            for item in row["items"]:
                if item["title_id"] == title:
                    return float(item["progress"])
    return None


def fresh_targets(w: World, port: int, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(member, movie): members whose page has a Continue Watching row (so one more title keeps
    it long enough to show), each with a movie another row of their page offers."""
    from engine.training.model_dir import read_history

    _, h = read_history(w.model)
    out: list[tuple[str, str]] = []
    at = w.at.isoformat().replace("+", "%2B")
    for i in rng.permutation(len(w.members)):
        if len(out) >= n:
            break
        member = w.members[i]
        _, status, body = request(port, "GET", f"/v1/users/{member}/page?device=tv&at={at}")
        if status != 200:
            continue
        rows = json.loads(body)["rows"]
        if not any(r["kind"] == "continue_watching" for r in rows):
            continue
        movie = next(
            (
                it["title_id"]
                for r in rows
                if r["kind"] not in ("continue_watching", "watch_again")
                for it in r["items"]
                if h.series[h.title_index(it["title_id"])] < 0
            ),
            None,
        )
        if movie is not None:
            out.append((member, movie))
    return out


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's redis-server on a free port, configured as the Redis event log requires."""
    import redis

    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


def bench_freshness(w: World, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="events-fresh-", dir=work))
    rng = np.random.default_rng(args.seed)
    redis_proc = None
    if args.redis:  # two servers, as on two machines, sharing one Redis stream
        redis_proc, url = start_redis(state)
        server = start_server(w.model, url, free_port(), work / "server-fresh.log", workers=1)
        reader = start_server(w.model, url, free_port(), work / "server-fresh-2.log", workers=1)
    else:
        server = reader = start_server(w.model, state, free_port(), work / "server-fresh.log")
    at = w.at.isoformat().replace("+", "%2B")
    times: list[float] = []
    polls: list[int] = []
    other_worker = never = 0
    try:
        targets = fresh_targets(w, reader.port, args.fresh_events, rng)
        for k, (member, movie) in enumerate(targets):
            ev = event(w, f"fresh-{k}", member, movie, 0.4, w.at - timedelta(minutes=30))
            taker, status, _ = request(
                server.port,
                "POST",
                "/v1/events",
                json.dumps({"events": [ev]}).encode(),
                with_pid=True,
            )
            assert status == 200, status
            acked = time.perf_counter()
            for n in range(1, 200):
                pid, status, page = request(
                    reader.port, "GET", f"/v1/users/{member}/page?device=tv&at={at}", with_pid=True
                )
                if status == 200 and cw_progress(page, movie) is not None:
                    times.append(time.perf_counter() - acked)
                    polls.append(n)
                    other_worker += int(pid != taker)
                    break
                if time.perf_counter() - acked > 5.0:
                    never += 1
                    break
            else:
                never += 1
    finally:
        stop_server(server)
        if reader is not server:
            stop_server(reader)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
    shutil.rmtree(state, ignore_errors=True)
    ms = [1000 * t for t in times]
    print(
        f"freshness: {len(times)} of {len(targets)} events shown; from the 2xx to the first page "
        f"showing the play: p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, max "
        f"{max(ms, default=float('nan')):.1f} ms; {other_worker} shown by the worker that did not "
        f"take the event; first page already showed it {polls.count(1)} times; never within 5 s: "
        f"{never}",
        flush=True,
    )
    return {
        "events": len(targets),
        "shown": len(times),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=float("nan")),
        "other_worker": other_worker,
        "never": never,
    }


# ----- 3. kill test ------------------------------------------------------------------------------


def worker_pids(server_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def bench_kills(w: World, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="events-kill-", dir=work))
    rng = np.random.default_rng(args.seed)
    port = free_port()
    log_path = work / "server-kill.log"
    server = start_server(w.model, state, port, log_path)
    acked: set[str] = set()
    acked_lock = threading.Lock()
    done = threading.Event()
    attempts = [0]
    span = (w.at - w.cutoff).total_seconds()

    def client(k: int) -> None:
        crng = np.random.default_rng(args.seed + 100 + k)
        b = 0
        while not done.is_set():
            docs = [
                event(
                    w,
                    f"kill{k}-{b}-{i}",
                    w.members[int(crng.integers(len(w.members)))],
                    w.titles[int(crng.integers(len(w.titles)))],
                    0.5,
                    w.cutoff + timedelta(seconds=float(crng.uniform(0, span))),
                )
                for i in range(args.batch)
            ]
            body = json.dumps({"events": docs}).encode()
            while True:  # a client retries a batch until it is acknowledged
                attempts[0] += 1
                _, status, _ = request(port, "POST", "/v1/events", body)
                if status == 200:
                    with acked_lock:
                        acked.update(d["event_id"] for d in docs)
                    break
                time.sleep(0.05)
            b += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    kinds = []
    try:
        for kill in range(args.kills):
            time.sleep(float(rng.uniform(0.3, 1.5)))
            if kill % 2 == 0:  # one worker: the supervisor restarts it
                pids = worker_pids(server.proc.pid)
                victim = pids[int(rng.integers(len(pids)))]
                os.kill(victim, signal.SIGKILL)
                kinds.append("worker")
                time.sleep(0.2)
                wait_ready(server.url, 2)
            else:  # the whole server, supervisor and workers at once
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
                server.log.close()
                kinds.append("server")
                with contextlib.suppress(ProcessLookupError):
                    while True:  # until no process of the group is left
                        os.killpg(server.proc.pid, 0)
                        time.sleep(0.05)
                server = start_server(w.model, state, port, log_path)
        time.sleep(0.5)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=120)
        stop_server(server)
    ids = [json.loads(line)["event_id"] for line in (state / LOG_FILE).read_bytes().splitlines()]
    replay = LiveState(state)
    applied = replay.applied
    replay.close()
    lost = len(acked - set(ids))
    written_twice = len(ids) - len(set(ids))
    applied_twice = applied - len(set(ids))
    print(
        f"kill test: kills {', '.join(kinds)}; {len(acked):,} events acknowledged "
        f"({attempts[0]:,} POSTs with retries), {len(ids):,} in the log; lost {lost}, written "
        f"twice {written_twice}, applied twice on replay {applied_twice}",
        flush=True,
    )
    shutil.rmtree(state, ignore_errors=True)
    return {
        "kills": kinds,
        "acked": len(acked),
        "logged": len(ids),
        "lost": lost,
        "written_twice": written_twice,
        "applied_twice": applied_twice,
    }


def model_for(work: Path, users: int) -> Path:
    """bench_serve_load's model, reused when `rowrank train` (with its default tuning budget)
    made it from the data as it is now: build_model checks it against a budget of 0 and so
    trains it again on every run."""
    from engine.cli import TUNE_BUDGET_S
    from engine.config import load_config
    from engine.training.train import trained_with

    model, data = work / f"model-{users}", work / f"data-{users}"
    if (data / "dataset.json").exists() and trained_with(
        model, data, load_config(), tune_budget=TUNE_BUDGET_S
    ):
        return model
    return build_model(work, users)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rowrank-bench-events"))
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk run (<= 30)")
    ap.add_argument("--connections", type=int, default=4, help="wrk page connections")
    ap.add_argument(
        "--page-delay-ms",
        type=float,
        default=0.0,
        help="load: each wrk connection waits this long after an answer (0: a closed loop "
        "that saturates the cores; > 0 paces pages below saturation, as a service runs)",
    )
    ap.add_argument("--event-clients", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100, help="events per POST")
    ap.add_argument(
        "--event-rate",
        type=float,
        default=5000,
        help="events/s offered during the load run (default 5000, the target; 0: as fast as "
        "the server takes them)",
    )
    ap.add_argument(
        "--ingest-server",
        action="store_true",
        help="load: post the events to a second `rowrank serve --workers 1` on the same log, so "
        "the page workers only read it",
    )
    ap.add_argument("--rounds", type=int, default=3, help="load: pairs of runs (default 3)")
    ap.add_argument("--fresh-events", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["load", "freshness", "kills"], action="append")
    ap.add_argument(
        "--redis",
        action="store_true",
        help="freshness against a Redis event log shared by two servers (redis-server needed)",
    )
    args = ap.parse_args()
    args.duration = min(args.duration, 30)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    w = world_of(model_for(work, args.users))
    print(
        f"model {w.model}: {len(w.members):,} members, {len(w.titles):,} titles; pages at "
        f"{w.at.isoformat()}; {os.cpu_count()} cores; 2 workers",
        flush=True,
    )
    only = set(args.only or ["load", "freshness", "kills"])
    results: dict[str, Any] = {}
    if "load" in only:
        results["load"] = bench_load(w, work, args)
    if "freshness" in only:
        results["freshness"] = bench_freshness(w, work, args)
    if "kills" in only:
        results["kills"] = bench_kills(w, work, args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
