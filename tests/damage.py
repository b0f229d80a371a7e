"""Helpers of the reliability tests (test_bad_input_*, test_model_artifacts, test_fuzz_api,
test_faults): snapshots that prove an output was not touched, and damaged copies of model
directories and datasets. Nothing here trains a model: damage is done to copies of the
session's `tiny_model` / `tiny_world`."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import requests

MANIFEST = "manifest.json"
CONFIG = "config.json"


def snapshot(root: Path) -> dict[str, tuple[str, int] | str]:
    """Every entry under `root` (hidden ones included): files as (sha256, mtime_ns),
    directories as "dir", symlinks as "-> target". Equal snapshots: nothing was written,
    replaced, added or removed (a rewrite with the same bytes changes mtime_ns)."""
    out: dict[str, tuple[str, int] | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"-> {p.readlink()}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


# ----- model directories ------------------------------------------------------------------------


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_manifest(model: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((model / MANIFEST).read_bytes())
    return doc


def write_manifest(model: Path, doc: dict[str, Any]) -> None:
    (model / MANIFEST).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def listed_files(model: Path) -> list[str]:
    """The files the manifest checksums, sorted."""
    return sorted(read_manifest(model)["files"])


def refresh_checksum(model: Path, rel: str) -> None:
    """Make the manifest agree with the file again: damage that the checksum cannot see, as a
    bad train, a bad disk under a rewritten manifest, or a hand edit would leave it."""
    doc = read_manifest(model)
    doc["files"][rel] = hashlib.sha256((model / rel).read_bytes()).hexdigest()
    write_manifest(model, doc)


def truncate(model: Path, rel: str, *, keep: float = 0.5, fix_checksum: bool = False) -> None:
    """Cut `rel` to the first `keep` of its bytes."""
    data = (model / rel).read_bytes()
    (model / rel).write_bytes(data[: int(len(data) * keep)])
    if fix_checksum:
        refresh_checksum(model, rel)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte (the middle one by default): same size, different content."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def set_version(model: Path, rowrank_version: str) -> None:
    """Pretend the directory was written by another rowrank (the manifest is not checksummed:
    it holds the checksums)."""
    doc = read_manifest(model)
    doc["rowrank_version"] = rowrank_version
    write_manifest(model, doc)


def edit_config(model: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the saved engine config and refresh its checksum, so the config itself is what
    loading has to judge."""
    doc: dict[str, Any] = orjson.loads((model / CONFIG).read_bytes())
    change(doc)
    (model / CONFIG).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    refresh_checksum(model, CONFIG)


def first_ranker(model: Path, type_name: str) -> str:
    """The instance name of the first configured ranker of `type_name`."""
    doc = orjson.loads((model / CONFIG).read_bytes())
    return next(n for n, t in doc["rankers"].items() if t["type"] == type_name)


# ----- datasets ---------------------------------------------------------------------------------


def copy_world(src: Path, dst: Path) -> Path:
    """The dataset files of a simulated world (its ground truth is not part of the dataset)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ground_truth"))
    return dst


def edit_table(data: Path, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    path = data / f"{table}.parquet"
    change(pl.read_parquet(path)).write_parquet(path)


def set_cell(frame: pl.DataFrame, column: str, row: int, value: Any) -> pl.DataFrame:
    """`frame` with one value replaced (the column keeps its dtype when the value fits)."""
    lit = pl.lit(value, dtype=frame.schema[column])
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(lit).otherwise(pl.col(column)).alias(column)
    )


# ----- servers ----------------------------------------------------------------------------------


def wait_ready(url: str, timeout: float = 60.0) -> dict[str, Any]:
    """/readyz once it says 200 (the model loads in the background at start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                doc: dict[str, Any] = r.json()
                return doc
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become ready within {timeout:.0f} s")
