"""The durable, append-only event log: one JSON line per accepted event, shared by every
process of one machine (server workers, `rowrank events ingest`). `EventLogLike` is what the
live state needs of a log; `open_log` picks this file log or, for a `redis://` URL, the Redis
stream several machines share (engine.events.redis_log).

Writers hold an exclusive `flock` on the log while they catch up, append and `fsync`; a 2xx is
sent only after the `fsync` returns, so an acknowledged event is on disk. Readers take no lock:
they read complete lines from their offset (a line is complete when its newline is there). A
writer killed mid-write can leave a torn last line, never acknowledged; the next writer, having
read every complete line, cuts it off before appending.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from engine.errors import RowrankError

LOG_FILE = "events.log"


class EventLogError(RowrankError):
    """The event log cannot be read or written; the message names the file and the offset."""


class LogMoved(Exception):
    """`append_locked` found records after `complete_to` that the caller has not read (a writer
    of another machine, which `locked()` does not exclude): nothing was written; catch up and
    try again."""


class EventLogLike(Protocol):
    """An append-only log of event records. A position is an int: 0 is the start, and
    `read_from` and `append_locked` return the position after what they read or wrote."""

    where: str  # the file or URL, for messages

    def close(self) -> None: ...

    def has_new(self, position: int) -> bool:
        """Whether records were appended after `position` (cheap: checked before each page)."""
        ...

    def read_from(self, position: int) -> tuple[list[dict[str, Any]], int]: ...

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The writers' lock of this machine (a no-op where `append_locked` checks instead)."""
        ...

    def cut_to(self, position: int) -> None:
        """Best effort, after a failed append: drop what it may have left after `position`."""
        ...

    def append_locked(self, records: list[dict[str, Any]], complete_to: int) -> int:
        """Append `records` durably, all or nothing, the caller having read up to `complete_to`
        under `locked()`; raises LogMoved when another writer appended after it."""
        ...


def is_redis_url(state: str | os.PathLike[str]) -> bool:
    return str(state).startswith(("redis://", "rediss://"))


def open_log(state: str | os.PathLike[str]) -> EventLogLike:
    """The log of `--state`: a directory (this machine's file log) or a redis:// URL."""
    if is_redis_url(state):
        from engine.events.redis_log import RedisEventLog

        return RedisEventLog(str(state))
    return EventLog(Path(state))


class EventLog:
    """Append-only JSON lines in `directory/events.log` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_FILE
        self.where = str(self.path)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if created:  # the new name is durable too, not only the bytes behind it
                dfd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise EventLogError(f"cannot open the event log {self.path}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def size(self) -> int:
        """Bytes in the log now (one fstat: what a reader checks before each page)."""
        return os.fstat(self._fd).st_size

    def has_new(self, position: int) -> bool:
        return self.size() > position

    def read_from(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The complete records after byte `offset`, and the offset after the last of them."""
        size = self.size()
        if size <= offset:
            return [], offset
        data = os.pread(self._fd, size - offset, offset)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return [], offset
        records = []
        pos = 0
        for line in data[:end].split(b"\n")[:-1]:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise EventLogError(
                    f"{self.path}: the line at byte {offset + pos} is not JSON ({exc}); the log "
                    "is damaged: move it aside and re-ingest the events from their source"
                ) from None
            pos += len(line) + 1
        return records, offset + end

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The writers' lock (every process that appends takes it)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def cut_to(self, offset: int) -> None:
        """Best effort, under `locked()`: drop what a failed append left after `offset`."""
        with contextlib.suppress(OSError):
            if self.size() > offset:
                os.ftruncate(self._fd, offset)

    def append_locked(self, records: list[dict[str, Any]], complete_to: int) -> int:
        """Append `records` and fsync; the caller holds `locked()` and has read every complete
        line up to `complete_to`. Bytes beyond it are a torn line of a killed writer (never
        acknowledged): cut off first. Returns the offset after the new records."""
        try:
            if self.size() > complete_to:
                os.ftruncate(self._fd, complete_to)
            if records:
                data = b"".join(orjson.dumps(r) + b"\n" for r in records)
                view = memoryview(data)
                while view:  # O_APPEND: each write lands at the end
                    n = os.write(self._fd, view)
                    view = view[n:]
                os.fsync(self._fd)
            return self.size()
        except OSError as exc:
            raise EventLogError(f"cannot append to the event log {self.path}: {exc}") from exc
