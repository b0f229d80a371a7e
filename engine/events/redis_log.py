"""The event log in Redis, for several servers on several machines sharing member state
(`--state redis://HOST:PORT/DB`): a second implementation of engine.events.log.EventLogLike.

The log is one stream, STREAM_KEY, an entry per accepted event (field `r`: the same JSON record
the file log writes a line of). A position is the stream id `ms-seq` as the int `ms << 64 | seq`.

- Durable: the server must run with `appendonly yes` and `appendfsync always`, checked when the
  log is opened (CONFIG GET). With `always`, Redis writes and fsyncs its append-only file before
  it sends the replies of the commands it ran, so the reply to an append means the events are
  on the Redis host's disk, and a Redis restart replays them. Replicas are not waited for (no
  WAIT): a failover to a replica can lose acknowledged events.
- All or nothing, each write once: an append is one Lua script, which Redis runs atomically and
  writes to its append-only file as one MULTI/EXEC (a torn transaction at the file's end is
  dropped when Redis loads it). The script appends only if the stream's last id is still the one
  the writer read up to (compare and append); otherwise it writes nothing and the writer catches
  up and decides again (LogMoved). So, as with the file log under its lock, whoever appends has
  read every earlier event: a retried `event_id` that any server took first is a duplicate.
- Read your writes: before a member's page a server asks for the stream's last id (one round
  trip) and reads the entries after its own position when there are any.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from engine.events.log import EventLogError, LogMoved

STREAM_KEY = "rowrank:events"
READ_COUNT = 10_000  # entries per XRANGE while catching up
# The configuration under which a reply means the append is fsynced (see the module doc).
DURABLE_CONFIG = {"appendonly": "yes", "appendfsync": "always"}

# KEYS[1]: the stream; ARGV[1]: the id the writer has read up to; ARGV[2..]: the records.
# Returns {1, last id written} or {0, the stream's last id} when another writer came first.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local cur = '0-0'
if #last > 0 then cur = last[1][1] end
if cur ~= ARGV[1] then return {0, cur} end
for i = 2, #ARGV do cur = redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
return {1, cur}
"""


def position_of(stream_id: bytes | str) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return (int(ms) << 64) | int(seq or 0)


def stream_id_of(position: int) -> str:
    return f"{position >> 64}-{position & ((1 << 64) - 1)}"


def redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisEventLog:
    """The event stream STREAM_KEY in the Redis database of `url` (see the module doc)."""

    def __init__(self, url: str) -> None:
        import redis

        self.where = redacted(url)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        try:
            # Any: redis-py's replies are typed as unions of every shape a command can return.
            self._redis: Any = redis.Redis.from_url(
                url, socket_connect_timeout=10, socket_timeout=60
            )
            self._check_durable()
            self._append: Any = self._redis.register_script(_APPEND)
        except ValueError as exc:
            raise EventLogError(f"--state {self.where}: not a Redis URL ({exc})") from None
        except redis.RedisError as exc:
            raise EventLogError(f"cannot open the event log at {self.where}: {exc}") from None

    def _check_durable(self) -> None:
        import redis

        have = {}
        try:
            for name in DURABLE_CONFIG:
                value = self._redis.config_get(name).get(name, "?")
                have[name] = value.decode() if isinstance(value, bytes) else str(value)
        except redis.ResponseError as exc:
            raise EventLogError(
                f"{self.where}: cannot read the server's configuration ({exc}); the event log "
                "needs `appendonly yes` and `appendfsync always` and must be able to check them"
            ) from None
        wrong = {k: v for k, v in have.items() if v != DURABLE_CONFIG[k]}
        if wrong:
            now = ", ".join(f"{k} {v}" for k, v in wrong.items())
            raise EventLogError(
                f"{self.where} runs with {now}: an acknowledged event must be on disk; set "
                "`appendonly yes` and `appendfsync always` (redis.conf, or CONFIG SET then "
                "CONFIG REWRITE)"
            )

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self._redis.close()

    def has_new(self, position: int) -> bool:
        try:
            last = self._redis.xrevrange(STREAM_KEY, "+", "-", count=1)
        except self._errors as exc:
            raise EventLogError(f"cannot read the event log at {self.where}: {exc}") from None
        return bool(last) and position_of(last[0][0]) > position

    def read_from(self, position: int) -> tuple[list[dict[str, Any]], int]:
        records: list[dict[str, Any]] = []
        while True:
            try:
                got = self._redis.xrange(
                    STREAM_KEY, f"({stream_id_of(position)}", "+", count=READ_COUNT
                )
            except self._errors as exc:
                raise EventLogError(f"cannot read the event log at {self.where}: {exc}") from None
            for stream_id, fields in got:
                try:
                    records.append(orjson.loads(fields[b"r"]))
                except (KeyError, orjson.JSONDecodeError) as exc:
                    raise EventLogError(
                        f"{self.where}: the entry {stream_id.decode()} of {STREAM_KEY} is not an "
                        f"event record ({exc!r}); the stream is damaged"
                    ) from None
            if got:
                position = position_of(got[-1][0])
            if len(got) < READ_COUNT:
                return records, position

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the append script checks instead (LogMoved)

    def cut_to(self, position: int) -> None:
        """Nothing to cut: an append script writes all of its records or none."""

    def append_locked(self, records: list[dict[str, Any]], complete_to: int) -> int:
        if not records:
            return complete_to
        args: list[bytes | str] = [stream_id_of(complete_to)]
        args += [orjson.dumps(r) for r in records]
        try:
            ok, last = self._append(keys=[STREAM_KEY], args=args)
        except self._errors as exc:
            raise EventLogError(f"cannot append to the event log at {self.where}: {exc}") from None
        if not ok:
            raise LogMoved(last)
        return position_of(last)
