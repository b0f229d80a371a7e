"""RedisServer: a real `redis-server` (Debian's package) on a free port of 127.0.0.1, its files
in a directory of the test's, configured as the event log requires (engine.events.redis_log).

Test helpers, not product code. Without the binary, tests that need it skip with the reason;
with ROWRANK_REQUIRE_REDIS set (.ci/run sets it) they fail instead, so CI never skips them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

BINARY = "redis-server"


def require_redis_server() -> str:
    """The path of `redis-server`; skips the test (fails it in CI) when there is none."""
    path = shutil.which(BINARY)
    if path is None:
        reason = f"{BINARY} is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("ROWRANK_REQUIRE_REDIS"):
            pytest.fail(f"{reason}; ROWRANK_REQUIRE_REDIS is set, so it must be")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`with RedisServer(directory) as url:` runs redis-server with `appendonly yes`,
    `appendfsync always` and no RDB snapshots; `kill()` is a SIGKILL, `start()` again restarts it
    on the same port and files (it replays its append-only file)."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        cmd += [str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
        cmd += ["--save", "", "--daemonize", "no", "--logfile", str(self.directory / "log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = (self.directory / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{BINARY} on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
