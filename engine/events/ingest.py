"""`rowrank events ingest MODEL_DIR FILE`: a backfill of play events (JSON lines or Parquet)
into the event log a server of that model reads (`--state DIR` or `--state redis://HOST:PORT/DB`,
default MODEL_DIR/events).

The file is all-or-nothing: every event is validated first, and the first bad one stops the
command with exit 2 naming the file, the line (Parquet: the row, from 1) and the value. Then the
events are appended in chunks of CHUNK, each fsynced; a rerun of the same file is a no-op.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.errors import BadRequestError
from engine.events.schema import EventError, PlayEvent, validate_event
from engine.events.state import Appended, LiveState

CHUNK = 10_000


STATE_HELP = "the event log: a directory, or redis://HOST:PORT/DB (default MODEL_DIR/events)"


def events_dir_of(model_dir: Path, state: str | None) -> str:
    """Where the event log lives: `--state` (a directory or a redis:// URL), else
    MODEL_DIR/events."""
    return state if state else str(Path(model_dir) / "events")


def read_docs(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number from 1, the event as a dict) of a JSONL or Parquet file."""
    if path.suffix == ".parquet":
        import polars as pl

        try:
            frame = pl.read_parquet(path)
        except Exception as exc:
            raise BadRequestError(f"{path}: cannot read it as Parquet: {exc}") from None
        for i, row in enumerate(frame.iter_rows(named=True), 1):
            yield i, {k: v for k, v in row.items() if not (k == "rating" and v is None)}
        return
    try:
        with path.open("rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise BadRequestError(f"{path}:{i}: not JSON: {exc}") from None
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from None


def load_events(path: Path, known_title: Any, now_us: int) -> list[PlayEvent]:
    events = []
    for line, doc in read_docs(path):
        try:
            events.append(validate_event(line, doc, known_title, now_us))
        except EventError as exc:
            where = f"{path}: row {line}" if path.suffix == ".parquet" else f"{path}:{line}"
            raise BadRequestError(f"{where}: {exc.detail}") from None
    return events


def ingest(model_dir: Path, path: Path, state: str | None = None) -> tuple[Appended, str]:
    """Validate every event of `path` against the model's catalog, then append them."""
    from engine.training.model_dir import read_history

    _, history = read_history(Path(model_dir))
    events = load_events(path, lambda t: history.title_index(t) >= 0, int(time.time() * 1e6))
    directory = events_dir_of(Path(model_dir), state)
    live = LiveState(directory)
    accepted = duplicates = 0
    try:
        for i in range(0, len(events), CHUNK):
            done = live.append(events[i : i + CHUNK])
            accepted += done.accepted
            duplicates += done.duplicates
    finally:
        live.close()
    return Appended(accepted, duplicates), live.log.where


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    ing = sub.add_parser(
        "ingest",
        help="append play events (JSON lines or .parquet) to a model's event log",
        description="Append play events to the event log `rowrank serve` of the model reads; "
        "all-or-nothing: a bad event exits 2 naming file, line and value.",
    )
    ing.add_argument("model_dir", help="model directory written by `rowrank train`")
    ing.add_argument("file", help="events, one JSON object a line, or a .parquet table")
    ing.add_argument("--state", metavar="DIR|URL", help=STATE_HELP)
    exp = sub.add_parser(
        "export",
        help="write the event log as a plays table (.parquet) for the next training",
        description="Every event of the log, once per event_id, in the dataset's plays schema.",
    )
    exp.add_argument("model_dir", help="model directory written by `rowrank train`")
    exp.add_argument("out", help="the .parquet file to write")
    exp.add_argument("--state", metavar="DIR|URL", help=STATE_HELP)


def cli(args: argparse.Namespace) -> int:
    if args.events_command == "export":
        from engine.events.export import plays_of_log
        from engine.events.redis_log import redacted

        directory = events_dir_of(Path(args.model_dir), args.state)
        plays = plays_of_log(directory)
        plays.write_parquet(args.out)
        print(f"exported {plays.height:,} plays from {redacted(directory)} to {args.out}")
        return 0
    done, log_path = ingest(Path(args.model_dir), Path(args.file), args.state)
    print(
        f"ingested {done.accepted:,} events ({done.duplicates:,} duplicates or too old to keep) "
        f"into {log_path}"
    )
    return 0
