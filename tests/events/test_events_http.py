"""POST /v1/events against a real uvicorn socket serving the tiny model: a batch in, the next
page shows it; a retry is a no-op; each bad input is a 4xx JSON error naming the event index and
value with nothing of the batch applied; and with `rowrank serve --workers 2` (real processes)
an event taken by one worker shows on the page another worker builds."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from conftest import rowrank_cmd
from servers import ServerThread

from engine.events.log import LOG_FILE
from engine.events.schema import MAX_BODY_BYTES, validate_batch
from engine.events.state import LiveState
from engine.serving.http import create_app

TIMEOUT = 60


@pytest.fixture(scope="module")
def model(watcher: dict[str, Any]) -> dict[str, Any]:
    return watcher


def _event(
    model: dict[str, Any], event_id: str, title: str, progress: float, hours: float = 1.0
) -> dict[str, Any]:
    ts = model["at"] - timedelta(hours=hours)
    return {
        "event_id": event_id,
        "user_id": model["member"],
        "title_id": title,
        "ts": ts.isoformat(),
        "device": "tv",
        "seconds_watched": 1200,
        "progress": progress,
    }


def _cw_progress(page: dict[str, Any], title: str) -> float | None:
    for row in page["rows"]:
        if row["kind"] == "continue_watching":
            for item in row["items"]:
                if item["title_id"] == title:
                    return float(item["progress"])
    return None


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    events = tmp_path_factory.mktemp("events")
    with ServerThread(create_app(tiny_model, events_dir=events)) as url:
        deadline = time.monotonic() + TIMEOUT
        while requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        yield url, events


def _page(url: str, model: dict[str, Any]) -> dict[str, Any]:
    r = requests.get(
        f"{url}/v1/users/{model['member']}/page",
        params={"device": "tv", "at": model["at"].isoformat()},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_an_event_reaches_the_next_page_and_a_retry_is_a_no_op(
    server: tuple[str, Path], model: dict[str, Any]
) -> None:
    url, events = server
    title = model["movies"][0]
    body = {"events": [_event(model, "http-1", title, 0.4)]}
    r = requests.post(f"{url}/v1/events", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    assert _cw_progress(_page(url, model), title) == pytest.approx(0.4)
    r = requests.post(f"{url}/v1/events", json=body, timeout=TIMEOUT)
    assert r.json() == {"accepted": 0, "duplicates": 1}
    ids = [orjson.loads(x)["event_id"] for x in (events / LOG_FILE).read_bytes().splitlines()]
    assert ids.count("http-1") == 1


def test_the_worker_takes_other_processes_events_between_pages(
    tiny_model: Path, model: dict[str, Any], tmp_path: Path
) -> None:
    """The follower thread reads what another process appended with no page asked, so a page
    under a stream of events does not first apply every event since the previous page."""
    app = create_app(tiny_model, events_dir=tmp_path)
    live = app.app.state.service.live  # type: ignore[attr-defined]
    with ServerThread(app) as url:
        deadline = time.monotonic() + TIMEOUT
        while requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        before = live.applied
        other = LiveState(tmp_path)  # another process's writer on the same log
        try:
            event = _event(model, "elsewhere-1", model["movies"][1], 0.3)
            other.append(validate_batch([event], lambda t: True, time.time_ns() // 1000))
        finally:
            other.close()
        deadline = time.monotonic() + 5
        while live.applied == before:  # no request at all meanwhile
            assert time.monotonic() < deadline, "the worker did not read the log by itself"
            time.sleep(0.01)
        assert [e.event_id for e in live.events_of(model["member"])][-1:] == ["elsewhere-1"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title_id", "no-such-title"),
        ("progress", 1.25),
        ("device", "toaster"),
        ("ts", "FUTURE"),
        ("seconds_watched", "long"),
        ("progress", None),
    ],
)
def test_a_bad_event_rejects_the_whole_batch(
    server: tuple[str, Path], model: dict[str, Any], field: str, value: Any
) -> None:
    url, events = server
    before = (events / LOG_FILE).read_bytes()
    good = _event(model, f"ok-{field}", model["movies"][1], 0.3)
    bad = _event(model, f"bad-{field}", model["movies"][2], 0.3)
    if value == "FUTURE":
        value = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    r = requests.post(f"{url}/v1/events", json={"events": [good, bad]}, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["index"], err["field"]) == ("bad_event", 1, field)
    assert err["value"] == value
    assert "event 1" in err["message"]
    assert (events / LOG_FILE).read_bytes() == before
    assert _cw_progress(_page(url, model), model["movies"][1]) is None


def test_bodies_over_the_limit_and_bad_shapes_are_4xx(server: tuple[str, Path]) -> None:
    url, _ = server
    r = requests.post(f"{url}/v1/events", data=b"x" * (MAX_BODY_BYTES + 1), timeout=TIMEOUT)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = requests.post(f"{url}/v1/events", json={"events": "many"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "events" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/events", json={"event": []}, timeout=TIMEOUT)
    assert r.status_code == 400 and "'event'" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/events", json={"events": [7]}, timeout=TIMEOUT)
    assert r.status_code == 422 and r.json()["error"]["index"] == 0


# ----- two worker processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ask(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, int, bytes]:
    """On a fresh connection (the kernel picks the worker): (worker pid, status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/readyz")
        ready = conn.getresponse()
        doc = orjson.loads(ready.read())
        if ready.status != 200:
            return -1, ready.status, b""
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        return int(doc["pid"]), r.status, r.read()
    finally:
        conn.close()


@contextlib.contextmanager
def _serve_two_workers(model: Path, state: Path) -> Iterator[int]:
    port = _free_port()
    cmd = rowrank_cmd("serve", model, "--port", str(port), "--workers", "2", "--state", state)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: out.extend(stdout), daemon=True)
    reader.start()
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        stdout.close()


@pytest.mark.slow
def test_another_worker_shows_the_event(
    tiny_model: Path, model: dict[str, Any], tmp_path: Path
) -> None:
    title = model["movies"][3]
    page_path = f"/v1/users/{model['member']}/page?device=tv&at={model['at'].isoformat()}"
    page_path = page_path.replace("+", "%2B")
    with _serve_two_workers(tiny_model, tmp_path / "state") as port:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                pid, status, _ = _ask(port, "GET", "/healthz")
                if pid > 0:
                    pids.add(pid)
            time.sleep(0.05)
        assert len(pids) == 2
        body = orjson.dumps({"events": [_event(model, "w-1", title, 0.4)]})
        taker, status, answer = _ask(port, "POST", "/v1/events", body)
        assert status == 200, answer
        for _ in range(200):
            pid, status, page = _ask(port, "GET", page_path)
            if pid not in (-1, taker):
                break
        else:
            raise AssertionError("the other worker never answered")
        assert status == 200, page
        assert _cw_progress(orjson.loads(page), title) == pytest.approx(0.4)
    assert os.path.getsize(tmp_path / "state" / LOG_FILE) > 0
