"""A model directory's manifest: the one place that reads and checks it.

`rowrank train` (engine.training.train) writes the directory and its manifest.json (format, rowrank
version, model version, the sha256 of every file); `engine.load` (engine.pipeline) and
precompute's parent read it here. Light on purpose: precompute's parent only needs the model
version and the member list, and importing the page pipeline (numba, LightGBM) and loading the
rankers cost it 1.2-1.8 s against 0.3-0.5 s for this (bench/bench_precompute.py prints both).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

import engine
from engine.errors import ModelLoadError

if TYPE_CHECKING:
    from engine.data.history import History

MANIFEST = "manifest.json"
MODEL_DIR_FORMAT = 1
HISTORY_DIR = "history"  # engine.data.history.History.save/load


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The manifest, after checking format, rowrank version and every file's sha256."""
    path = model_dir / MANIFEST
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model directory {model_dir} does not exist: train one with "
            "`rowrank train DATA_DIR MODEL_DIR`"
        )
    try:
        manifest: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model_dir} is not a rowrank model directory (no {MANIFEST}): train one with "
            "`rowrank train DATA_DIR MODEL_DIR`"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if manifest.get("format") != MODEL_DIR_FORMAT:
        raise ModelLoadError(
            f"{path}: model directory format {manifest.get('format')!r}, this rowrank reads "
            f"{MODEL_DIR_FORMAT}: retrain with `rowrank train`"
        )
    if manifest.get("rowrank_version") != engine.__version__:
        raise ModelLoadError(
            f"{path}: written by rowrank {manifest.get('rowrank_version')}, this is rowrank "
            f"{engine.__version__}: retrain with `rowrank train`"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelLoadError(f"{path} lists no files")
    root = model_dir.resolve()
    for rel, digest in sorted(files.items()):
        f = model_dir / rel
        # A manifest entry may name only a file inside the directory: never '..' or absolute.
        if Path(rel).is_absolute() or not f.resolve().is_relative_to(root):
            raise ModelLoadError(f"{path}: entry {rel} points outside {model_dir}")
        if not f.is_file():
            raise ModelLoadError(f"{model_dir}: {rel} is missing (listed in {MANIFEST})")
        if sha256_file(f) != digest:
            raise ModelLoadError(
                f"{model_dir}: {rel} does not match its sha256 in {MANIFEST}: the file was "
                "changed or corrupted; retrain or restore the directory"
            )
    return manifest


def read_history(model_dir: Path) -> tuple[dict[str, Any], History]:
    """The checked manifest and the History saved beside it, without the rankers and models."""
    from engine.data.history import History

    manifest = read_manifest(model_dir)
    return manifest, History.load(model_dir / HISTORY_DIR)
