"""ServerThread: the real app on a real uvicorn socket in a background thread (tests, bench).

Test helpers, not product code; bench/bench_faults.py imports it from here too."""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.types import ASGIApp

from engine.serving.runner import listen


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a free port of 127.0.0.1.
    `with ServerThread(app) as base_url: ...` starts and stops it (lifespan runs)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1") -> None:
        self.sock = listen(host, 0, reuse_port=False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: in-flight requests finish, then lifespan shutdown (impression flush)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
