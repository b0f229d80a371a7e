"""`rowrank serve --workers 2` as a real process: /metrics sums both workers whichever answers
the scrape (prometheus-client's multiprocess mode), a dead worker's own series leave while its
counts stay in the sums, a hung worker is killed and restarted, and the start-up line names a
real member's preview."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import rowrank_cmd
from prometheus_client.parser import text_string_to_metric_families

from engine.serving.runner import ENV_WORKER_MIN_UPTIME, ENV_WORKER_TIMEOUT
from engine.training.model_dir import read_history

AT = "2026-11-27T21:00:00+01:00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A `rowrank serve` process; its output is collected on a thread."""

    def __init__(self, model: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        cmd = rowrank_cmd("serve", model, "--port", str(self.port), "--workers", "2")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(line.decode() for line in stdout), daemon=True
        )
        self._reader.start()

    def ask(self, *requests: tuple[str, str, bytes | None]) -> tuple[int, list[Any]]:
        """On one fresh connection: /readyz (the answering worker's pid), then `requests`;
        (pid, their answers). A fresh connection lets the kernel pick the worker."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/readyz")
            ready = conn.getresponse()
            doc = orjson.loads(ready.read())
            if ready.status != 200:
                return -1, []
            answers = []
            for method, path, body in requests:
                conn.request(method, path, body=body)
                r = conn.getresponse()
                answers.append((r.status, r.read()))
            return int(doc["pid"]), answers
        finally:
            conn.close()

    def wait_workers(
        self, n: int, timeout: float = 90, besides: set[int] = frozenset()
    ) -> set[int]:
        """The pids of `n` ready workers not in `besides` (fresh connections until that many
        answered)."""
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids - besides) < n and time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                pid, _ = self.ask()
                if pid > 0:
                    pids.add(pid)
            time.sleep(0.05)
        assert len(pids - besides) >= n, "".join(self.lines)[-3000:]
        return pids - besides

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


@contextlib.contextmanager
def running(model: Path, env: dict[str, str]) -> Iterator[Server]:
    server = Server(model, env)
    try:
        yield server
    finally:
        server.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples(text).items() if n == name and want <= lab)


@pytest.mark.slow
def test_metrics_sum_both_workers_from_any_scrape(tiny_model: Path) -> None:
    _, history = read_history(tiny_model)
    users = [str(u) for u in history.user_ids[:6]]
    page_route = "/v1/users/{user_id}/page"
    with running(tiny_model, {ENV_WORKER_MIN_UPTIME: "0.5"}) as server:
        pids = server.wait_workers(2)
        # The start-up line names a real member's preview, and that URL answers with HTML.
        start = "".join(server.lines)
        m = re.search(r"http://127\.0\.0\.1:\d+(/preview/(\S+)\?\S+)", start)
        assert m is not None, start
        assert history.user_index(m.group(2)) >= 0
        _, [(status, html)] = server.ask(("GET", m.group(1), None))
        assert status == 200 and m.group(2).encode() in html

        # Pages (one GET and one POST of two) on fresh connections until both workers built some.
        built: dict[int, int] = dict.fromkeys(pids, 0)
        gets = posts = 0
        deadline = time.monotonic() + 60
        i = 0
        while min(built.values()) < 3 and time.monotonic() < deadline:
            user = users[i % len(users)]
            batch = orjson.dumps({"requests": [{"user_id": u, "at": AT} for u in users[:2]]})
            pid, answers = server.ask(
                ("GET", f"/v1/users/{user}/page?at=2026-11-27T21:00:00", None),
                ("POST", "/v1/pages", batch),
            )
            i += 1
            if pid not in built:
                continue
            assert [status for status, _ in answers] == [200, 200]
            built[pid] += 3
            gets, posts = gets + 1, posts + 1
        assert min(built.values()) >= 3, built
        pages = sum(built.values()) + 1  # and the preview's page above

        # Any worker's scrape reads both workers' counts: scrape until each worker answered one.
        scraped: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while len(scraped) < 2 and time.monotonic() < deadline:
            pid, answers = server.ask(("GET", "/metrics", None))
            if pid in pids:
                scraped[pid] = answers[0][1].decode()
        assert set(scraped) == pids
        for text in scraped.values():
            assert total(text, "rowrank_page_seconds_count") == pages
            assert total(text, "rowrank_page_seconds_bucket", le="+Inf") == pages
            requests_total = "rowrank_http_requests_total"
            assert total(text, requests_total, route=page_route, status="200") == gets
            assert total(text, requests_total, route="/v1/pages", status="200") == posts
            assert total(text, "rowrank_model_ready") == 2  # two workers with a model
            per_worker = {
                int(dict(lab)["pid"]): v
                for (n, lab), v in samples(text).items()
                if n == "rowrank_worker_pages"
            }
            assert per_worker[min(pids)] + per_worker[max(pids)] == pages
            assert all(per_worker[p] >= 3 for p in pids)
            info = [lab for (n, lab), v in samples(text).items() if n == "rowrank_model_info" and v]
            assert {dict(lab)["pid"] for lab in info} == {str(p) for p in pids}

        # A worker that dies: its own series leave the exposition, its pages stay in the sums.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        server.wait_workers(1, besides=pids)
        for _ in range(10):
            pid, answers = server.ask(("GET", "/metrics", None))
            if pid > 0:
                text = answers[0][1].decode()
                assert total(text, "rowrank_page_seconds_count") == pages
                info_pids = {
                    dict(lab)["pid"]
                    for (n, lab), v in samples(text).items()
                    if n == "rowrank_model_info"
                }
                assert str(victim) not in info_pids
    assert server.proc.returncode == 0, "".join(server.lines)[-3000:]


@pytest.mark.slow
def test_a_hung_worker_is_killed_and_replaced(tiny_model: Path) -> None:
    """A worker stopped with SIGSTOP (its event loop beats no more) is killed after
    ROWRANK_WORKER_TIMEOUT seconds and a new one serves in its place; the server then stops
    cleanly."""
    env = {ENV_WORKER_MIN_UPTIME: "0.5", ENV_WORKER_TIMEOUT: "3"}
    with running(tiny_model, env) as server:
        pids = server.wait_workers(2)
        hung = min(pids)
        os.kill(hung, signal.SIGSTOP)
        stopped_at = time.monotonic()
        server.wait_workers(1, besides=pids)
        assert time.monotonic() - stopped_at >= 3
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed and reaped
    assert server.proc.returncode == 0, "".join(server.lines)[-3000:]
    out = "".join(server.lines)
    assert f"worker {hung} has not answered for" in out


def test_a_worker_shows_ready_once_its_model_loads_before_any_request() -> None:
    """The model loads in a background thread: the metrics see it without waiting for a
    request (one process here; the series are the same in each worker)."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from engine.serving.metrics import Metrics

    holder = SimpleNamespace(engine=None, load_error=None, model_dir="/models/a")
    metrics = Metrics()
    metrics.attach(holder, None)  # type: ignore[arg-type]

    def ready() -> float:  # the registry as is, without the sync a scrape does
        return total(generate_latest(metrics.registry).decode(), "rowrank_model_ready")

    assert ready() == 0
    holder.engine = SimpleNamespace(model_version="v1")
    deadline = time.monotonic() + 10
    while ready() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready() == 1
    text = metrics.render()
    assert total(text, "rowrank_model_info", model_version="v1", model_dir="/models/a") == 1
