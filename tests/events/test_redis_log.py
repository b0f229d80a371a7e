"""The event log in a real Redis (`--state redis://...`): several engines and servers sharing one
stream see each other's events, a retried id is a no-op whoever took it first, an append is all
or nothing, a restart (of the engine, or a SIGKILLed Redis) replays, ingest and export work
against it, and a Redis not configured to fsync each write is refused."""

from __future__ import annotations

import contextlib
import http.client
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import redis
import requests
from conftest import rowrank_cmd
from redis_server import RedisServer, free_port
from servers import ServerThread

from engine.events.log import EventLogError, LogMoved
from engine.events.redis_log import STREAM_KEY, RedisEventLog
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
from engine.serving.http import create_app

T0 = 1_800_000_000_000_000  # us
TIMEOUT = 60


def _ev(i: int, user: str = "u1") -> PlayEvent:
    return PlayEvent(f"e{i}", user, f"t{i % 7}", T0 + i * 1_000_000, "tv", 60.0, 0.5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with server:
        yield server


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """The module's Redis, emptied for each test."""
    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


def _stream_ids(url: str) -> list[str]:
    entries = redis.Redis.from_url(url).xrange(STREAM_KEY)
    return [orjson.loads(fields[b"r"])["event_id"] for _, fields in entries]


def test_two_engines_share_state_and_a_retry_is_a_no_op(url: str) -> None:
    a, b = LiveState(url), LiveState(url)
    assert a.append([_ev(1), _ev(2)]).accepted == 2
    # b has not read a's events yet: it catches up before it decides
    again = b.append([_ev(2), _ev(3), _ev(3)])
    assert (again.accepted, again.duplicates) == (1, 2)
    assert [e.event_id for e in a.events_of("u1")] == ["e1", "e2"]
    a.refresh()
    assert [e.event_id for e in a.events_of("u1")] == ["e1", "e2", "e3"]
    assert [e.event_id for e in b.events_of("u1")] == ["e1", "e2", "e3"]
    assert _stream_ids(url) == ["e1", "e2", "e3"]
    a.close()
    b.close()


def test_a_writer_that_lost_the_race_catches_up_and_decides_again(url: str) -> None:
    a, b = LiveState(url), LiveState(url)
    a.append([_ev(1)])
    append = a.log.append_locked
    raced = []

    def b_first(records: list[dict[str, Any]], complete_to: int) -> int:
        if not raced:  # after a read the stream, before its append: b appends e2 and e3
            raced.append(b.append([_ev(2), _ev(3)]))
        return append(records, complete_to)

    a.log.append_locked = b_first  # type: ignore[method-assign]
    done = a.append([_ev(3), _ev(4)])
    assert raced[0].accepted == 2
    assert (done.accepted, done.duplicates) == (1, 1)  # e3 was b's: a duplicate on the retry
    assert _stream_ids(url) == ["e1", "e2", "e3", "e4"]
    assert [e.event_id for e in a.events_of("u1")] == ["e1", "e2", "e3", "e4"]
    a.close()
    b.close()


def test_an_append_behind_the_stream_writes_nothing(url: str) -> None:
    log = RedisEventLog(url)
    end = log.append_locked([_ev(1).to_record(), _ev(2).to_record()], 0)
    assert _stream_ids(url) == ["e1", "e2"]
    with pytest.raises(LogMoved):  # a writer that read up to e1 only: none of its batch lands
        log.append_locked([_ev(i).to_record() for i in (3, 4, 5)], end - 1)
    assert _stream_ids(url) == ["e1", "e2"]
    records, at = log.read_from(0)
    assert [r["event_id"] for r in records] == ["e1", "e2"] and at == end
    assert not log.has_new(end) and log.has_new(0)
    log.close()


def test_a_restart_of_the_engine_and_of_a_killed_redis_replays(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    with server as url:
        live = LiveState(url)
        live.append([_ev(i, user=f"u{i % 3}") for i in range(30)])
        before = {u: live.events_of(u) for u in ("u0", "u1", "u2")}
        live.close()
        server.kill()  # SIGKILL: only what Redis fsynced before answering survives
        server.start()
        again = LiveState(url)
        assert {u: again.events_of(u) for u in ("u0", "u1", "u2")} == before
        assert again.applied == 30
        assert again.append([_ev(4, user="u1")]).accepted == 0
        again.close()


def test_a_redis_that_does_not_fsync_each_write_is_refused(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(EventLogError, match=r"appendfsync everysec.*appendfsync always"):
            LiveState(url)
    finally:
        client.config_set("appendfsync", "always")


def test_an_unreachable_redis_is_one_clear_error(redis_server: RedisServer) -> None:
    with pytest.raises(EventLogError, match="cannot open the event log at redis://") as err:
        LiveState(f"redis://:secret@127.0.0.1:{free_port()}/0")
    assert "secret" not in str(err.value)  # the URL's password is not in the message


# ----- the CLI ---------------------------------------------------------------------------------


def test_serve_with_a_redis_it_cannot_use_exits_2_before_its_workers(
    run_cli: Any, tiny_model: Path, redis_server: RedisServer
) -> None:
    state = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run_cli("serve", tiny_model, "--workers", "2", "--state", state)
    assert code == 2 and f"cannot open the event log at {state}" in err


def test_ingest_and_export_against_redis(
    run_cli: Any, tiny_model: Path, url: str, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    docs = events
    src = tmp_path / "plays.jsonl"
    src.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    code, out, err = run_cli("events", "ingest", tiny_model, src, "--state", url)
    assert code == 0, err
    assert "ingested 3 events (0 duplicates" in out and url in out
    code, out, _ = run_cli("events", "ingest", tiny_model, src, "--state", url)
    assert code == 0 and "ingested 0 events (3 duplicates" in out
    assert _stream_ids(url) == ["cli-0", "cli-1", "cli-2"]
    dest = tmp_path / "plays.parquet"
    code, out, err = run_cli("events", "export", tiny_model, dest, "--state", url)
    assert code == 0, err
    plays = pl.read_parquet(dest)
    assert plays.height == 3 and set(plays["user_id"]) == {d["user_id"] for d in docs}


# ----- two servers, as on two machines --------------------------------------------------------


@pytest.fixture(scope="module")
def member(watcher: dict[str, Any]) -> dict[str, Any]:
    return watcher


def _event(member: dict[str, Any], event_id: str, title: str, progress: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": member["member"],
        "title_id": title,
        "ts": (member["at"] - timedelta(hours=1)).isoformat(),
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


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the second server exited"
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.05)
    raise AssertionError("the second server did not become ready")


@contextlib.contextmanager
def _rowrank_serve(model: Path, state: str) -> Iterator[int]:
    port = free_port()
    cmd = rowrank_cmd("serve", model, "--port", str(port), "--state", state)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: out.extend(stdout), daemon=True)
    reader.start()
    try:
        _wait_ready(port, proc)
        yield port
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{b''.join(out).decode(errors='replace')[-3000:]}") from None
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
def test_a_play_posted_to_one_server_shows_on_another_within_a_second(
    tiny_model: Path, member: dict[str, Any], url: str, redis_server: RedisServer
) -> None:
    title = member["movies"][0]
    params = {"device": "tv", "at": member["at"].isoformat()}
    # the other "machine": its own spelling of the Redis URL, its own process
    other_url = f"redis://localhost:{redis_server.port}/0"
    with (
        ServerThread(create_app(tiny_model, events_dir=url)) as first,
        _rowrank_serve(tiny_model, other_url) as port,
    ):
        second = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while requests.get(f"{first}/readyz", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline, "the first server did not load its model"
            time.sleep(0.05)
        page_url = f"{second}/v1/users/{member['member']}/page"
        assert (
            _cw_progress(requests.get(page_url, params=params, timeout=TIMEOUT).json(), title)
            is None
        )

        body = {"events": [_event(member, "r-1", title, 0.4)]}
        r = requests.post(f"{first}/v1/events", json=body, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}, r.text
        acked = time.monotonic()
        page = requests.get(page_url, params=params, timeout=TIMEOUT)
        shown = time.monotonic() - acked
        assert page.status_code == 200, page.text
        assert _cw_progress(page.json(), title) == pytest.approx(0.4)
        assert shown < 1.0

        # the retry, sent to the other server, is a no-op there too
        r = requests.post(f"{second}/v1/events", json=body, timeout=TIMEOUT)
        assert r.json() == {"accepted": 0, "duplicates": 1}, r.text
        # a batch with a bad event: a 422, and nothing of it reaches Redis
        bad = _event(member, "r-bad", title, 1.5)
        batch = {"events": [_event(member, "r-2", member["movies"][1], 0.2), bad]}
        r = requests.post(f"{second}/v1/events", json=batch, timeout=TIMEOUT)
        assert r.status_code == 422 and r.json()["error"]["index"] == 1, r.text
    assert _stream_ids(url) == ["r-1"]


def test_while_redis_is_down_nothing_is_acknowledged_and_pages_fall_back(
    tiny_model: Path, member: dict[str, Any], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    params = {"device": "tv", "at": member["at"].isoformat()}
    with server as url, ServerThread(create_app(tiny_model, events_dir=url)) as base:
        deadline = time.monotonic() + TIMEOUT
        while requests.get(f"{base}/readyz", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline, "the server did not load its model"
            time.sleep(0.05)
        server.kill()
        body = {"events": [_event(member, "down-1", member["movies"][0], 0.4)]}
        r = requests.post(f"{base}/v1/events", json=body, timeout=TIMEOUT)
        assert r.status_code == 500, r.text
        page = requests.get(f"{base}/v1/users/{member['member']}/page", params=params, timeout=60)
        assert page.status_code == 200 and page.json()["rows"], page.text
        server.start()  # back: the retry is taken, and the member's next page shows it
        r = requests.post(f"{base}/v1/events", json=body, timeout=TIMEOUT)
        assert r.json() == {"accepted": 1, "duplicates": 0}, r.text
        page = requests.get(f"{base}/v1/users/{member['member']}/page", params=params, timeout=60)
        assert _cw_progress(page.json(), member["movies"][0]) == pytest.approx(0.4)
