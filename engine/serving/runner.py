"""Running the HTTP service: `rowrank serve` in one process or in N worker processes.

`run_cli` is `rowrank serve`: one uvicorn process, or `--workers N` processes each listening on
its own SO_REUSEPORT socket under a small supervisor, which restarts a worker that dies or hangs
(no heartbeat for `ROWRANK_WORKER_TIMEOUT` seconds) and gives them one Prometheus multiprocess
directory, so /metrics sums the workers (engine.serving.metrics). docs/serve.md compares it with
gunicorn running uvicorn workers.

The app itself is engine.serving.http; each worker builds it with the uvicorn factory
"engine.serving.http:app_from_env" from the ServeConfig in ROWRANK_SERVE_CONFIG.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from engine.errors import BadRequestError
from engine.serving.http import ENV_CONFIG, ServeConfig, app_from_env
from engine.serving.metrics import ENV_MULTIPROC_DIR, mark_worker_dead
from engine.serving.processes import exit_with_parent

log = logging.getLogger("rowrank.serve")

WORKER_MIN_UPTIME_SECONDS = 10.0  # a worker dying sooner is not restarted: the server stops
ENV_WORKER_MIN_UPTIME = "ROWRANK_WORKER_MIN_UPTIME"  # overrides WORKER_MIN_UPTIME_SECONDS
# A worker whose event loop has not beaten for this long is hung: killed and restarted
# (gunicorn's --timeout, same default). Pages are built off the loop, so a slow page does not
# stop the beat; a loop blocked (a C call holding the GIL, a stopped process) does. 0: never.
WORKER_TIMEOUT_SECONDS = 30.0
ENV_WORKER_TIMEOUT = "ROWRANK_WORKER_TIMEOUT"  # overrides WORKER_TIMEOUT_SECONDS


def run_cli(args: Any) -> int:
    """`rowrank serve` (arguments: engine.cli._serve_args)."""
    from engine.errors import ModelLoadError

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"{model_dir} is not a directory: pass a model directory from `rowrank train`"
        )
    from engine.events.ingest import events_dir_of

    if args.workers < 1:
        raise BadRequestError(f"--workers must be at least 1, got {args.workers}")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        models_root=args.models_root,
        impressions_dir=args.log_impressions,
        impressions_scope=args.log_scope,
        events_dir=events_dir_of(model_dir, getattr(args, "state", None)),
    )
    if cfg.events_dir is not None:  # a log that cannot be opened is one line here, not N workers'
        from engine.events.log import open_log

        open_log(cfg.events_dir).close()
    serve(cfg, host=args.host, port=args.port, workers=args.workers)
    return 0


def serve(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the server until SIGINT/SIGTERM (a clean shutdown flushes impression logs)."""
    import tempfile

    import uvicorn

    try:  # a taken port is a one-line error (exit 2), before any model is loaded
        probe = listen(host, port, reuse_port=False)
    except OSError as exc:
        raise BadRequestError(f"--host/--port: {exc.strerror}") from exc
    port = probe.getsockname()[1]  # --port 0: the free port picked here, for every worker
    probe.close()
    preview = preview_url(Path(cfg.model_dir), host, port)
    if preview is not None:
        print(f"rowrank serve: a member's homepage as HTML: {preview}", flush=True)
    if workers <= 1:
        uvicorn.run(app_from_cfg(cfg), host=host, port=port, access_log=False, log_level="info")
        return
    with tempfile.TemporaryDirectory(prefix="rowrank-serve-") as tmp:
        cfg.state_dir = tmp
        metrics_dir = Path(tmp) / "metrics"  # this server's own: no stale worker's values
        metrics_dir.mkdir()
        saved = {k: os.environ.get(k) for k in (ENV_CONFIG, ENV_MULTIPROC_DIR)}
        os.environ[ENV_CONFIG] = cfg.to_json()
        os.environ[ENV_MULTIPROC_DIR] = str(metrics_dir)  # before any worker starts
        try:
            run_workers(host, port, workers)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _base_url(host: str, port: int) -> str:
    where = f"[{host}]" if ":" in host else host
    return f"http://{where}:{port}"


def preview_url(model_dir: Path, host: str, port: int) -> str | None:
    """The preview URL of a real member of the model (the one with the most plays, among those
    with a country when any has one) at prime time just after the model's data cut-off
    (precompute's default time), so the page has its Continue Watching and New Releases rows.
    None when the model's history cannot be read (the workers then say why)."""
    from urllib.parse import quote, urlencode

    import numpy as np

    from engine.serving.precompute import default_at
    from engine.training.model_dir import read_history

    try:
        _, history = read_history(model_dir)
    except Exception:
        return None
    if history.n_users == 0:
        return None
    plays = np.diff(history.user_offsets)
    has_country = history.user_country != ""
    if has_country.any():
        plays = np.where(has_country, plays, -1)
    user = str(history.user_ids[int(np.argmax(plays))])
    at = default_at(int(history.cutoff_us)).strftime("%Y-%m-%dT%H:%M:%S")
    query = urlencode({"device": "tv", "at": at})
    return f"{_base_url(host, port)}/preview/{quote(user, safe='')}?{query}"


def worker_timeout() -> float:
    """Seconds without a heartbeat before a worker counts as hung (0: never)."""
    return float(os.environ.get(ENV_WORKER_TIMEOUT) or WORKER_TIMEOUT_SECONDS)


def run_workers(host: str, port: int, workers: int) -> None:
    """`workers` processes, each with its own listening socket on host:port (SO_REUSEPORT), so
    the kernel spreads connections over them. uvicorn's own `workers=` shares one socket, and
    the first idle worker accepted a whole burst of keep-alive connections while the other sat
    idle: `ROWRANK_PAGE_THREADS=1 python bench/bench_serve_load.py` gave 2 workers no more than
    1 (118 vs 117 pages/s; one worker built 39 of 1,229 pages). A worker that dies is
    restarted, one that stops beating for `worker_timeout()` seconds is killed and restarted;
    SIGINT or SIGTERM stops them all gracefully (each flushes its impression log)."""
    import multiprocessing
    import signal

    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    started: dict[int, float] = {}  # worker index -> when its current process started
    beats: dict[int, Any] = {}  # worker index -> its heartbeat (time.monotonic(), shared)
    hung: set[int] = set()  # workers killed for not beating: restarted whatever their uptime
    crashed: list[str] = []
    min_uptime = float(os.environ.get(ENV_WORKER_MIN_UPTIME) or WORKER_MIN_UPTIME_SECONDS)
    timeout = worker_timeout()

    def start(i: int) -> Any:
        beat = spawn.Value("d", time.monotonic(), lock=False)  # start-up counts as a beat
        proc = spawn.Process(target=_worker_main, args=(host, port, beat, timeout), daemon=False)
        proc.start()
        started[i], beats[i] = time.monotonic(), beat
        return proc

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(workers)]
    print(
        f"rowrank serve: {workers} workers on {_base_url(host, port)} (Ctrl-C to stop)", flush=True
    )
    try:
        while not stopping.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    silent = time.monotonic() - beats[i].value
                    if timeout and silent > timeout and proc.pid is not None:
                        log.error(
                            "worker %s has not answered for %.0f s (timeout %g s, env %s); "
                            "killing it",
                            proc.pid,
                            silent,
                            timeout,
                            ENV_WORKER_TIMEOUT,
                        )
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.join()
                        hung.add(i)
                    else:
                        continue
                if proc.pid is not None:
                    mark_worker_dead(proc.pid)
                what = f"worker {proc.pid} exited with code {proc.exitcode}"
                if i in hung:
                    hung.discard(i)
                elif time.monotonic() - started[i] < min_uptime:
                    # Dying right after start (a model that does not load, a bind that fails)
                    # would only repeat: stop the server instead of restarting in a loop.
                    crashed.append(f"{what} within {min_uptime:g} s of starting")
                    stopping.set()
                    break
                log.error("%s; restarting it", what)
                procs[i] = start(i)
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join()
            if proc.pid is not None:
                mark_worker_dead(proc.pid)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # uvicorn re-raises the signal it stopped on once its shutdown is done: -SIGTERM is clean.
    failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if crashed or failed:
        why = crashed[0] if crashed else f"worker(s) exited with code(s) {failed}"
        raise SystemExit(f"rowrank serve: {why}; see the worker log above")


def _worker_main(host: str, port: int, beat: Any, timeout: float) -> None:
    """One worker process of `run_workers` (the config comes in ROWRANK_SERVE_CONFIG): uvicorn
    on its own socket, with a task on the same event loop writing `time.monotonic()` to `beat`
    (a shared double) every second or so, which the supervisor reads."""
    import asyncio

    import uvicorn

    # Its own process group: a Ctrl-C in the terminal reaches the parent only, which stops each
    # worker with one SIGTERM (a second signal would make uvicorn skip the graceful shutdown).
    os.setpgrp()
    exit_with_parent()
    sock = listen(host, port, reuse_port=True)
    config = uvicorn.Config(
        "engine.serving.http:app_from_env", factory=True, access_log=False, log_level="info"
    )
    server = uvicorn.Server(config)
    every = min(1.0, timeout / 4) if timeout else 1.0

    async def heartbeat() -> None:
        while True:
            beat.value = time.monotonic()
            await asyncio.sleep(every)

    async def main() -> None:
        task = asyncio.create_task(heartbeat())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    # What uvicorn.Server.run does, with the heartbeat beside the server on the same loop.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


def listen(host: str, port: int, *, reuse_port: bool) -> Any:
    """A listening TCP socket on host:port; OSError names the address when it cannot bind."""
    import socket

    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    return sock


def app_from_cfg(cfg: ServeConfig) -> ASGIApp:
    """The app of a single-process `rowrank serve`, built as a worker builds it (app_from_env)."""
    os.environ[ENV_CONFIG] = cfg.to_json()
    return app_from_env()
