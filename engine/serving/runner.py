"""Running the HTTP service: `rowrank serve` in one process or in N worker processes.

`run_cli` is `rowrank serve`: one uvicorn process, or `--workers N` processes each listening on
its own SO_REUSEPORT socket, restarted when they die.

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
from engine.serving.processes import exit_with_parent

log = logging.getLogger("rowrank.serve")

WORKER_MIN_UPTIME_SECONDS = 10.0  # a worker dying sooner is not restarted: the server stops
ENV_WORKER_MIN_UPTIME = "ROWRANK_WORKER_MIN_UPTIME"  # overrides WORKER_MIN_UPTIME_SECONDS


def run_cli(args: Any) -> int:
    """`rowrank serve` (arguments: engine.cli._serve_args)."""
    from engine.errors import ModelLoadError

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"{model_dir} is not a directory: pass a model directory from `rowrank train`"
        )
    if args.workers < 1:
        raise BadRequestError(f"--workers must be at least 1, got {args.workers}")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        models_root=args.models_root,
        impressions_dir=args.log_impressions,
        impressions_scope=args.log_scope,
    )
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
    if workers <= 1:
        uvicorn.run(app_from_cfg(cfg), host=host, port=port, access_log=False, log_level="info")
        return
    with tempfile.TemporaryDirectory(prefix="rowrank-serve-") as tmp:
        cfg.state_dir = tmp
        os.environ[ENV_CONFIG] = cfg.to_json()
        run_workers(host, port, workers)


def run_workers(host: str, port: int, workers: int) -> None:
    """`workers` processes, each with its own listening socket on host:port (SO_REUSEPORT), so
    the kernel spreads connections over them. uvicorn's own `workers=` shares one socket, and
    the first idle worker accepted a whole burst of keep-alive connections while the other sat
    idle: `ROWRANK_PAGE_THREADS=1 python bench/bench_serve_load.py` gave 2 workers no more than
    1 (118 vs 117 pages/s; one worker built 39 of 1,229 pages). A worker that dies is
    restarted; SIGINT or SIGTERM stops them all gracefully (each flushes its impression log)."""
    import multiprocessing
    import signal

    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    started: dict[int, float] = {}  # worker index -> when its current process started
    crashed: list[str] = []
    min_uptime = float(os.environ.get(ENV_WORKER_MIN_UPTIME) or WORKER_MIN_UPTIME_SECONDS)

    def start(i: int) -> Any:
        proc = spawn.Process(target=_worker_main, args=(host, port), daemon=False)
        proc.start()
        started[i] = time.monotonic()
        return proc

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(workers)]
    where = f"[{host}]" if ":" in host else host
    print(f"rowrank serve: {workers} workers on http://{where}:{port} (Ctrl-C to stop)", flush=True)
    try:
        while not stopping.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                what = f"worker {proc.pid} exited with code {proc.exitcode}"
                if time.monotonic() - started[i] < min_uptime:
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # uvicorn re-raises the signal it stopped on once its shutdown is done: -SIGTERM is clean.
    failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if crashed or failed:
        why = crashed[0] if crashed else f"worker(s) exited with code(s) {failed}"
        raise SystemExit(f"rowrank serve: {why}; see the worker log above")


def _worker_main(host: str, port: int) -> None:
    """One worker process of `run_workers` (the config comes in ROWRANK_SERVE_CONFIG)."""
    import uvicorn

    # Its own process group: a Ctrl-C in the terminal reaches the parent only, which stops each
    # worker with one SIGTERM (a second signal would make uvicorn skip the graceful shutdown).
    os.setpgrp()
    exit_with_parent()
    sock = listen(host, port, reuse_port=True)
    config = uvicorn.Config(
        "engine.serving.http:app_from_env", factory=True, access_log=False, log_level="info"
    )
    uvicorn.Server(config).run(sockets=[sock])


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
