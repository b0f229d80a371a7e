"""Served pages as impressions: append-only Parquet part files in the dataset `impressions` schema.

The request path only puts `(page, context, page_id)` on a bounded queue; one background thread
turns pages into rows and writes a part file every `flush_rows` rows or `flush_seconds` seconds.
A part is written under a temporary name and renamed into place, so a reader never sees half a
file, and every name carries the process id, a sequence number and a random suffix, so workers
sharing one directory never collide. `close()` drains the queue and writes the last part: on a
clean shutdown no page is lost and none is written twice.

What counts as an impression: by default only what the device shows before the member scrolls
(`engine.request.layout`: the first `visible_rows` rows, the first `visible_titles` titles of
each). A
title further down was served but, as far as the server knows, never seen; logging it as an
impression that was not played would teach the next model that members reject whatever sits low
on the page. `scope="page"` logs every served title instead, for a client that reports scrolling
some other way.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import polars as pl

from engine.data.columns import IMPRESSIONS, SCHEMA, Col
from engine.data.dataset import Dataset
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout

log = logging.getLogger("rowrank.impressions")

PART_PREFIX = "impressions-"
PART_SUFFIX = ".parquet"
Scope = Literal["visible", "page"]


@dataclass(frozen=True)
class _Served:
    page: Any
    page_id: str
    layout: DeviceLayout | None


_STOP = object()


class ImpressionLogger:
    """Log served pages off the request path. `start()` once, `log()` per page, `close()` once."""

    def __init__(
        self,
        directory: Path,
        *,
        scope: Scope = "visible",
        flush_rows: int = 50_000,
        flush_seconds: float = 5.0,
        max_queue_pages: int = 20_000,
        layouts: Mapping[str, DeviceLayout] = DEFAULT_LAYOUTS,
    ) -> None:
        if scope not in ("visible", "page"):
            raise ValueError(f"scope must be 'visible' or 'page', got {scope!r}")
        self.directory = Path(directory)
        self.scope = scope
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.layouts = layouts
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue_pages)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seq = 0
        self._lock = threading.Lock()
        self.pages_logged = 0  # pages turned into rows by the writer
        self.pages_dropped = 0  # pages refused because the queue was full or the logger closed
        self.rows_written = 0
        self.parts_written = 0
        self.write_errors = 0

    # ----- request side -----------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def log(self, page: Any, page_id: str, layout: DeviceLayout | None = None) -> bool:
        """Queue one served `engine.request.page.Page`; never blocks. `layout` is the device layout
        the
        page was built with (default: `engine.request.layout.DEFAULT_LAYOUTS` for its device).
        False (and
        counted) when the page had to be dropped."""
        if self._closed:
            with self._lock:
                self.pages_dropped += 1
            return False
        try:
            self._queue.put_nowait(_Served(page, page_id, layout))
        except queue.Full:
            with self._lock:
                self.pages_dropped += 1
            return False
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting pages, write everything queued, wait for the writer to finish."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_STOP)  # blocks only if full; the writer is draining it
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("impression writer did not finish within %s s", timeout)

    # ----- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        buf = _Columns()
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush(buf)
                return
            if isinstance(item, _Served):
                try:
                    buf.add(item, self._visible(item))
                    with self._lock:
                        self.pages_logged += 1
                except Exception:  # a malformed page must not stop the writer
                    log.exception("cannot log page %s as impressions", item.page_id)
            if len(buf) >= self.flush_rows or time.monotonic() >= deadline:
                self._flush(buf)
                buf = _Columns()
                deadline = time.monotonic() + self.flush_seconds

    def _visible(self, s: _Served) -> tuple[int, int] | None:
        if self.scope == "page":
            return None
        layout = s.layout or self.layouts.get(s.page.context.device)
        return None if layout is None else (layout.visible_rows, layout.visible_titles)

    def _flush(self, buf: _Columns) -> None:
        if not len(buf):
            return
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{PART_PREFIX}{stamp}-{os.getpid()}-{self._seq:06d}-{uuid.uuid4().hex[:8]}"
        final = self.directory / f"{name}{PART_SUFFIX}"
        tmp = self.directory / f".{name}{PART_SUFFIX}.tmp"
        try:
            frame = buf.frame()
            frame.write_parquet(tmp)
            os.replace(tmp, final)  # atomic: readers see the whole part or none of it
        except Exception:
            log.exception("cannot write impressions part %s (%d rows lost)", final, len(buf))
            with self._lock:
                self.write_errors += 1
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self.rows_written += frame.height
            self.parts_written += 1


class _Columns:
    """Column lists of the impressions table, filled page by page in the writer thread."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c.name: [] for c in SCHEMA[IMPRESSIONS]}

    def __len__(self) -> int:
        return len(self.cols[Col.PAGE_ID])

    def add(self, s: _Served, visible: tuple[int, int] | None) -> None:
        page = s.page
        ts = page.context.local_time.astimezone(UTC)
        user_id, device = page.user_id, page.context.device
        rows = page.rows
        max_rows, max_titles = visible if visible is not None else (len(rows), None)
        c = self.cols
        for r, row in enumerate(rows[:max_rows]):
            items = row.items if max_titles is None else row.items[:max_titles]
            n = len(items)
            c[Col.TITLE_ID].extend(it.title_id for it in items)
            c[Col.POSITION].extend(range(n))
            c[Col.ROW_INDEX].extend([r] * n)
            c[Col.ROW_KIND].extend([row.kind] * n)
            c[Col.ROW_ID].extend([row.row_id] * n)
            c[Col.PAGE_ID].extend([s.page_id] * n)
            c[Col.USER_ID].extend([user_id] * n)
            c[Col.TS].extend([ts] * n)
            c[Col.DEVICE].extend([device] * n)
            c[Col.PLAYED].extend([False] * n)

    def frame(self) -> pl.DataFrame:
        schema = {c.name: c.dtype for c in SCHEMA[IMPRESSIONS]}
        return pl.DataFrame(self.cols, schema=schema)


def read_impressions(directory: Path) -> pl.DataFrame:
    """Every complete part file in `directory` as one frame in the `impressions` schema, sorted
    by (ts, page_id, row_index, position). Temporary files of a write in progress are skipped."""
    parts = sorted(Path(directory).glob(f"{PART_PREFIX}*{PART_SUFFIX}"))
    schema = {c.name: c.dtype for c in SCHEMA[IMPRESSIONS]}
    if not parts:
        return pl.DataFrame(schema=schema)
    frame = pl.concat([pl.read_parquet(p) for p in parts], how="vertical")
    return frame.select(list(schema)).sort([Col.TS, Col.PAGE_ID, Col.ROW_INDEX, Col.POSITION])


def attribute_plays(
    impressions: pl.DataFrame, plays: pl.DataFrame, horizon: timedelta = timedelta(hours=6)
) -> pl.DataFrame:
    """`played` set True where the member played that title within `horizon` after the
    impression (the first such play), False elsewhere.

    The server cannot know what a member will play, so it logs `played=False`; `rowrank train`
    labels an impression with `played=False` as 0 whatever followed. Run this over served logs
    (with the plays exported later) before adding them to a dataset, so the next training sees
    which shown titles were played. The default horizon is the page model's
    `label_horizon_hours` default (6 h)."""
    keys = [Col.USER_ID, Col.TITLE_ID]
    found = (
        impressions.with_row_index("_i")
        .sort([*keys, Col.TS])
        .join_asof(
            plays.select(*keys, pl.col(Col.TS).alias("_play_ts")).sort([*keys, "_play_ts"]),
            left_on=Col.TS,
            right_on="_play_ts",
            by=keys,
            strategy="forward",
            tolerance=horizon,
            check_sortedness=False,  # sorted above by (by keys, time)
        )
        .sort("_i")
    )
    return impressions.with_columns(
        found["_play_ts"].is_not_null().alias(Col.PLAYED) | impressions[Col.PLAYED]
    )


@dataclass(frozen=True)
class Taken:
    """What `with_impressions` took from a log."""

    impressions: int  # rows added, each labelled by the plays that followed it
    played: int  # of them, played within the horizon
    outside: int  # rows left out: at or before the dataset's clock (its own), after the
    # newest play (not labelled yet), or of members or titles the dataset does not have


def with_impressions(
    ds: Dataset, directory: Path, since: datetime, horizon: timedelta = timedelta(hours=6)
) -> tuple[Dataset, Taken]:
    """`ds` with the served impressions of `directory` after `since` (the clock of the data the
    serving model was trained on) and up to `ds.clock`, labelled by `ds`'s plays
    (`attribute_plays`), for `rowrank train --impressions`. With `--events` the plays include
    the event log's, so the pages served and the plays that followed become the next model's
    training data."""
    log = read_impressions(directory)
    lo = pl.lit(since).dt.cast_time_unit("us")
    hi = pl.lit(ds.clock).dt.cast_time_unit("us")
    keep = log.filter(
        (pl.col(Col.TS) > lo)
        & (pl.col(Col.TS) <= hi)
        & pl.col(Col.USER_ID).is_in(ds.users[Col.USER_ID].implode())
        & pl.col(Col.TITLE_ID).is_in(ds.titles[Col.TITLE_ID].implode())
    )
    labelled = attribute_plays(keep, ds.plays, horizon)
    old = ds.impressions
    frame = (
        labelled.lazy()
        if old is None
        else pl.concat([old, labelled.lazy().select(old.collect_schema().names())])
    )
    taken = Taken(labelled.height, int(labelled[Col.PLAYED].sum()), log.height - keep.height)
    return replace(ds, impressions=frame), taken
