"""The HTTP service (engine/serving/) through a real uvicorn socket, against the trained
`tiny_model`: bytes equal to `rowrank page`, batch = singles, bad input -> 4xx JSON, metrics,
OpenAPI, hot swap (auth, root, broken dir, no failed request, in-flight on the old model),
fail open, impressions flushed on shutdown, and `rowrank serve --workers 2` as a process.

Fault injection wraps the real engine (`Faulty`): a ranker that raises, a page that raises, a
fallback that raises, a page that is slow. Nothing here replaces the engine with a stand-in."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import psutil
import pytest
import requests
from conftest import rowrank_cmd
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from servers import ServerThread

import engine
from engine.data.columns import IMPRESSIONS, SCHEMA
from engine.request.layout import DEFAULT_LAYOUTS
from engine.serving.http import create_app
from engine.serving.impression_log import ImpressionLogger, read_impressions
from engine.serving.processes import load_frozen
from engine.serving.runner import ENV_WORKER_MIN_UPTIME
from engine.serving.static_files import openapi_spec

TOKEN = "s3cret-token"
AT = "2026-11-27T21:00:00+01:00"
TIMEOUT = 30


# ----- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A models root with: a copy of tiny_model, a second copy under another model_version, a
    corrupted copy, and a symlink that escapes the root."""
    root = tmp_path_factory.mktemp("models")
    a = root / "a"
    shutil.copytree(tiny_model, a)
    b = root / "b"
    shutil.copytree(tiny_model, b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["model_version"] = manifest["model_version"] + "-b"
    (b / "manifest.json").write_text(json.dumps(manifest))
    broken = root / "broken"
    shutil.copytree(tiny_model, broken)
    listed = json.loads((broken / "manifest.json").read_text())["files"]
    victim = broken / sorted(listed)[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")  # checksum no longer matches
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(tiny_model, outside / "m")
    (root / "escape").symlink_to(outside / "m")
    return {"root": root, "a": a, "b": b, "broken": broken, "outside": outside / "m"}


@pytest.fixture(scope="module")
def users(tiny_model: Path) -> list[str]:
    """A few members of the trained world, plus one unknown (cold-start) id."""
    ids = engine.load(tiny_model).history.user_ids.tolist()
    return [*ids[:3], "cold-start-member"]


def _wait_ready(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        if r.status_code == 200:
            doc: dict[str, Any] = r.json()
            return doc
        last = r.text
        if "still loading" not in last:  # the load failed: no point in waiting
            break
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready: {last}")


@pytest.fixture
def start(models: dict[str, Path]) -> Iterator[Callable[..., str]]:
    """Start a server on a free port (real uvicorn socket); every one is stopped at teardown."""
    servers: list[ServerThread] = []

    def _start(**kw: Any) -> str:
        kw.setdefault("admin_token", TOKEN)
        kw.setdefault("models_root", models["root"])
        server = ServerThread(create_app(kw.pop("model_dir", models["a"]), **kw))
        servers.append(server)
        url = server.start()
        _wait_ready(url)
        return url

    _start.servers = servers  # type: ignore[attr-defined]
    yield _start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def live(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One shared server for the read-only tests (its event log in a directory of its own)."""
    events = tmp_path_factory.mktemp("serve_events")
    server = ServerThread(
        create_app(models["a"], admin_token=TOKEN, models_root=models["root"], events_dir=events)
    )
    url = server.start()
    _wait_ready(url)
    yield url
    server.stop()


class Faulty:
    """The real engine with injected faults; everything else is delegated unchanged."""

    def __init__(
        self,
        real: Any,
        *,
        page_raises: bool = False,
        fallback_raises: bool = False,
        page_delay: float = 0.0,
    ) -> None:
        self._real = real
        self.page_raises, self.fallback_raises, self.page_delay = (
            page_raises,
            fallback_raises,
            page_delay,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def page(self, *args: Any, **kw: Any) -> Any:
        if self.page_delay:
            time.sleep(self.page_delay)
        if self.page_raises:
            raise RuntimeError("injected: page model exploded")
        return self._real.page(*args, **kw)

    def fallback_page(self, ctx: Any, **kw: Any) -> Any:
        if self.fallback_raises:
            raise RuntimeError("injected: fallback exploded")
        return self._real.fallback_page(ctx, **kw)


def _metric(text: str, name: str) -> float:
    """The value of the sample `name` (which may hold labels, `n{a="x",b="y"}`, in any order:
    the exposition sorts them), 0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    want = next(iter(text_string_to_metric_families(f"{name} 0\n"))).samples[0]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == want.name and sample.labels == want.labels:
                return float(sample.value)
    return 0.0


# ----- pages ------------------------------------------------------------------------------------


def test_get_page_is_byte_identical_to_rowrank_page(
    live: str, tiny_model: Path, users: list[str], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from engine.cli import main

    for user, device, country in ((users[0], "tv", None), (users[3], "mobile", "US")):
        params = {"device": device, "at": AT, **({"country": country} if country else {})}
        r = requests.get(f"{live}/v1/users/{user}/page", params=params, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        argv = ["page", str(tiny_model), "--user", user, "--device", device, "--at", AT]
        if country:
            argv += ["--country", country]
        assert main(argv) == 0
        cli_bytes = capsysbinary.readouterr().out
        assert r.content == cli_bytes.rstrip(b"\n")
        assert r.headers["x-model-version"] == orjson.loads(r.content)["model_version"]


def _page_validator() -> Draft202012Validator:
    spec = openapi_spec()
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(spec))
    resolver_schema = {"$ref": "urn:openapi#/components/schemas/Page"}
    return Draft202012Validator(resolver_schema, registry=registry)


def test_pages_match_the_openapi_page_schema(live: str, users: list[str]) -> None:
    validator = _page_validator()
    for device in ("tv", "mobile", "tablet", "web"):
        r = requests.get(
            f"{live}/v1/users/{users[1]}/page?device={device}&at={AT.replace('+', '%2B')}"
        )
        assert r.status_code == 200
        doc = r.json()
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == []
        assert doc["context"]["device"] == device and doc["rows"]
    bad = {"user_id": "x"}  # the validator itself can fail
    assert list(validator.iter_errors(bad))


def test_batch_equals_single_requests_in_order(live: str, users: list[str]) -> None:
    reqs = [
        {"user_id": users[0], "device": "tv", "at": AT},
        {"user_id": users[1], "device": "web", "at": "2026-11-28T08:15:00+00:00"},
        {"user_id": users[3], "device": "mobile", "at": AT, "country": "DE"},
        {"user_id": users[2], "at": AT},
    ]
    spec = openapi_spec()
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(spec))
    body_schema = Draft202012Validator(
        {"$ref": "urn:openapi#/components/schemas/BatchRequest"}, registry=registry
    )
    assert list(body_schema.iter_errors({"requests": reqs})) == []  # the documented shape
    r = requests.post(f"{live}/v1/pages", json={"requests": reqs}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    pages = r.json()["pages"]
    assert len(pages) == len(reqs)
    singles = []
    for req, page in zip(reqs, pages, strict=True):
        params = {k: v for k, v in req.items() if k != "user_id"}
        single = requests.get(f"{live}/v1/users/{req['user_id']}/page", params=params)
        assert single.json() == page
        singles.append(single.content)
    # The batch is built by the engine's block path: the very bytes of the single pages.
    assert r.content == b'{"pages":[' + b",".join(singles) + b"]}"


BAD_INPUT = [
    # (method, path, body (bytes or json-able), status, code, words the message must contain)
    ("GET", "/v1/users/u1/page?device=toaster", None, 400, "bad_device", ["toaster", "tv, mobile"]),
    ("GET", "/v1/users/u1/page?at=yesterday", None, 400, "bad_time", ["yesterday", "ISO 8601"]),
    ("GET", "/v1/users/u1/page?at=2026-13-01T00:00", None, 400, "bad_time", ["2026-13-01"]),
    ("GET", "/v1/users/u1/page?colour=red", None, 400, "unknown_field", ["colour", "device, at"]),
    ("GET", "/v1/users/u1/page?device=tv&device=web", None, 400, "duplicate_field", ["device"]),
    ("GET", "/v1/users/u1/page?country=usa", None, 400, "bad_country", ["usa", "two-letter"]),
    ("GET", "/v1/users/%FF%FE/page", None, 400, "bad_path", ["UTF-8"]),
    ("GET", "/v1/users/u1/page?device=%FF", None, 400, "bad_query", ["UTF-8"]),
    ("GET", "/v1/users/" + "x" * 300 + "/page", None, 400, "bad_user_id", ["300", "256"]),
    ("GET", "/v1/users/a%07b/page", None, 400, "bad_user_id", ["control"]),
    ("GET", "/v1/nothing", None, 404, "not_found", ["/v1/nothing"]),
    ("DELETE", "/v1/users/u1/page", None, 405, "method_not_allowed", ["DELETE"]),
    ("POST", "/v1/pages", b"{not json", 400, "bad_json", ["not valid JSON"]),
    ("POST", "/v1/pages", b"[1, 2]", 400, "bad_json", ["object", "list"]),
    ("POST", "/v1/pages", {"requests": "u1"}, 400, "bad_requests", ["list"]),
    ("POST", "/v1/pages", {"requests": [], "x": 1}, 400, "unknown_field", ["'x'", "requests"]),
    ("POST", "/v1/pages", {"requests": [{"device": "tv"}]}, 400, "bad_user_id", ["requests[0]"]),
    (
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a"}, {"user_id": "b", "device": "fridge"}]},
        400,
        "bad_device",
        ["requests[1]", "fridge"],
    ),
    (
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a", "mood": "happy"}]},
        400,
        "unknown_field",
        ["requests[0]", "mood"],
    ),
    ("POST", "/v1/pages", {"requests": [{"user_id": 7}]}, 400, "bad_user_id", ["7"]),
    (
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a"}] * 101},
        413,
        "batch_too_large",
        ["101", "100"],
    ),
    ("POST", "/v1/pages", b" " * (1 << 20) + b"{}", 413, "body_too_large", ["1,048,576"]),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "words"), BAD_INPUT)
def test_bad_input_is_a_4xx_with_a_json_error(
    live: str, method: str, path: str, body: Any, status: int, code: str, words: list[str]
) -> None:
    kw: dict[str, Any] = {"timeout": TIMEOUT}
    if isinstance(body, bytes):
        kw["data"] = body
    elif body is not None:
        kw["json"] = body
    r = requests.request(method, live + path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code
    for w in words:
        assert w in err["message"]
    assert "Traceback" not in r.text


def test_health_ready_and_openapi_cover_every_route(live: str) -> None:
    assert requests.get(f"{live}/healthz").json() == {"status": "alive"}
    ready = requests.get(f"{live}/readyz").json()
    assert ready["status"] == "ready" and ready["generation"] == 0
    spec = requests.get(f"{live}/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    from engine.serving.events_route import ROUTE_EVENTS
    from engine.serving.http import ROUTE_BATCH, ROUTE_PAGE, ROUTE_PREVIEW, ROUTE_RELOAD

    served = {ROUTE_PAGE, ROUTE_BATCH, ROUTE_PREVIEW, ROUTE_RELOAD, "/preview", "/preview.css"}
    served |= {"/healthz", "/readyz", "/metrics", "/openapi.json", "/", ROUTE_EVENTS}
    assert set(spec["paths"]) == served
    for path in served:  # each documented route answers (none is a 404)
        method = "post" if path in (ROUTE_BATCH, ROUTE_RELOAD, ROUTE_EVENTS) else "get"
        assert method in spec["paths"][path]
        concrete = path.replace("{user_id}", "u1")
        assert requests.request(method, live + concrete, timeout=TIMEOUT).status_code != 404
    # The embedded page schema's refs resolve inside the document.
    assert spec["components"]["schemas"]["Page"]["properties"]["rows"]["items"]["$ref"] == (
        "#/components/schemas/Page/$defs/row"
    )


def test_metrics_count_requests_latency_and_model(
    start: Callable[..., str], users: list[str]
) -> None:
    url = start()
    for _ in range(3):
        assert requests.get(f"{url}/v1/users/{users[0]}/page?device=tv").status_code == 200
    assert requests.get(f"{url}/v1/users/{users[0]}/page?device=vcr").status_code == 400
    # A country for the cold-start member (it has none of its own: engine.pipeline resolve).
    batch = [{"user_id": u, "country": "US"} for u in users]
    r = requests.post(f"{url}/v1/pages", json={"requests": batch})
    assert r.status_code == 200
    text = requests.get(f"{url}/metrics").text
    page_route = 'route="/v1/users/{user_id}/page",method="GET"'
    assert _metric(text, f'rowrank_http_requests_total{{{page_route},status="200"}}') == 3
    assert _metric(text, f'rowrank_http_requests_total{{{page_route},status="400"}}') == 1
    assert (
        _metric(text, 'rowrank_http_requests_total{route="/v1/pages",method="POST",status="200"}')
        == 1
    )
    assert _metric(text, "rowrank_page_seconds_count") == 3 + len(users)
    assert _metric(text, 'rowrank_page_seconds_bucket{le="+Inf"}') == 3 + len(users)
    assert 0 < _metric(text, "rowrank_page_seconds_sum") < 30
    version = requests.get(f"{url}/readyz").json()["model_version"]
    assert f'model_version="{version}"' in text
    assert 'rowrank_model_info{model_dir="' in text
    assert "# TYPE rowrank_page_seconds histogram" in text


# ----- fail open --------------------------------------------------------------------------------


def test_a_raising_ranker_drops_its_rows_and_is_counted(
    start: Callable[..., str], users: list[str]
) -> None:
    victim: list[str] = []

    def loader(path: Path) -> Any:
        eng = engine.load(path)
        name = sorted(eng.rankers)[0]
        victim.append(name)

        def boom(*a: Any, **k: Any) -> Any:
            raise RuntimeError("injected ranker failure")

        eng.rankers[name].propose = boom  # type: ignore[method-assign]
        return eng

    url = start(loader=loader)
    r = requests.get(f"{url}/v1/users/{users[0]}/page", params={"at": AT})
    assert r.status_code == 200
    page = r.json()
    assert all(row["ranker"] != victim[0] for row in page["rows"])
    text = requests.get(f"{url}/metrics").text
    assert _metric(text, f'rowrank_ranker_failures_total{{ranker="{victim[0]}"}}') == 1


def test_a_failing_page_serves_the_fallback_then_503(
    start: Callable[..., str], users: list[str]
) -> None:
    url = start(loader=lambda p: Faulty(engine.load(p), page_raises=True))
    r = requests.get(f"{url}/v1/users/{users[0]}/page", params={"device": "web", "at": AT})
    assert r.status_code == 200
    page = r.json()
    assert page["fallback"] is True and page["rows"]
    assert page["context"]["device"] == "web"
    assert _metric(requests.get(f"{url}/metrics").text, "rowrank_fallback_pages_total") == 1

    url2 = start(loader=lambda p: Faulty(engine.load(p), page_raises=True, fallback_raises=True))
    r = requests.get(f"{url2}/v1/users/{users[0]}/page")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "page_unavailable"
    assert "Traceback" not in r.text and "injected" not in r.text
    assert _metric(requests.get(f"{url2}/metrics").text, "rowrank_page_failures_total") == 1


def test_healthz_answers_while_pages_are_being_built(
    start: Callable[..., str], users: list[str]
) -> None:
    url = start(loader=lambda p: Faulty(engine.load(p), page_delay=1.0))
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(requests.get, f"{url}/v1/users/{users[0]}/page")
        time.sleep(0.2)
        t0 = time.monotonic()
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 0.5  # the event loop is not blocked by the page
        assert slow.result().status_code == 200


# ----- hot swap ---------------------------------------------------------------------------------


def _reload(url: str, body: Any = None, token: str | None = TOKEN) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{url}/v1/admin/reload", json=body, headers=headers, timeout=TIMEOUT)


def _keep_alive_answers(sock: socket.socket, n: int) -> list[bytes]:
    """Send n keep-alive GET /healthz on one socket; each answer's head (lower case), or the
    rest of the list empty from the first request the server no longer answers."""
    heads: list[bytes] = []
    buf = b""
    for _ in range(n):
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        except OSError:
            break
        while b"\r\n\r\n" not in buf:
            chunk = _recv_or_closed(sock)
            if not chunk:
                return heads  # the server closed the connection
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buf) < length:
            buf += sock.recv(65536)
        buf = buf[length:]
        heads.append(head.lower())
    return heads


def _recv_or_closed(sock: socket.socket) -> bytes:
    """What the socket reads; b"" once the server closed it (a close with our unread request in
    its buffer arrives as a reset)."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def test_a_keep_alive_connection_is_closed_once_it_has_been_open_long_enough(
    start: Callable[..., str],
) -> None:
    """So clients re-connect and SO_REUSEPORT can hash them onto another worker: the first
    answer after `keepalive_seconds` says `connection: close` and the server closes the
    socket; a new connection starts its own clock. 0 turns it off."""
    url = start(keepalive_seconds=0.5)
    host, port = url.removeprefix("http://").split(":")
    for _ in range(2):  # a second connection gets its own clock
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            heads = _keep_alive_answers(sock, 3)  # well within 0.5 s
            assert len(heads) == 3 and not any(b"connection: close" in h for h in heads)
            time.sleep(0.6)
            heads = _keep_alive_answers(sock, 3)
            assert len(heads) == 1, heads
            assert b"connection: close" in heads[0] and heads[0].startswith(b"http/1.1 200")
            assert _recv_or_closed(sock) == b""  # closed by the server
    never = start(keepalive_seconds=0)
    host, port = never.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        heads = _keep_alive_answers(sock, 3)
        time.sleep(0.6)
        heads += _keep_alive_answers(sock, 3)
        assert len(heads) == 6 and not any(b"connection: close" in h for h in heads)


def test_reload_needs_a_configured_token(start: Callable[..., str]) -> None:
    url = start(admin_token="")
    r = _reload(url, {"model_dir": "b"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "reload_disabled"
    url = start()
    assert _reload(url, {"model_dir": "b"}, token=None).status_code == 401
    r = _reload(url, {"model_dir": "b"}, token="wrong")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_reload_refuses_paths_outside_the_root_and_broken_models(
    start: Callable[..., str], models: dict[str, Path], users: list[str]
) -> None:
    url = start()
    before = requests.get(f"{url}/readyz").json()["model_version"]
    for bad in ("../outside/m", str(models["outside"]), "escape", "/etc"):
        r = _reload(url, {"model_dir": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "model_dir_outside_root"
    r = _reload(url, {"model_dir": "missing"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_dir_not_found"
    r = _reload(url, {"model_dir": "broken"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_load_failed"
    assert "sha256" in r.json()["error"]["message"]
    r = _reload(url, {"model_dir": "a", "extra": 1})
    assert r.status_code == 400
    # The old model still serves.
    page = requests.get(f"{url}/v1/users/{users[0]}/page")
    assert page.status_code == 200 and page.json()["model_version"] == before
    text = requests.get(f"{url}/metrics").text
    assert _metric(text, 'rowrank_model_reloads_total{result="failed"}') == 1
    assert _metric(text, 'rowrank_model_reloads_total{result="rejected"}') == 6


def test_reload_swaps_with_no_failed_request(
    start: Callable[..., str], models: dict[str, Path], users: list[str]
) -> None:
    url = start()
    va = requests.get(f"{url}/readyz").json()["model_version"]
    vb = json.loads((models["b"] / "manifest.json").read_text())["model_version"]
    assert va != vb
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def hammer() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.get(f"{url}/v1/users/{users[0]}/page", params={"at": AT}, timeout=TIMEOUT)
                seen.append((r.status_code, r.json().get("model_version")))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for target in ("b", "a", str(models["b"])):
            time.sleep(0.2)
            r = _reload(url, {"model_dir": target})
            assert r.status_code == 200, r.text
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 10
    assert {status for status, _ in seen} == {200}
    assert {v for _, v in seen} == {va, vb}
    assert requests.get(f"{url}/v1/users/{users[0]}/page").json()["model_version"] == vb
    # Reloading the same directory (empty body) works too.
    r = _reload(url)
    assert r.status_code == 200 and r.json()["model_version"] == vb


def test_a_request_in_flight_finishes_on_the_old_model(
    start: Callable[..., str], models: dict[str, Path], users: list[str]
) -> None:
    url = start(loader=lambda p: Faulty(engine.load(p), page_delay=1.5))
    old = requests.get(f"{url}/readyz").json()["model_version"]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.get, f"{url}/v1/users/{users[0]}/page", timeout=TIMEOUT)
        time.sleep(0.3)  # the request is inside the (slow) old engine now
        r = _reload(url, {"model_dir": "b"})
        assert r.status_code == 200
        assert not in_flight.done()  # the swap did not wait for it ...
        new = r.json()["model_version"]
        assert (new, r.json()["previous_model_version"]) != (old, old)
        page = in_flight.result()
    assert page.status_code == 200
    assert page.json()["model_version"] == old  # ... and it finished on the old model
    assert requests.get(f"{url}/readyz").json()["model_version"] == new


class _CyclicModel:
    """A stand-in model that, like a real one, holds reference cycles (so only the cyclic
    garbage collector can free it)."""

    def __init__(self, version: str) -> None:
        self.model_version = version
        self.me = self


def test_a_loaded_model_is_frozen_out_of_the_cyclic_gc_and_a_replaced_one_is_collected(
    tmp_path: Path,
) -> None:
    """load_frozen, the one loader of the server (start-up, every swap) and of precompute's
    workers: what a load leaves is frozen (no full collection walks the model); the next load
    unfreezes first, so a model dropped since is collected, and one still in use (requests in
    flight on a swapped-out model) is frozen again and goes at the load after."""
    versions = iter(["a", "b", "c"])

    def loader(_: Path) -> _CyclicModel:
        return _CyclicModel(next(versions))

    try:
        gc.unfreeze()
        live = load_frozen(loader, tmp_path)
        first = weakref.ref(live)
        assert gc.get_freeze_count() > 0
        in_flight, live = live, load_frozen(loader, tmp_path)  # "a" still serves a request
        assert first() is not None and live.model_version == "b"
        del in_flight
        gc.collect()
        assert first() is not None  # frozen: not even a full collection frees it ...
        live = load_frozen(loader, tmp_path)
        assert first() is None  # ... until the next load unfreezes it
        assert live.model_version == "c"
    finally:
        gc.unfreeze()


# ----- impressions ------------------------------------------------------------------------------


def test_served_pages_are_logged_once_on_clean_shutdown(
    models: dict[str, Path], users: list[str], tmp_path: Path
) -> None:
    log_dir = tmp_path / "impressions"
    server = ServerThread(create_app(models["a"], impressions_dir=log_dir))
    url = server.start()
    _wait_ready(url)
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    try:
        for i, user in enumerate(users):
            device = ("tv", "mobile", "tablet", "web")[i % 4]
            params = {"device": device, "at": AT, "country": "US"}
            r = requests.get(f"{url}/v1/users/{user}/page", params=params)
            ids.append(r.headers["x-page-id"])
            pages.append(r.json())
        r = requests.post(
            f"{url}/v1/pages",
            json={"requests": [{"user_id": u, "at": AT, "country": "US"} for u in users]},
        )
        ids += r.headers["x-page-ids"].split(",")
        pages += r.json()["pages"]
        # The preview is for people: it is not an impression.
        assert requests.get(f"{url}/preview/{users[0]}").status_code == 200
    finally:
        server.stop()  # lifespan shutdown flushes the queue
    assert len(set(ids)) == len(ids) == 2 * len(users)
    assert not list(log_dir.glob(".*"))  # no temporary file left behind
    df = read_impressions(log_dir)
    assert df.schema == pl.Schema({c.name: c.dtype for c in SCHEMA[IMPRESSIONS]})
    # A page without rows (it happens to a cold-start member) shows nothing: no impression.
    shown_pages = {pid for pid, page in zip(ids, pages, strict=True) if page["rows"]}
    assert len(shown_pages) >= len(users)
    assert set(df["page_id"].unique()) == shown_pages
    assert df.select(["page_id", "row_index", "position"]).is_duplicated().sum() == 0
    expected = 0
    for pid, page in zip(ids, pages, strict=True):
        layout = DEFAULT_LAYOUTS[page["context"]["device"]]
        rows = page["rows"][: layout.visible_rows]
        shown = [
            (r, p, it["title_id"])
            for r, row in enumerate(rows)
            for p, it in enumerate(row["items"][: layout.visible_titles])
        ]
        expected += len(shown)
        got = df.filter(pl.col("page_id") == pid).sort(["row_index", "position"])
        assert list(zip(got["row_index"], got["position"], got["title_id"], strict=True)) == shown
        assert got["played"].any() is False
    assert df.height == expected


def test_impression_logger_parts_are_unique_and_close_flushes(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from engine.request.page import Page, PageContext, PageItem, PageRow

    def page(user: str) -> Page:
        items = tuple(PageItem(f"t{j}", f"T{j}", 1.0 - j / 10) for j in range(8))
        rows = tuple(PageRow(f"r{i}", "top_n", "top_n", "Top", None, 1.0, items) for i in range(4))
        at = datetime(2026, 11, 27, 20, tzinfo=UTC)
        return Page(user, at, "v1", PageContext("tv", at, 20, 4, None), rows)

    logger = ImpressionLogger(tmp_path, flush_rows=40, flush_seconds=60)
    logger.start()
    for i in range(25):
        assert logger.log(page(f"u{i}"), f"p{i}")
    logger.close()
    logger.close()  # idempotent
    assert not logger.log(page("late"), "late") and logger.pages_dropped == 1
    parts = sorted(tmp_path.glob("impressions-*.parquet"))
    # tv shows 3 rows x 6 titles = 18 rows a page: a part every 3 pages (54 >= 40), then the rest.
    assert len(parts) == 9
    assert len({p.name for p in parts}) == len(parts)
    df = read_impressions(tmp_path)
    assert df.height == 25 * 18 == logger.rows_written
    assert df.select(["page_id", "row_index", "position"]).is_duplicated().sum() == 0
    whole = ImpressionLogger(tmp_path / "whole", scope="page")
    whole.start()
    whole.log(page("u"), "p")
    whole.close()
    assert read_impressions(tmp_path / "whole").height == 4 * 8


# ----- rowrank serve as a process ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_cli_serve_with_two_workers_follows_a_reload_and_stops_cleanly(
    models: dict[str, Path], users: list[str], tmp_path: Path
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = tmp_path / "imp"
    env = {**os.environ, "ROWRANK_ADMIN_TOKEN": TOKEN, ENV_WORKER_MIN_UPTIME: "0.5"}
    cmd = rowrank_cmd("serve", models["a"], "--port", str(port), "--workers", "2")
    cmd += ["--log-impressions", str(log_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, timeout=60)
        # The first ready answer comes from one worker; the other may still be loading (and
        # answers 503 until it is), so wait, bounded, until two distinct workers say ready.
        ready_pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(ready_pids) < 2 and time.monotonic() < deadline:
            ready = requests.get(f"{url}/readyz", headers={"connection": "close"})
            if ready.status_code == 200:
                ready_pids.add(ready.json()["pid"])
            time.sleep(0.02)
        assert len(ready_pids) == 2
        # A worker that dies is replaced (and, below, the replacement follows the reload); one
        # that dies sooner than ROWRANK_WORKER_MIN_UPTIME after starting (0.5 s here) would
        # stop the server instead.
        victim = min(ready_pids)
        up = time.time() - psutil.Process(victim).create_time()
        time.sleep(max(0.0, 1.0 - up))
        os.kill(victim, signal.SIGKILL)
        replacement = None
        deadline = time.monotonic() + 60
        while replacement is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                ready = requests.get(f"{url}/readyz", headers={"connection": "close"})
                if ready.status_code == 200 and ready.json()["pid"] not in ready_pids:
                    replacement = ready.json()["pid"]
            time.sleep(0.05)
        assert replacement is not None
        assert requests.get(f"{url}/v1/users/{users[0]}/page").status_code == 200
        r = _reload(url, {"model_dir": "b"})
        assert r.status_code == 200 and r.json()["generation"] == 1
        new = r.json()["model_version"]
        workers: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # A fresh connection each time, so both workers get asked.
            ready = requests.get(f"{url}/readyz", headers={"connection": "close"})
            if ready.status_code == 200:  # 503 while a worker is still loading its model
                workers[ready.json()["pid"]] = ready.json()
            if len(workers) == 2 and all(d["generation"] == 1 for d in workers.values()):
                break
            time.sleep(0.02)
        assert len(workers) == 2 and replacement in workers
        assert {(d["generation"], d["model_version"]) for d in workers.values()} == {(1, new)}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert read_impressions(log_dir)["page_id"].n_unique() == 1


@pytest.mark.slow
def test_cli_serve_stops_when_a_worker_dies_right_after_starting(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """No restart loop: a worker that dies soon after starting (a model that crashes it, a bind
    that fails) stops the whole server with a message, exit code 1."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, ENV_WORKER_MIN_UPTIME: "600"}  # any death counts as "soon" here
    cmd = rowrank_cmd("serve", models["a"], "--port", str(port), "--workers", "2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pid = _wait_ready(url, timeout=60)["pid"]
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert f"worker {pid} exited with code -9 within" in out.decode()


def test_attribute_plays_marks_titles_played_within_the_horizon() -> None:
    from datetime import UTC, datetime, timedelta

    from engine.serving.impression_log import attribute_plays

    t = datetime(2026, 11, 27, 20, tzinfo=UTC)
    schema = {c.name: c.dtype for c in SCHEMA[IMPRESSIONS]}
    imp = pl.DataFrame(
        {
            "page_id": ["p"] * 4,
            "user_id": ["u1", "u1", "u1", "u2"],
            "ts": [t] * 4,
            "device": ["tv"] * 4,
            "row_index": [0, 0, 0, 0],
            "row_kind": ["top_n"] * 4,
            "row_id": ["top_n"] * 4,
            "position": [0, 1, 2, 3],
            "title_id": ["a", "b", "c", "a"],
            "played": [False] * 4,
        },
        schema=schema,
    )
    plays = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "title_id": ["a", "b", "c", "b"],
            # a: 1 h after (played); b: 7 h after (beyond 6 h); c: before the page; u2 a: never.
            "ts": [t + timedelta(hours=1), t + timedelta(hours=7), t - timedelta(hours=1), t],
        },
        schema={"user_id": pl.String, "title_id": pl.String, "ts": pl.Datetime("us", "UTC")},
    )
    out = attribute_plays(imp, plays)
    assert out["played"].to_list() == [True, False, False, False]
    assert out.schema == imp.schema
    assert attribute_plays(imp, plays, timedelta(hours=8))["played"].to_list()[:2] == [True, True]
