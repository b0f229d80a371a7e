"""Model-directory artifacts and the service's paths:
- every file of a model directory is checked against the manifest's sha256 on load: one byte
  flipped (or the file gone) in any of them is a ModelLoadError naming that file, and no file
  the loader reads escapes the manifest;
- `engine.training.train.trained_with`, which the benchmarks check before reusing a kept model,
tells it
  from one of another model format, config, data or cut-off, or with a damaged file;
- the admin (reload) endpoint refuses every request without the right bearer token, and
  refuses all of them when no token is configured;
- a path given to the service cannot leave its directory: `..`, absolute paths, symlinks
  (chains and loops), NUL bytes, nothing outside the models root is loaded, and a request path
  never reaches a file."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import TinyWorld, tiny_engine_config
from damage import (
    copy_model,
    flip_byte,
    listed_files,
    read_manifest,
    wait_ready,
    write_manifest,
)
from servers import ServerThread

import engine
from engine.config import EngineConfig
from engine.errors import ModelLoadError
from engine.serving.http import create_app
from engine.training.train import trained_with

TOKEN = "an-admin-token-0123456789"
TIMEOUT = 60


# ----- checksums ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_model(tiny_model, tmp_path_factory.mktemp("artifacts") / "m")


def test_trained_with_tells_a_kept_model_from_a_stale_one(
    model: Path, tiny_world: TinyWorld, tiny_config: EngineConfig, tmp_path: Path
) -> None:
    # What the benchmarks check before reusing a kept model (engine.training.train.trained_with).
    assert trained_with(model, tiny_world.path, tiny_config)
    assert trained_with(model, tiny_world.path, tiny_config, until=None)
    other = tiny_engine_config(title_trees=41)
    assert not trained_with(model, tiny_world.path, other)  # another config
    assert not trained_with(tmp_path / "none", tiny_world.path, tiny_config)  # no model
    data = tmp_path / "data"
    shutil.copytree(tiny_world.path, data)
    assert trained_with(model, data, tiny_config)  # same files elsewhere
    (data / "plays.parquet").write_bytes((data / "plays.parquet").read_bytes() + b"\0")
    assert not trained_with(model, data, tiny_config)  # other data
    manifest = read_manifest(model)
    old = copy_model(model, tmp_path / "old")
    write_manifest(old, {**manifest, "format": manifest["format"] + 1})
    assert not trained_with(old, tiny_world.path, tiny_config)  # another model format
    write_manifest(old, {**manifest, "cutoff": "2001-01-01T00:00:00+00:00"})
    assert trained_with(old, tiny_world.path, tiny_config)
    assert not trained_with(
        old, tiny_world.path, tiny_config, until=datetime(2002, 1, 1, tzinfo=UTC)
    )
    flip_byte(old / "title_model.txt")
    assert not trained_with(old, tiny_world.path, tiny_config)  # a file no longer loads


def test_the_manifest_covers_every_file_the_loader_can_read(model: Path) -> None:
    on_disk = {str(p.relative_to(model)) for p in model.rglob("*") if p.is_file() or p.is_symlink()}
    listed = set(listed_files(model))
    assert on_disk - listed == {"manifest.json"}  # the manifest holds the checksums
    assert listed <= on_disk
    # Both models, the config, the history and every configured ranker's state are among them.
    assert {"title_model.txt", "row_model.txt", "config.json"} <= listed
    assert any(f.startswith("history/") for f in listed)
    rankers = read_manifest(model)["config"]["rankers"]
    for name in rankers:
        assert any(f.startswith(f"rankers/{name}/") for f in listed), name


def test_a_flipped_byte_in_any_file_is_refused_naming_the_file(model: Path) -> None:
    files = listed_files(model)
    assert len(files) >= 10
    for rel in files:
        path = model / rel
        original = path.read_bytes()
        flip_byte(path)
        try:
            with pytest.raises(ModelLoadError, match=re.escape(rel)) as info:
                engine.load(model)
            assert "sha256" in str(info.value)
        finally:
            path.write_bytes(original)
    assert engine.load(model).model_version == read_manifest(model)["model_version"]


@pytest.mark.parametrize("rel", ["title_model.txt", "config.json", "history/history.npz"])
def test_a_missing_file_is_refused_naming_the_file(model: Path, tmp_path: Path, rel: str) -> None:
    damaged = copy_model(model, tmp_path / "m")
    (damaged / rel).unlink()
    with pytest.raises(ModelLoadError, match=re.escape(f"{rel} is missing")):
        engine.load(damaged)


@pytest.mark.parametrize("entry", ["../outside.bin", "ABSOLUTE"])
def test_manifest_entries_cannot_point_outside_the_directory(
    model: Path, tmp_path: Path, entry: str
) -> None:
    damaged = copy_model(model, tmp_path / "models" / "m")
    outside = tmp_path / "models" / "outside.bin"
    outside.write_bytes(b"not part of the model")
    name = str(outside) if entry == "ABSOLUTE" else entry
    doc = read_manifest(damaged)
    doc["files"][name] = hashlib.sha256(outside.read_bytes()).hexdigest()
    write_manifest(damaged, doc)
    with pytest.raises(ModelLoadError, match=re.escape(name)):
        engine.load(damaged)


# ----- the admin token ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root: the served model `a`, links inside and out, and a model outside."""
    base = tmp_path_factory.mktemp("paths")
    root = base / "root"
    root.mkdir()
    copy_model(model, root / "a")
    copy_model(model, base / "outside")
    (root / "escape").symlink_to(base / "outside")
    (root / "chain").symlink_to(root / "escape")  # a link to a link that leaves
    (root / "inner").symlink_to(root / "a")  # stays inside: allowed
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "a_file").symlink_to(root / "a" / "manifest.json")
    (root / "%2e%2e").mkdir()  # a directory literally named so: not a way up
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[str]:
    with ServerThread(create_app(root / "a", admin_token=TOKEN, models_root=root)) as url:
        wait_ready(url)
        yield url


def reload(url: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    headers = {"authorization": f"Bearer {TOKEN}"} if headers is None else headers
    return requests.post(f"{url}/v1/admin/reload", json=body, headers=headers, timeout=TIMEOUT)


BAD_AUTH: list[tuple[str, dict[str, str]]] = [
    ("none", {}),
    ("empty", {"authorization": ""}),
    ("wrong", {"authorization": "Bearer wrong"}),
    ("prefix", {"authorization": f"Bearer {TOKEN[:-1]}"}),
    ("longer", {"authorization": f"Bearer {TOKEN}x"}),
    ("no_scheme", {"authorization": TOKEN}),
    ("basic", {"authorization": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()}),
    ("other_scheme", {"authorization": f"Token {TOKEN}"}),
    ("other_header", {"x-admin-token": TOKEN}),
    ("empty_bearer", {"authorization": "Bearer "}),
]


@pytest.mark.parametrize("headers", [h for _, h in BAD_AUTH], ids=[n for n, _ in BAD_AUTH])
def test_reload_without_the_token_is_refused(
    server: str, root: Path, headers: dict[str, str]
) -> None:
    before = wait_ready(server)
    r = reload(server, {"model_dir": "inner"}, headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"
    assert TOKEN not in r.text
    assert wait_ready(server) == before  # same model, same generation


def test_reload_with_no_token_configured_is_disabled(root: Path) -> None:
    app = create_app(root / "a", admin_token="", models_root=root)
    with ServerThread(app) as url:
        wait_ready(url)
        for headers in ({}, {"authorization": "Bearer "}, {"authorization": f"Bearer {TOKEN}"}):
            r = reload(url, {"model_dir": "inner"}, headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "reload_disabled"
        assert wait_ready(url)["generation"] == 0


# ----- paths --------------------------------------------------------------------------------------

# (model_dir as sent, status, error code)
PATHS: list[tuple[str, str, int, str]] = [
    ("dotdot", "../outside", 400, "model_dir_outside_root"),
    ("dotdot_nested", "a/../../outside", 400, "model_dir_outside_root"),
    ("dotdot_deep", "a/" + "../" * 40 + "etc", 400, "model_dir_outside_root"),
    ("absolute_outside", "OUTSIDE", 400, "model_dir_outside_root"),
    ("absolute_root_of_fs", "/", 400, "model_dir_outside_root"),
    ("symlink_out", "escape", 400, "model_dir_outside_root"),
    ("symlink_chain_out", "chain", 400, "model_dir_outside_root"),
    ("symlink_loop", "loop1", 400, "bad_model_dir"),
    ("nul_byte", "a\x00/../../outside", 400, "bad_model_dir"),
    ("empty", "", 400, "bad_model_dir"),
    ("encoded_dots_are_a_name", "%2e%2e", 422, "model_load_failed"),
    ("no_tilde_expansion", "~/outside", 422, "model_dir_not_found"),
    ("symlink_to_a_file", "a_file", 422, "model_dir_not_found"),
]


@pytest.mark.parametrize(
    ("requested", "status", "code"), [p[1:] for p in PATHS], ids=[p[0] for p in PATHS]
)
def test_reload_paths_cannot_leave_the_models_root(
    server: str, root: Path, requested: str, status: int, code: str
) -> None:
    if requested == "OUTSIDE":
        requested = str(root.parent / "outside")
    before = wait_ready(server)
    r = reload(server, {"model_dir": requested})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text
    assert wait_ready(server) == before


def test_a_symlink_that_stays_inside_the_root_is_allowed(server: str, root: Path) -> None:
    r = reload(server, {"model_dir": "inner"})
    assert r.status_code == 200, r.text
    assert r.json()["model_dir"] == str((root / "a").resolve())  # the resolved target
    assert wait_ready(server)["generation"] == 0  # one worker: no shared generations


@pytest.mark.parametrize(
    "path",
    [
        "/preview/..%2F..%2F..%2Fetc%2Fpasswd",
        "/preview/../../../etc/passwd",
        "/v1/users/..%2F..%2Fetc%2Fpasswd/page",
        "/preview.css/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/openapi.json%00../../etc/passwd",
    ],
)
def test_request_paths_never_reach_a_file(server: str, path: str) -> None:
    """Sent raw (no client-side dot-segment removal): a route or a 4xx, never a file."""
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status in (200, 400, 404), (resp.status, body[:200])
    assert b"root:" not in body
    if resp.status == 200:  # only a page for the odd-looking member id, rendered as HTML
        assert resp.getheader("content-type", "").startswith("text/html")


def test_a_models_root_given_as_a_symlink_is_resolved(root: Path, tmp_path: Path) -> None:
    """The root is resolved once: a reload below a symlinked root is judged by real paths."""
    link = tmp_path / "root_link"
    link.symlink_to(root)
    app = create_app(link / "a", admin_token=TOKEN, models_root=link)
    with ServerThread(app) as url:
        wait_ready(url)
        assert reload(url, {"model_dir": "escape"}).status_code == 400
        assert reload(url, {"model_dir": str(link / "inner")}).status_code == 200
