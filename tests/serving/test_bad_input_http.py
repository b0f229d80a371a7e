"""The bad-input matrix of the HTTP API, against a real uvicorn socket serving the trained
`tiny_model` (tests/servers.py's ServerThread), with impression logging on.

Each cell is a request (or a reload of a damaged model directory) that must be answered with
a 4xx JSON error whose message names the bad value, and must change nothing: the same model
keeps serving, no model directory under the root is touched, no impression is logged for a
refused request. An unknown member is the one cell that is not an error: a cold-start page.
test_serve.py tests the error format route by route; this file walks the matrix of
docs/reliability.md, including the model-directory cells only a reload can reach."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from damage import (
    copy_model,
    edit_config,
    first_ranker,
    set_version,
    snapshot,
    truncate,
    wait_ready,
)
from servers import ServerThread

from engine.serving.http import create_app

TOKEN = "t0ken-for-tests"
AT = "2026-11-27T21:00:00+01:00"
TIMEOUT = 60
OVERFLOW = "9999-12-31T23:59:59-12:00"  # ISO 8601, but in UTC it is the year 10000

# name -> damage applied to a copy of tiny_model under the models root
DAMAGED: dict[str, Callable[[Path], None]] = {
    "other_version": lambda m: set_version(m, "0.0.1"),
    "truncated": lambda m: truncate(m, "title_model.txt"),
    # The same cut with a matching checksum: the reader must refuse it (LightGBM 4.7 would
    # abort the whole server on it, lightgbm-org/LightGBM#3733).
    "truncated_matching_checksum": lambda m: truncate(m, "title_model.txt", fix_checksum=True),
    "unknown_config_key": lambda m: edit_config(
        m, lambda c: c["rankers"]["top_picks"].update(colour="red")
    ),
    "config_wrong_type": lambda m: edit_config(
        m, lambda c: c["rankers"][first_ranker(m, "trending")].update(half_life_hours="soon")
    ),
    "corrupt_npz": lambda m: truncate(m, "history/history.npz", fix_checksum=True),
}


@pytest.fixture(scope="module")
def root(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    copy_model(tiny_model, root / "live")
    for name, damage in DAMAGED.items():
        damage(copy_model(tiny_model, root / name))
    return root


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("impressions")
    app = create_app(root / "live", admin_token=TOKEN, models_root=root, impressions_dir=logs)
    with ServerThread(app) as url:
        wait_ready(url)
        yield url


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=TIMEOUT).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


LOGGED = 'rowrank_impression_pages_total{outcome="logged"}'


@pytest.fixture
def unchanged(server: str, root: Path) -> Iterator[None]:
    """The test's requests change nothing: same model served, model dirs and log untouched."""
    version = wait_ready(server)["model_version"]
    dirs = snapshot(root)
    logged = metric(server, LOGGED)
    yield
    assert wait_ready(server)["model_version"] == version
    assert snapshot(root) == dirs
    assert metric(server, LOGGED) == logged


def check_error(r: requests.Response, status: int, code: str, words: list[str]) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err["message"])
    assert "Traceback" not in r.text


# (cell, method, path, json body or raw bytes, status, code, words)
REQUEST_CELLS: list[tuple[str, str, str, Any, int, str, list[str]]] = [
    (
        "unknown_device",
        "GET",
        "/v1/users/u1/page?device=toaster",
        None,
        400,
        "bad_device",
        ["'toaster'", "tv, mobile, tablet, web"],
    ),
    (
        "unknown_device_batch",
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a"}, {"user_id": "b", "device": "toaster"}]},
        400,
        "bad_device",
        ["requests[1]", "'toaster'"],
    ),
    (
        "malformed_time",
        "GET",
        "/v1/users/u1/page?at=yesterday",
        None,
        400,
        "bad_time",
        ["'yesterday'", "ISO 8601"],
    ),
    (
        "invalid_date",
        "GET",
        "/v1/users/u1/page?at=2026-02-30T10:00:00",
        None,
        400,
        "bad_time",
        ["'2026-02-30T10:00:00'"],
    ),
    (
        "out_of_range_time",
        "GET",
        "/v1/users/u1/page?at=" + OVERFLOW.replace("-12:00", "%2D12:00"),
        None,
        400,
        "bad_time",
        [OVERFLOW, "out of range"],
    ),
    (
        "out_of_range_time_batch",
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a", "at": "0001-01-01T00:00:00+14:00"}]},
        400,
        "bad_time",
        ["requests[0]", "0001-01-01T00:00:00+14:00", "out of range"],
    ),
    (
        "wrong_dtype_user",
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": 7}]},
        400,
        "bad_user_id",
        ["requests[0]", "7"],
    ),
    (
        "wrong_dtype_device",
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a", "device": 3}]},
        400,
        "bad_device",
        ["requests[0]", "device must be a string, got 3"],
    ),
    (
        "wrong_dtype_requests",
        "POST",
        "/v1/pages",
        {"requests": {"user_id": "a"}},
        400,
        "bad_requests",
        ['"requests" must be a list'],
    ),
    (
        "missing_field_user_id",
        "POST",
        "/v1/pages",
        {"requests": [{"device": "tv"}]},
        400,
        "bad_user_id",
        ["requests[0]: user_id is required"],
    ),
    (
        "missing_field_requests",
        "POST",
        "/v1/pages",
        {},
        400,
        "bad_requests",
        ['"requests" must be a list', "None"],
    ),
    ("empty_body", "POST", "/v1/pages", b"", 400, "bad_json", ["not valid JSON"]),
    (
        "unknown_field",
        "GET",
        "/v1/users/u1/page?colour=red",
        None,
        400,
        "unknown_field",
        ["'colour'", "device, at, country"],
    ),
    (
        "oversize_body",
        "POST",
        "/v1/pages",
        b'{"requests": [' + b" " * (1 << 20) + b"]}",
        413,
        "body_too_large",
        ["1,048,576 bytes"],
    ),
    (
        "oversize_batch",
        "POST",
        "/v1/pages",
        {"requests": [{"user_id": "a"}] * 101},
        413,
        "batch_too_large",
        ["101 requests", "at most 100"],
    ),
    (
        "oversize_user_id",
        "GET",
        "/v1/users/" + "x" * 5000 + "/page",
        None,
        400,
        "bad_user_id",
        ["5000 characters", "at most 256"],
    ),
    (
        "oversize_query_value",
        "GET",
        "/v1/users/u1/page?at=" + "9" * 100_000,
        None,
        400,
        "bad_time",
        ["malformed time"],
    ),
    (
        "oversize_reload_path",
        "POST",
        "/v1/admin/reload",
        {"model_dir": "a" * 5000},
        400,
        "bad_model_dir",
        ["cannot be resolved", "too long"],
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "words"),
    [c[1:] for c in REQUEST_CELLS],
    ids=[c[0] for c in REQUEST_CELLS],
)
def test_bad_request(
    server: str,
    unchanged: None,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    words: list[str],
) -> None:
    kw: dict[str, Any] = {"timeout": TIMEOUT, "headers": {"authorization": f"Bearer {TOKEN}"}}
    if isinstance(body, bytes):
        kw["data"] = body
    elif body is not None:
        kw["json"] = body
    check_error(requests.request(method, server + path, **kw), status, code, words)


def test_preview_bad_time_is_the_html_form_with_the_message(server: str, unchanged: None) -> None:
    r = requests.get(f"{server}/preview/u1", params={"at": OVERFLOW}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert "out of range" in r.text and "Traceback" not in r.text
    # A duplicated field too (it used to escape the HTML route as a JSON error).
    r = requests.get(f"{server}/preview/u1?device=tv&device=web", timeout=TIMEOUT)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert "more than once" in r.text


# (cell, model directory under the root, words of the 422 message)
RELOAD_CELLS: list[tuple[str, str, list[str]]] = [
    ("other_version", "other_version", ["written by rowrank 0.0.1", "retrain"]),
    ("truncated_model_file", "truncated", ["title_model.txt does not match its sha256"]),
    (
        "truncated_model_text_matching_checksum",
        "truncated_matching_checksum",
        ["title_model.txt", "the file is cut"],
    ),
    ("unknown_config_key", "unknown_config_key", ["unknown key 'colour'"]),
    ("config_wrong_type", "config_wrong_type", ["key 'half_life_hours'", "'soon'"]),
    ("corrupt_npz", "corrupt_npz", ["cannot read the history"]),
]


@pytest.mark.parametrize(
    ("name", "words"), [c[1:] for c in RELOAD_CELLS], ids=[c[0] for c in RELOAD_CELLS]
)
def test_reload_of_a_bad_model_is_refused_and_the_old_one_serves(
    server: str, unchanged: None, name: str, words: list[str]
) -> None:
    failed = metric(server, 'rowrank_model_reloads_total{result="failed"}')
    r = requests.post(
        f"{server}/v1/admin/reload",
        json={"model_dir": name},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    )
    check_error(r, 422, "model_load_failed", [*words, "the previous model keeps serving"])
    assert metric(server, 'rowrank_model_reloads_total{result="failed"}') == failed + 1
    # Pages still build (the preview: not logged as impressions, so `unchanged` holds).
    params = {"at": AT, "country": "US"}
    page = requests.get(f"{server}/preview/u1", params=params, timeout=TIMEOUT)
    assert page.status_code == 200


def test_unknown_user_gets_a_cold_start_page(server: str, root: Path) -> None:
    """The one cell that is not an error: a page (logged once, like any served page)."""
    logged = metric(server, LOGGED)
    params = {"at": AT, "country": "US"}
    r = requests.get(f"{server}/v1/users/nobody-knows-me/page", params=params, timeout=TIMEOUT)
    assert r.status_code == 200
    page = r.json()
    assert page["user_id"] == "nobody-knows-me" and page["rows"]
    batch = requests.post(
        f"{server}/v1/pages",
        json={"requests": [{"user_id": "nobody-knows-me", **params}]},
        timeout=TIMEOUT,
    )
    assert batch.status_code == 200 and batch.json()["pages"] == [page]
    # Logging runs off the request path: wait (bounded) for the logger thread to count both.
    deadline = time.monotonic() + 15
    while metric(server, LOGGED) < logged + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, LOGGED) == logged + 2


def test_empty_batch_is_an_empty_answer(server: str, unchanged: None) -> None:
    r = requests.post(f"{server}/v1/pages", json={"requests": []}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {"pages": []}
