"""Batch precompute: one page per (user, context) for every user, written as sharded files.

    rowrank precompute MODEL_DIR OUT_DIR [--users FILE] [--device D ...] [--at T ...]
                       [--workers N] [--engine local|dask] [--scheduler ADDR]
                       [--format jsonl|parquet|items] [--shard-size N] [--limit N | --sample N]

Shard k holds users [k * shard_size, (k + 1) * shard_size) of the user list, each with every
context of the grid (devices x times), user-major. A shard is computed by one worker, written
under a temporary name, fsynced and renamed into place; then a done marker (`done/shard-K.json`,
holding the shard's sha256) is written the same way. A rerun skips every shard whose file
matches its marker, so a run killed at any moment (SIGKILL included) and started again ends with
exactly the output of an uninterrupted run: no page missing, none duplicated. `manifest.json`
names the job (model version, contexts, users, shard size, format); a rerun into a directory
holding a different job is refused before anything is touched.

Workers (local processes or Dask tasks) get shard indices and the shard's user ids, load the
model once each and return a small per-shard summary; pages never travel back to the parent, so
memory stays bounded by one shard per worker however many users there are.

A worker builds its shard's pages a block of members at a time (`BLOCK_PAGES` pages, every
context of each member) through the engine's block path, `Engine.iter_pages`, whose pages are
byte for byte those of `Engine.page`; an engine without one is asked a page at a time.

Progress is counted per page: local workers add to a shared counter the parent shows (a bar on a
terminal, a plain line every few seconds otherwise). SIGINT (Ctrl-C) sets a shared stop flag
that local workers check before every block of pages: a shard in progress is dropped (its
temporary file removed), the manifest lists the shards that are complete, and the run exits 130
within about a block's time (under a second); the same command resumes it.

This module imports nothing heavy at the top: a spawned worker sets its thread limits before
numpy, polars or LightGBM are imported (see `_limit_threads`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from engine.errors import BadRequestError, RowrankError
from engine.serving.processes import exit_with_parent, load_frozen
from engine.training.model_dir import read_history, sha256_file

if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DONE_DIR = "done"
LOCK_FILE = ".lock"
TMP_TAG = ".tmp."  # temporary files: ".<name>.tmp.<pid>", removed by the next run
FORMATS: tuple[str, ...] = ("jsonl", "parquet", "items")
# Shard file extensions: "items" is Parquet too, one row per title shown (docs/precompute.md).
_EXTENSIONS = {"jsonl": "jsonl", "parquet": "parquet", "items": "items.parquet"}
ENGINES: tuple[str, ...] = ("local", "dask")
# 1,000 users x 2 contexts is ~2,000 pages (~4 s of one worker at ~500 pages/s, a few MB):
# small enough that a kill loses little work, large enough that per-shard costs (fsync,
# checksum, task overhead) stay well under 1% of the time. The default shard size
# (`auto_shard_size`) is this, or smaller when there are too few users to give every worker
# several shards.
DEFAULT_SHARD_SIZE = 1_000
MIN_AUTO_SHARD_SIZE = 10
SHARDS_PER_WORKER = 4  # with fewer, one slow shard at the end leaves the other workers idle
PROGRESS_LINE_SECONDS = 10.0  # a plain progress line this often when the log is not a terminal
ENV_PROGRESS_SECONDS = "ROWRANK_PROGRESS_SECONDS"  # overrides PROGRESS_LINE_SECONDS
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
DEFAULT_DEVICES: tuple[str, ...] = ("tv", "mobile")
DEFAULT_HOUR = 20  # prime time: the default `at` is the first 20:00 UTC after the cut-off
MAX_USER_ID_LEN = 128
# Pages per `Engine.pages` call (whole members: a block holds every context of its members).
# Past a few hundred pages the shared work per block (the title signals of a time, the calls)
# is spread thin; 512 keeps a block's pages a few MB and Ctrl-C answered within about a second.
BLOCK_PAGES = 512
# Tasks queued per worker: enough to keep workers busy, few enough that the parent never holds
# the whole user list as task arguments.
_IN_FLIGHT_PER_WORKER = 2


class PrecomputeInterrupted(Exception):
    """A shard stopped before its end because the run was interrupted (SIGINT)."""


class PrecomputeConflictError(RowrankError):
    """OUT_DIR holds something else than this job: another job's output or foreign files."""


class PrecomputeFailedError(RowrankError):
    """A shard failed; finished shards are kept and a rerun resumes from them."""


class PageSource(Protocol):
    """What precompute needs from an engine (engine.pipeline.Engine satisfies it)."""

    @property
    def model_version(self) -> str: ...

    def page(self, user_id: str, device: str = ..., at: Any = ..., country: Any = ...) -> Any: ...


@runtime_checkable
class BlockPageSource(PageSource, Protocol):
    """An engine with a block path (engine.pipeline.Engine): precompute builds a shard's pages
    a block of members at a time through it."""

    def context(
        self, user_id: str, device: str = ..., at: Any = ..., country: Any = ...
    ) -> Any: ...

    def iter_pages(self, requests: Sequence[Any]) -> Iterator[Any]: ...


Loader = Callable[[Path], PageSource]


def load_engine(model_dir: Path) -> PageSource:
    """The default loader: `engine.load(model_dir)`."""
    import engine

    return engine.load(model_dir)


# ----- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridContext:
    """One cell of the context grid. `at` is normalized ISO 8601 with its UTC offset."""

    device: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return {"device": self.device, "at": self.at}


@dataclass(frozen=True)
class BadLine:
    """A line of a --users file that was skipped, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class JobSpec:
    """What identifies a precompute job: equal specs produce byte-equal output."""

    model_version: str
    contexts: tuple[GridContext, ...]
    n_users: int
    users_sha256: str
    shard_size: int
    format: str

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_users / self.shard_size)

    def identity(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "contexts": [c.to_dict() for c in self.contexts],
            "users": {"count": self.n_users, "sha256": self.users_sha256},
            "shard_size": self.shard_size,
            "format": self.format,
        }

    @property
    def job_id(self) -> str:
        return hashlib.sha256(orjson.dumps(self.identity())).hexdigest()[:16]

    def shard_file(self, shard: int) -> str:
        width = max(5, len(str(max(self.n_shards - 1, 0))))
        return f"shard-{shard:0{width}d}.{_EXTENSIONS[self.format]}"

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_users)


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard; small (the shard's user ids, no pages)."""

    shard: int
    users: tuple[str, ...]
    contexts: tuple[GridContext, ...]
    format: str
    file: str
    out_dir: str
    model_dir: str
    model_version: str
    job_id: str


@dataclass
class PrecomputeResult:
    """What a run did. `exit_code`: 0 all fine, 1 some --users lines were bad or a shard failed."""

    out_dir: Path
    spec: JobSpec
    bad_lines: list[BadLine]
    unknown_users: int  # listed users the model has never seen: they get cold-start pages
    shards_resumed: int
    shards_run: int
    pages_run: int
    seconds: float
    completed: bool
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by SIGINT; the manifest lists the shards complete
    # With --engine dask: each worker's resident-set high-water mark at the end, MB.
    worker_peak_rss_mb: list[float] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 1 if (self.bad_lines or self.failures or not self.completed) else 0


# ----- inputs: users and contexts ---------------------------------------------------------------


def parse_users_file(path: Path) -> tuple[list[str], list[BadLine]]:
    """User ids from a file, one per line, in file order; bad lines are skipped and returned.

    Bad: not UTF-8, empty or blank, containing whitespace or control characters, longer than
    MAX_USER_ID_LEN characters, or a repeat of an earlier line. A user id the model does not
    know is NOT bad: the engine serves such users a cold-start page. Lines may end in \\n or
    \\r\\n. The set of seen ids is held for the duplicate check (memory ~ the ids themselves).
    """
    users: list[str] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            reason = None
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 (byte {exc.start})"
                text = ""
            if reason is None:
                if not text.strip():
                    reason = "empty line"
                elif any(ch.isspace() or not ch.isprintable() for ch in text):
                    reason = f"{text[:40]!r} contains whitespace or control characters"
                elif len(text) > MAX_USER_ID_LEN:
                    reason = f"longer than {MAX_USER_ID_LEN} characters ({len(text)})"
                elif text in seen:
                    reason = f"{text!r} repeats line {seen[text]}"
            if reason is not None:
                bad.append(BadLine(number, reason))
                continue
            seen[text] = number
            users.append(text)
    return users, bad


def default_at(cutoff_us: int) -> datetime:
    """The first DEFAULT_HOUR:00 UTC at or after the model's cut-off: tonight's prime time."""
    cut = datetime.fromtimestamp(cutoff_us / 1_000_000, tz=UTC)
    at = cut.replace(hour=DEFAULT_HOUR, minute=0, second=0, microsecond=0)
    return at if at >= cut else at + timedelta(days=1)


def build_contexts(
    devices: Sequence[str] | None, times: Sequence[str] | None, cutoff_us: int | None
) -> tuple[GridContext, ...]:
    """The grid devices x times, in the order given, repeats dropped. Raises BadRequestError."""
    from engine.request.context import parse_device, parse_time

    devs = list(dict.fromkeys(parse_device(d) for d in (devices or DEFAULT_DEVICES)))
    if times:
        ats = [parse_time(t) for t in times]
    else:
        if cutoff_us is None:
            raise BadRequestError("no --at given and the model has no cut-off: pass --at")
        ats = [default_at(cutoff_us)]
    iso = list(dict.fromkeys(t.isoformat() for t in ats))
    return tuple(GridContext(d, t) for d in devs for t in iso)


def users_digest(users: Iterable[str]) -> str:
    """sha256 over the user ids, each followed by a newline (the canonical list)."""
    h = hashlib.sha256()
    for u in users:
        h.update(u.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# ----- writing files safely ---------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` all or nothing: a temporary file in the same directory, fsynced, renamed
    over `path`, then the directory fsynced so the rename itself survives a power cut."""
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    with _atomic_file(path) as f:
        f.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


# ----- one shard (runs in a worker) ---------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """Passes bytes to a file while hashing and counting them."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _pages(engine: PageSource, task: ShardTask) -> Iterator[tuple[str, GridContext, Any, bytes]]:
    """The shard's pages in order: through the engine's block path (`Engine.iter_pages`) a
    block of members at a time when it has one, else one `page` call each."""
    cells = [(u, c) for u in task.users for c in task.contexts]
    if not isinstance(engine, BlockPageSource):
        yield from _pages_one_by_one(engine, task, cells)
        return
    per_block = max(1, BLOCK_PAGES // max(len(task.contexts), 1)) * len(task.contexts)
    for start in range(0, len(cells), per_block):
        block = cells[start : start + per_block]
        _check_stop(task)
        done = 0
        try:
            ctxs = [engine.context(u, device=c.device, at=c.at) for u, c in block]
            for page in engine.iter_pages(ctxs):
                data = page.to_json()
                user, ctx = block[done]
                done += 1
                _count_pages(1)
                yield user, ctx, page, data
        except Exception:
            # The rest of the block a page at a time, so that the error names the member and
            # context it is about (and a failure no page alone has still gets its pages).
            yield from _pages_one_by_one(engine, task, block[done:])


def _pages_one_by_one(
    engine: PageSource, task: ShardTask, cells: Sequence[tuple[str, GridContext]]
) -> Iterator[tuple[str, GridContext, Any, bytes]]:
    for user, ctx in cells:
        _check_stop(task)
        try:
            page = engine.page(user, device=ctx.device, at=ctx.at)
            data = page.to_json()
        except Exception as exc:
            raise PrecomputeFailedError(
                f"shard {task.shard}: page for user {user!r} on {ctx.device} at {ctx.at} "
                f"failed: {type(exc).__name__}: {exc}"
            ) from exc
        _count_pages(1)
        yield user, ctx, page, data


def _check_stop(task: ShardTask) -> None:
    if _STOP is not None and _STOP.is_set():
        raise PrecomputeInterrupted(f"shard {task.shard}: interrupted")


def _count_pages(n: int) -> None:
    if _PROGRESS is not None:
        with _PROGRESS.get_lock():
            _PROGRESS.value += n


def _n_rows(page: Any) -> int:
    rows = getattr(page, "rows", None)
    return len(rows) if rows is not None else -1


def run_shard(engine: PageSource, task: ShardTask) -> dict[str, Any]:
    """Compute one shard, write it atomically, then its done marker; return the marker."""
    if engine.model_version != task.model_version:
        raise PrecomputeFailedError(
            f"shard {task.shard}: the worker loaded model {engine.model_version} from "
            f"{task.model_dir}, the job is for model {task.model_version}; on a cluster every "
            "worker must see the same model directory (shared storage)"
        )
    out = Path(task.out_dir)
    path = out / task.file
    pages = rows = 0
    with _atomic_file(path) as f:
        w = _HashingWriter(f)
        if task.format == "jsonl":
            for _user, _ctx, page, data in _pages(engine, task):
                if b"\n" in data:
                    raise PrecomputeFailedError(f"shard {task.shard}: page JSON spans lines")
                w.write(data + b"\n")
                pages += 1
                rows += _n_rows(page)
        else:
            built = list(_pages(engine, task))
            frame = _parquet_frame(built) if task.format == "parquet" else _items_frame(built)
            buf = io.BytesIO()
            # No statistics: they add nothing for these columns, and the bytes stay stable.
            frame.write_parquet(buf, compression="zstd", statistics=False)
            w.write(buf.getvalue())
            pages = len(built)
            rows = sum(_n_rows(page) for _u, _c, page, _d in built)
    marker = {
        "job_id": task.job_id,
        "shard": task.shard,
        "file": task.file,
        "users": len(task.users),
        "pages": pages,
        "rows": rows,
        "bytes": w.size,
        "sha256": w.sha.hexdigest(),
    }
    _write_json(out / DONE_DIR / f"{Path(task.file).stem}.json", marker)
    return marker


def _parquet_frame(pages: list[tuple[str, GridContext, Any, bytes]]) -> Any:
    """A parquet shard: one row per page, the exact JSON plus a few columns for queries without
    parsing it (documented in docs/precompute.md)."""
    import polars as pl

    row_ids: list[list[str]] = []
    n_titles: list[int] = []
    fallback: list[bool] = []
    for _u, _c, page, _d in pages:
        rows = getattr(page, "rows", None) or ()
        row_ids.append([str(r.row_id) for r in rows])
        n_titles.append(sum(len(r.items) for r in rows))
        fallback.append(bool(getattr(page, "fallback", False)))
    return pl.DataFrame(
        {
            "user_id": [p[0] for p in pages],
            "device": [p[1].device for p in pages],
            "at": [p[1].at for p in pages],
            "n_rows": [len(r) for r in row_ids],
            "n_titles": n_titles,
            "row_ids": row_ids,
            "fallback": fallback,
            "page_json": [p[3].decode("utf-8") for p in pages],
        },
        schema={
            "user_id": pl.String,
            "device": pl.String,
            "at": pl.String,  # the request time, ISO 8601 with offset, as in the manifest
            "n_rows": pl.Int16,
            "n_titles": pl.Int32,
            "row_ids": pl.List(pl.String),
            "fallback": pl.Boolean,
            "page_json": pl.String,  # byte for byte the JSON of `rowrank page`
        },
    )


def _items_frame(pages: list[tuple[str, GridContext, Any, bytes]]) -> Any:
    """An "items" shard: one row per title shown, the columns of `Page.to_frame` (the request,
    the row, the title: PAGE_FRAME_SCHEMA) after `page_id` (the first 16 hex digits of the
    sha256 of the page's JSON, the jsonl line without its newline: a stable key, the same
    in every run) and `at` (the request time as in the manifest's contexts)."""
    import polars as pl

    from engine.request.page import PAGE_FRAME_SCHEMA

    schema = pl.Schema([("page_id", pl.String), ("at", pl.String), *PAGE_FRAME_SCHEMA.items()])
    frames = [
        page.to_frame().select(
            pl.lit(hashlib.sha256(data).hexdigest()[:16]).alias("page_id"),
            pl.lit(ctx.at).alias("at"),
            pl.all(),
        )
        for _user, ctx, page, data in pages
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


# ----- worker processes ---------------------------------------------------------------------------


_ENGINES: dict[tuple[str, Loader], PageSource] = {}
# Several threads of one Dask worker may start at once: load the model once per process.
_DASK_LOCK = threading.Lock()
# Set in local workers (and in the parent with --workers 1): the run's shared page counter
# (multiprocessing Value "q") and stop flag (multiprocessing Event). None on Dask workers.
_PROGRESS: Any = None
_STOP: Any = None


def _share_run_state(progress: Any, stop: Any) -> None:
    global _PROGRESS, _STOP
    _PROGRESS, _STOP = progress, stop


def _limit_threads() -> None:
    """One compute thread per worker process: N workers on N cores, no oversubscription.
    Must run before numpy / polars / LightGBM start their thread pools; respects user settings."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ.setdefault(var, "1")


def _cached_engine(model_dir: str, loader: Loader) -> PageSource:
    """The model, loaded once per worker process (Dask tasks and pool tasks share this), frozen
    out of the cyclic GC; a model this process dropped (a Dask worker's older one) goes then."""
    key = (model_dir, loader)
    if key not in _ENGINES:
        _ENGINES[key] = load_frozen(loader, Path(model_dir))
    return _ENGINES[key]


def _pool_init(progress: Any = None, stop: Any = None) -> None:
    exit_with_parent()  # a killed `rowrank precompute` leaves no idle workers behind
    # A Ctrl-C in a terminal reaches the whole process group: the parent alone decides (it sets
    # the stop flag), so a worker never dies mid-task and breaks the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_threads()
    _share_run_state(progress, stop)


def _pool_load(model_dir: str, loader: Loader) -> str:
    """Load the worker's engine (a task, not the initializer: a failure comes back as the
    loader's own error, where a failing initializer only breaks the pool)."""
    return str(_cached_engine(model_dir, loader).model_version)


def _pool_run(task: ShardTask, loader: Loader) -> dict[str, Any]:
    return run_shard(_cached_engine(task.model_dir, loader), task)


def _dask_run(task: ShardTask, loader: Loader) -> dict[str, Any]:
    with _DASK_LOCK:
        engine = _cached_engine(task.model_dir, loader)
        if engine.model_version != task.model_version:
            # A long-lived worker cached an older model from the same path: load it again
            # (run_shard still refuses if the path holds yet another version).
            _ENGINES.pop((task.model_dir, loader), None)
            engine = _cached_engine(task.model_dir, loader)
    return run_shard(engine, task)


# ----- the output directory ---------------------------------------------------------------------


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and TMP_TAG in name


def _check_not_foreign(out: Path) -> None:
    """Refuse (touching nothing) a path that is not a directory, or a non-empty directory
    without a precompute manifest: precompute never writes into someone else's files."""
    if out.exists() and not out.is_dir():
        raise PrecomputeConflictError(f"{out} exists and is not a directory")
    if not out.exists() or (out / MANIFEST).exists():
        return
    ours = (LOCK_FILE, DONE_DIR)  # a run killed before it wrote its manifest leaves these
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not _is_tmp(p.name))
    if foreign:
        more = ", ..." if len(foreign) > 5 else ""
        raise PrecomputeConflictError(
            f"{out} is not empty and holds no {MANIFEST} ({', '.join(foreign[:5])}{more}): "
            "precompute writes only into a new or empty directory, or resumes its own run "
            "there. Pick another OUT_DIR."
        )


def _check_out_dir(out: Path, spec: JobSpec) -> dict[str, Any] | None:
    """The existing manifest when OUT_DIR holds this job, None when OUT_DIR is new or empty;
    raises PrecomputeConflictError (touching nothing) for anything else."""
    _check_not_foreign(out)
    manifest = out / MANIFEST
    if not manifest.exists():
        return None
    try:
        old = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PrecomputeConflictError(f"cannot read {manifest}: {exc}") from exc
    mine = spec.identity()
    diffs = [k for k in mine if old.get(k) != mine[k]]
    if old.get("kind") != "rowrank-precompute" or old.get("format_version") != FORMAT_VERSION:
        diffs.insert(0, "kind/format_version")
    if diffs:
        details = "; ".join(
            f"{k}: OUT_DIR has {_short(old.get(k))}, this run wants {_short(mine.get(k))}"
            for k in diffs
        )
        raise PrecomputeConflictError(
            f"{out} holds a different precompute run ({details}). Nothing was changed. Use a new "
            "OUT_DIR, or delete this one to start over."
        )
    return dict(old)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def _manifest(spec: JobSpec, shards: list[dict[str, Any]] | None) -> dict[str, Any]:
    from engine import __version__

    done = shards or []
    return {
        "kind": "rowrank-precompute",
        "format_version": FORMAT_VERSION,
        "rowrank_version": __version__,
        "job_id": spec.job_id,
        **spec.identity(),
        "n_shards": spec.n_shards,
        "completed": shards is not None and len(done) == spec.n_shards,
        "pages": sum(s["pages"] for s in done),
        "shards": done,
    }


def _verified_marker(out: Path, spec: JobSpec, shard: int) -> dict[str, Any] | None:
    """The shard's done marker when the shard file exists and matches it, else None."""
    name = spec.shard_file(shard)
    marker_path = out / DONE_DIR / f"{Path(name).stem}.json"
    try:
        marker = orjson.loads(marker_path.read_bytes())
        path = out / name
        ok = (
            marker.get("job_id") == spec.job_id
            and marker.get("file") == name
            and path.stat().st_size == marker.get("bytes")
            and sha256_file(path) == marker.get("sha256")
        )
    except (OSError, orjson.JSONDecodeError):
        return None
    return dict(marker) if ok else None


def _shard_entry(spec: JobSpec, marker: dict[str, Any]) -> dict[str, Any]:
    start, stop = spec.shard_range(marker["shard"])
    keys = ("shard", "file", "users", "pages", "rows", "bytes", "sha256")
    return {**{k: marker[k] for k in keys}, "user_range": [start, stop]}


# ----- the run ------------------------------------------------------------------------------------


def run_precompute(
    model_dir: Path,
    out_dir: Path,
    *,
    users_file: Path | None = None,
    devices: Sequence[str] | None = None,
    times: Sequence[str] | None = None,
    workers: int | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    fmt: str = "jsonl",
    shard_size: int | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    loader: Loader = load_engine,
    progress: bool = True,
    log: IO[str] | None = None,
    progress_seconds: float | None = None,
) -> PrecomputeResult:
    """Precompute every page of the job into `out_dir`, resuming a previous run of the same job.

    Raises PrecomputeConflictError when `out_dir` holds another job, BadRequestError for bad
    arguments, ModelLoadError for a bad model directory. Shard failures do not raise: they are
    listed in the result (exit code 1); finished shards are kept for the rerun. SIGINT (when
    called from the main thread) stops the run within about a block of pages: `result.interrupted`.

    `shard_size` None: the shard size of the run being resumed, else `auto_shard_size`.
    `limit` keeps the first N users, `sample` N users drawn with `seed` (in list order), for a
    quick run; either is part of the job (its users), so a rerun must repeat it.

    The phases, in order: start the workers (`_start_workers`) and meanwhile read the job
    (`_read_job`); take OUT_DIR (`_take_out_dir`) and verify the shards an earlier run finished
    (`_verified_shards`); run the others (`_run_shards`); write the final manifest
    (`_write_manifest`).
    """
    import multiprocessing

    log = log or sys.stderr
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    n_workers = _check_arguments(fmt, engine, shard_size, workers, scheduler, limit, sample)
    _check_not_foreign(out_dir)  # early, before reading the model
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    counter, stop = spawn.Value("q", 0), spawn.Event()
    # One stack, closed in reverse: the runner (shards in progress stop at the stop flag), the
    # progress display, OUT_DIR's lock, the local pool (its workers start loading first of
    # all), then SIGINT's handler.
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_sigint(stop))
        makers = _start_workers(stack, engine, n_workers, model_dir, loader, counter, stop)
        job = _read_job(
            model_dir,
            users_file,
            devices,
            times,
            fmt,
            _Sizing(shard_size, n_workers, out_dir, limit, sample, seed),
        )
        spec = job.spec
        result = PrecomputeResult(
            out_dir, spec, job.bad_lines, job.unknown_users, 0, 0, 0, 0.0, False
        )
        if spec.n_users == 0:
            result.failures.append("no users to precompute")
            return result
        makers.wait_loaded()  # a model the workers cannot load raises here, OUT_DIR untouched

        existing = _take_out_dir(stack, out_dir, spec)
        done = _verified_shards(out_dir, spec)
        result.shards_resumed = len(done)
        todo = [k for k in range(spec.n_shards) if k not in done]
        pages_done = sum(m["pages"] for m in done.values())
        if progress_seconds is None:
            progress_seconds = float(os.environ.get(ENV_PROGRESS_SECONDS) or PROGRESS_LINE_SECONDS)
        shown = stack.enter_context(
            _Progress(
                spec.n_users * len(spec.contexts),
                pages_done,
                counter,
                enabled=progress,
                log=log,
                interval=progress_seconds,
            )
        )
        tasks = _shard_tasks(job, todo, out_dir, model_dir)
        n_workers = max(1, min(n_workers, len(todo)))
        outcomes = (
            _run_shards(stack, makers, tasks, n_workers, scheduler, loader, stop, result)
            if todo
            else iter(())
        )
        _collect(outcomes, done, result, shown)
        result.interrupted = stop.is_set() and len(done) < spec.n_shards
        result.seconds = time.perf_counter() - started
        result.completed = _write_manifest(out_dir, spec, done, existing)
        return result


@contextlib.contextmanager
def _stop_on_sigint(stop: Any) -> Iterator[None]:
    """While the run goes, SIGINT sets `stop` (the workers finish the page in hand and drop
    their shard); a second SIGINT raises KeyboardInterrupt as usual. Only in the main thread
    (signals cannot be handled elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def auto_shard_size(n_users: int, n_workers: int) -> int:
    """The default shard size: DEFAULT_SHARD_SIZE, or less so that every worker gets about
    SHARDS_PER_WORKER shards (300 users on 2 workers: 38-user shards, 8 of them, where one
    1,000-user shard left a worker idle), never under MIN_AUTO_SHARD_SIZE users."""
    if n_workers <= 1:
        return DEFAULT_SHARD_SIZE
    even = math.ceil(n_users / (n_workers * SHARDS_PER_WORKER))
    return max(MIN_AUTO_SHARD_SIZE, min(DEFAULT_SHARD_SIZE, even))


def _check_arguments(
    fmt: str,
    engine: str,
    shard_size: int | None,
    workers: int | None,
    scheduler: str | None,
    limit: int | None = None,
    sample: int | None = None,
) -> int:
    """The number of workers (default: all cores); BadRequestError for a bad argument."""
    if fmt not in FORMATS:
        raise BadRequestError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if engine not in ENGINES:
        raise BadRequestError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if shard_size is not None and shard_size < 1:
        raise BadRequestError(f"--shard-size must be at least 1, got {shard_size}")
    for name, n in (("--limit", limit), ("--sample", sample)):
        if n is not None and n < 1:
            raise BadRequestError(f"{name} must be at least 1, got {n}")
    if limit is not None and sample is not None:
        raise BadRequestError("--limit and --sample: give one of them, not both")
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers < 1:
        raise BadRequestError(f"--workers must be at least 1, got {n_workers}")
    if scheduler and engine != "dask":
        raise BadRequestError("--scheduler needs --engine dask")
    return n_workers


@dataclass
class _PageMakers:
    """Where the pages will be made: a local pool whose workers are loading their engines
    (`pool`, `loading`), this process (`engine`, with --workers 1), or Dask (neither)."""

    kind: str  # "local" or "dask"
    pool: Any = None
    loading: list[Any] = field(default_factory=list)
    engine: PageSource | None = None

    def wait_loaded(self) -> None:
        for probe in self.loading:
            probe.result()  # the loader's own error, raised here


def _start_workers(
    stack: contextlib.ExitStack,
    engine: str,
    n_workers: int,
    model_dir: Path,
    loader: Loader,
    counter: Any,
    stop: Any,
) -> _PageMakers:
    """Phase 1: start what makes the pages, so the model loads while the job is read. Local
    workers get the run's page counter and stop flag."""
    if engine == "local" and n_workers > 1:
        # The workers spawn and load their engines while this process reads the job: it
        # needs the model version and the member list, not an engine (docs/precompute.md).
        pool = stack.enter_context(_local_pool(n_workers, counter, stop))
        loading = [pool.submit(_pool_load, str(model_dir), loader) for _ in range(n_workers)]
        return _PageMakers(engine, pool, loading)
    if engine == "local":
        # --workers 1 makes its pages here, with the model frozen out of the cyclic GC as a
        # pool worker's is.
        _share_run_state(counter, stop)
        stack.callback(_share_run_state, None, None)
        return _PageMakers(engine, engine=load_frozen(loader, model_dir))
    # Dask workers load on their first task, after OUT_DIR is touched, so this process checks
    # first that the model loads (and drops its copy: it makes no page).
    loader(model_dir)
    return _PageMakers(engine)


@dataclass(frozen=True)
class _Job:
    """What a run computes: the job's spec and its users (with the --users file's report)."""

    spec: JobSpec
    users: np.ndarray | list[str]
    bad_lines: list[BadLine]
    unknown_users: int


@dataclass(frozen=True)
class _Sizing:
    """How many users, and in which shards: --shard-size (None: the resumed run's, else
    auto_shard_size), the workers, OUT_DIR, --limit / --sample and its seed."""

    shard_size: int | None
    n_workers: int
    out_dir: Path
    limit: int | None = None
    sample: int | None = None
    seed: int = 0


def _read_job(
    model_dir: Path,
    users_file: Path | None,
    devices: Sequence[str] | None,
    times: Sequence[str] | None,
    fmt: str,
    sizing: _Sizing,
) -> _Job:
    """Phase 1 (meanwhile): the model's manifest and member list, the users, the context grid."""
    manifest, history = read_history(model_dir)
    users, bad, unknown = resolve_users(history, users_file)
    users = pick_users(users, sizing.limit, sizing.sample, sizing.seed)
    contexts = build_contexts(devices, times, int(history.cutoff_us))
    shard_size = sizing.shard_size or _resumed_shard_size(sizing.out_dir)
    spec = JobSpec(
        model_version=str(manifest["model_version"]),
        contexts=contexts,
        n_users=len(users),
        users_sha256=users_digest(users),
        shard_size=shard_size or auto_shard_size(len(users), sizing.n_workers),
        format=fmt,
    )
    return _Job(spec, users, bad, unknown)


def pick_users(
    users: np.ndarray | list[str], limit: int | None, sample: int | None, seed: int
) -> np.ndarray | list[str]:
    """`limit`: the first N users; `sample`: N users drawn without replacement by a generator
    seeded with `seed`, kept in the list's order (so shards stay user slices of the list)."""
    import numpy as np

    if limit is not None:
        return users[:limit]
    if sample is not None and sample < len(users):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(users), size=sample, replace=False))
        if isinstance(users, np.ndarray):
            return users[keep]
        return [users[i] for i in keep.tolist()]
    return users


def _resumed_shard_size(out_dir: Path) -> int | None:
    """The shard size of the run OUT_DIR holds (a resume keeps it whatever the workers now), or
    None; whether the rest of the job matches is checked later (_take_out_dir)."""
    try:
        size = orjson.loads((out_dir / MANIFEST).read_bytes()).get("shard_size")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return size if isinstance(size, int) and size >= 1 else None


def _take_out_dir(
    stack: contextlib.ExitStack, out_dir: Path, spec: JobSpec
) -> dict[str, Any] | None:
    """Phase 2: OUT_DIR checked (touching nothing), created, locked for this run, checked again,
    cleared of a killed run's temporary files, and given this job's manifest when new. Returns
    the manifest it already held (None: a new job)."""
    _check_out_dir(out_dir, spec)  # before touching anything
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE_DIR).mkdir(exist_ok=True)
    stack.enter_context(_exclusive_lock(out_dir))
    existing = _check_out_dir(out_dir, spec)  # again, now that no one else can write
    _remove_tmp_files(out_dir)
    if existing is None:
        _write_json(out_dir / MANIFEST, _manifest(spec, None))
    return existing


def _verified_shards(out_dir: Path, spec: JobSpec) -> dict[int, dict[str, Any]]:
    """Phase 2 (verify): the done markers of the shards an earlier run finished, by shard,
    each checked against its file (size and sha256); any other shard is run again."""
    done: dict[int, dict[str, Any]] = {}
    for k in range(spec.n_shards):
        marker = _verified_marker(out_dir, spec, k)
        if marker is not None:
            done[k] = marker
    return done


def _shard_tasks(job: _Job, todo: list[int], out_dir: Path, model_dir: Path) -> Iterator[ShardTask]:
    """The tasks of the shards to run, made as the runner asks for them (the parent never holds
    the whole user list as task arguments)."""
    spec = job.spec
    for k in todo:
        start, stop = spec.shard_range(k)
        yield ShardTask(
            shard=k,
            users=tuple(str(u) for u in job.users[start:stop]),
            contexts=spec.contexts,
            format=spec.format,
            file=spec.shard_file(k),
            out_dir=str(out_dir.resolve()),
            model_dir=str(model_dir),
            model_version=spec.model_version,
            job_id=spec.job_id,
        )


def _run_shards(
    stack: contextlib.ExitStack,
    makers: _PageMakers,
    tasks: Iterator[ShardTask],
    n_workers: int,
    scheduler: str | None,
    loader: Loader,
    stop: Any,
    result: PrecomputeResult,
) -> Iterator[Outcome]:
    """Phase 3: the shards run where the pages are made; (task, marker or error) as each ends.
    Once `stop` is set no shard starts, and local shards in progress stop at their next page.
    Dask workers' peak memory goes to `result`."""
    if makers.pool is not None:
        return stack.enter_context(
            contextlib.closing(_run_pool(tasks, makers.pool, n_workers, loader, stop))
        )
    if makers.kind == "dask":
        return _run_dask(tasks, n_workers, scheduler, loader, stop, result.worker_peak_rss_mb)
    assert makers.engine is not None
    return _run_inline(tasks, makers.engine, stop)


def _write_manifest(
    out_dir: Path, spec: JobSpec, done: dict[int, dict[str, Any]], existing: dict[str, Any] | None
) -> bool:
    """Phase 4: the manifest lists the shards that are complete, `completed` true once they all
    are (rewritten only when it changes: a rerun of a finished job touches nothing). An
    interrupted or failed run leaves a manifest saying what it finished. True when complete."""
    manifest = _manifest(spec, [_shard_entry(spec, done[k]) for k in sorted(done)])
    if existing != manifest and (done or existing is not None):
        _write_json(out_dir / MANIFEST, manifest)
    return len(done) == spec.n_shards


def resolve_users(
    history: Any, users_file: Path | None
) -> tuple[np.ndarray | list[str], list[BadLine], int]:
    """(users, bad lines, how many listed users the model does not know)."""
    if users_file is None:
        return history.user_ids, [], 0
    try:
        users, bad = parse_users_file(users_file)
    except OSError as exc:
        raise BadRequestError(f"cannot read --users {users_file}: {exc}") from exc
    unknown = sum(1 for u in users if history.user_index(u) < 0)
    return users, bad, unknown


@contextlib.contextmanager
def _exclusive_lock(out: Path) -> Iterator[None]:
    """One run per OUT_DIR at a time; the kernel drops the lock when the holder dies (SIGKILL)."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrecomputeConflictError(
                f"another precompute is running into {out} (it holds {out / LOCK_FILE}); wait "
                "for it or stop it"
            ) from None
        yield
    finally:
        os.close(fd)


def _remove_tmp_files(out: Path) -> None:
    """Temporary files of a killed run: never renamed, so never part of the output."""
    for directory in (out, out / DONE_DIR):
        for p in directory.iterdir():
            if _is_tmp(p.name):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


# ----- engines: each yields (task, marker or exception) as shards finish --------------------------

Outcome = tuple[ShardTask, dict[str, Any] | BaseException]


def _run_inline(tasks: Iterator[ShardTask], engine: PageSource, stop: Any) -> Iterator[Outcome]:
    for task in tasks:
        if stop.is_set():
            return
        try:
            yield task, run_shard(engine, task)
        except Exception as exc:
            yield task, exc
            return  # fail closed, as the other engines: no new shard after a failure


@contextlib.contextmanager
def _local_pool(n_workers: int, counter: Any = None, stop: Any = None) -> Iterator[Any]:
    """Local worker processes (spawn: nothing inherited but arguments, safe with threads),
    sharing the run's page counter and stop flag."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=n_workers, mp_context=ctx, initializer=_pool_init, initargs=(counter, stop)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_pool(
    tasks: Iterator[ShardTask], pool: Any, n_workers: int, loader: Loader, stop: Any
) -> Generator[Outcome, None, None]:
    """Shard tasks on the local pool, at most _IN_FLIGHT_PER_WORKER queued per worker. Once
    `stop` is set, queued shards are cancelled and running ones end at their next page."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    pending: dict[Future[dict[str, Any]], ShardTask] = {}
    failed = False
    try:
        while True:
            while (
                not (failed or stop.is_set()) and len(pending) < n_workers * _IN_FLIGHT_PER_WORKER
            ):
                task = next(tasks, None)
                if task is None:
                    break
                pending[pool.submit(_pool_run, task, loader)] = task
            if stop.is_set():
                for fut in pending:
                    fut.cancel()  # not started yet: never starts
            if not pending:
                break
            # A short timeout: the stop flag is looked at every 0.1 s.
            finished, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for fut in finished:
                task = pending.pop(fut)
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is not None:
                    failed = True  # fail closed: let in-flight shards finish, start no new ones
                    yield task, exc
                else:
                    yield task, fut.result()
    finally:
        # Interrupted (Ctrl-C, an error in the parent): no shard is left writing once the
        # caller releases OUT_DIR's lock.
        for fut in pending:
            fut.cancel()
        wait(pending)


def _run_dask(
    tasks: Iterator[ShardTask],
    n_workers: int,
    scheduler: str | None,
    loader: Loader,
    stop: Any,
    peaks: list[float],
) -> Iterator[Outcome]:
    """One Dask task per shard, on a LocalCluster (processes, 1 thread each) or a scheduler.
    Dask workers see no stop flag: once it is set no shard is submitted, and those in progress
    finish. Once all have ended, each worker's peak memory (MB) goes to `peaks`: what a
    machine of the cluster must hold per worker."""
    from distributed import as_completed

    from engine.cluster import dask_client
    from engine.training.steps import peak_rss_mb

    with dask_client(n_workers, scheduler) as (client, n_slots):
        limit = n_slots * _IN_FLIGHT_PER_WORKER
        by_key: dict[str, ShardTask] = {}
        queue = as_completed()
        failed = False

        def submit_more() -> None:
            while not (failed or stop.is_set()) and len(by_key) < limit:
                task = next(tasks, None)
                if task is None:
                    return
                fut = client.submit(_dask_run, task, loader, pure=False)
                by_key[fut.key] = task
                queue.add(fut)

        submit_more()
        for fut in queue:
            task = by_key.pop(fut.key)
            try:
                outcome: dict[str, Any] | BaseException = fut.result()
            except Exception as exc:  # the task's own exception, re-raised here by Dask
                failed = True
                outcome = exc
            yield task, outcome
            submit_more()
        peaks += sorted(round(float(v), 1) for v in client.run(peak_rss_mb).values())


def _collect(
    outcomes: Iterator[Outcome],
    done: dict[int, dict[str, Any]],
    result: PrecomputeResult,
    shown: _Progress,
) -> None:
    for task, outcome in outcomes:
        if isinstance(outcome, PrecomputeInterrupted):
            continue  # dropped by the stop flag: not done, not a failure
        if isinstance(outcome, BaseException):
            result.failures.append(f"shard {task.shard} ({task.file}): {outcome}")
            continue
        done[task.shard] = outcome
        result.shards_run += 1
        result.pages_run += outcome["pages"]
        shown.shard_pages += outcome["pages"]


class _Progress:
    """Pages made so far, on `log` while the run goes: a tqdm bar on a terminal; elsewhere (a
    log file, a CI job) a plain line every `interval` seconds and one at the end, no `\r`.
    Local workers count every page in the shared `counter`, read here every 0.2 s; Dask
    workers do not, so their progress moves a shard at a time (`shard_pages`)."""

    def __init__(
        self,
        total: int,
        initial: int,
        counter: Any,
        *,
        enabled: bool,
        log: IO[str],
        interval: float,
    ) -> None:
        self.total, self.initial, self.counter = total, initial, counter
        self.enabled, self.log, self.interval = enabled, log, interval
        self.shard_pages = 0
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="precompute-progress", daemon=True)
        self._started = self._last_line = time.monotonic()

    def done(self) -> int:
        return min(self.total, self.initial + max(int(self.counter.value), self.shard_pages))

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        isatty = getattr(self.log, "isatty", None)
        if callable(isatty) and isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.initial,
                unit="page",
                unit_scale=True,
                desc="precompute",
                file=self.log,
                dynamic_ncols=True,
            )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        self._show(final=True)
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(min(0.2, self.interval)):
            self._show(final=False)

    def _show(self, *, final: bool) -> None:
        n = self.done()
        if self._bar is not None:
            if n > self._bar.n:
                self._bar.update(n - self._bar.n)
            return
        now = time.monotonic()
        if not final and now - self._last_line < self.interval:
            return
        self._last_line = now
        made, seconds = n - self.initial, now - self._started
        rate = made / seconds if seconds > 0 else 0.0
        pct = 100.0 * n / self.total if self.total else 100.0
        left = (
            f", about {(self.total - n) / rate:,.0f} s left" if rate > 0 and n < self.total else ""
        )
        print(
            f"precompute: {n:,}/{self.total:,} pages ({pct:.0f}%), {rate:,.0f} pages/s{left}",
            file=self.log,
            flush=True,
        )


# ----- CLI --------------------------------------------------------------------------------------


def add_arguments(p: Any) -> None:
    """Arguments of `rowrank precompute` (engine.cli calls this)."""
    p.add_argument("model_dir", help="model directory written by `rowrank train`")
    p.add_argument("out_dir", help="output directory (new, empty, or this job's earlier run)")
    p.add_argument("--users", help="file with one user id per line (default: every known user)")
    p.add_argument(
        "--device",
        action="append",
        help=f"device, repeatable (default: {' and '.join(DEFAULT_DEVICES)})",
    )
    p.add_argument(
        "--at",
        action="append",
        help=f"ISO 8601 request time, repeatable (default: the first {DEFAULT_HOUR}:00 UTC "
        "after the model's cut-off)",
    )
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--engine", choices=ENGINES, default="local", help="local processes or Dask")
    p.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="shard file format: jsonl (a page a line), parquet (a row a page), items (a row "
        "a title shown)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        help=f"users per shard file (default: at most {DEFAULT_SHARD_SIZE:,}, fewer so that "
        f"each worker gets about {SHARDS_PER_WORKER} shards; a resume keeps its run's)",
    )
    quick = p.add_mutually_exclusive_group()
    quick.add_argument("--limit", type=int, help="only the first N users (a quick run)")
    quick.add_argument("--sample", type=int, help="N users drawn at random (seeded: --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")


def cli(args: Any) -> int:
    """Run `rowrank precompute`; prints bad --users lines and a summary. Exit 0, 1 or 2."""
    users_file = Path(args.users) if args.users else None
    # This process computes pages itself with --workers 1: one core, like each pool worker.
    _limit_threads()
    result = run_precompute(
        Path(args.model_dir),
        Path(args.out_dir),
        users_file=users_file,
        devices=args.device,
        times=args.at,
        workers=args.workers,
        engine=args.engine,
        scheduler=args.scheduler,
        fmt=args.format,
        shard_size=args.shard_size,
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
    )
    for b in result.bad_lines:
        print(f"{users_file}:{b.line}: skipped: {b.reason}", file=sys.stderr)
    if result.bad_lines:
        print(f"{len(result.bad_lines)} bad line(s) in {users_file} skipped", file=sys.stderr)
    for f in result.failures:
        print(f"error: {f}", file=sys.stderr)
    spec = result.spec
    if result.unknown_users:
        print(
            f"{result.unknown_users:,} listed user(s) unknown to the model: a cold-start page "
            "each in the model's [serving] default_country; without one, when titles are "
            "licensed per country, their pages are refused (a country is needed) and fail "
            "their shards",
            file=sys.stderr,
        )
    if result.interrupted:
        state = (
            f"interrupted: {result.shards_resumed + result.shards_run} of {spec.n_shards} "
            f"shard(s) complete, listed in {result.out_dir / MANIFEST} (rerun the same command "
            "to resume)"
        )
    elif result.completed:
        state = "complete"
    else:
        state = "INCOMPLETE (rerun the same command to resume)"
    rate = result.pages_run / result.seconds if result.seconds > 0 else 0.0
    print(
        f"{state}: {spec.n_users:,} users x {len(spec.contexts)} context(s) in {spec.n_shards} "
        f"shard(s) ({result.shards_resumed} already done, {result.shards_run} run now, "
        f"{result.pages_run:,} pages in {result.seconds:.1f} s = {rate:,.0f} pages/s) "
        f"-> {result.out_dir}"
    )
    if result.worker_peak_rss_mb:
        peaks = ", ".join(f"{mb / 1024:.2f}" for mb in result.worker_peak_rss_mb)
        print(f"Dask workers' peak memory: {peaks} GB")
    return result.exit_code
