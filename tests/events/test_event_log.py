"""The event log and live state without a server: idempotence, restart replay, a torn last
line, the per-member bound, two processes' states on one log, and validation at the edge."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import orjson
import pytest

from engine.events.log import LOG_FILE, EventLogError
from engine.events.schema import MAX_FUTURE_US, EventError, PlayEvent, validate_batch
from engine.events.state import LiveState

T0 = 1_800_000_000_000_000  # us


def _ev(i: int, user: str = "u1", ts: int | None = None, progress: float = 0.5) -> PlayEvent:
    return PlayEvent(
        f"e{i}", user, f"t{i % 7}", T0 + i * 1_000_000 if ts is None else ts, "tv", 60.0, progress
    )


def _log_ids(directory: Path) -> list[str]:
    lines = (directory / LOG_FILE).read_bytes().splitlines()
    return [orjson.loads(line)["event_id"] for line in lines]


def test_a_retried_event_id_is_a_no_op(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    assert live.append([_ev(1), _ev(2)]).accepted == 2
    again = live.append([_ev(2), _ev(3), _ev(3)])
    assert (again.accepted, again.duplicates) == (1, 2)
    # the same id with other values is still the first event
    changed = PlayEvent("e1", "u1", "t5", T0 + 99, "web", 1.0, 1.0)
    assert live.append([changed]).accepted == 0
    assert _log_ids(tmp_path) == ["e1", "e2", "e3"]
    assert [e.title_id for e in live.events_of("u1")] == ["t1", "t2", "t3"]


def test_restart_replays_the_log(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    live.append([_ev(i, user=f"u{i % 3}") for i in range(30)])
    before = {u: live.events_of(u) for u in ("u0", "u1", "u2")}
    live.close()
    again = LiveState(tmp_path)
    assert {u: again.events_of(u) for u in ("u0", "u1", "u2")} == before
    assert again.applied == 30
    assert again.append([_ev(4, user="u1")]).accepted == 0


def test_a_torn_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    live.append([_ev(1), _ev(2)])
    live.close()
    with (tmp_path / LOG_FILE).open("ab") as f:  # a writer killed mid-line, never acknowledged
        f.write(b'{"event_id": "e9", "user_id": "u1", "tit')
    again = LiveState(tmp_path)
    assert [e.event_id for e in again.events_of("u1")] == ["e1", "e2"]
    again.append([_ev(3)])
    assert _log_ids(tmp_path) == ["e1", "e2", "e3"]


def test_memory_per_member_is_bounded_to_the_newest_events(tmp_path: Path) -> None:
    live = LiveState(tmp_path, max_events_per_member=5)
    live.append([_ev(i) for i in range(8)])
    assert [e.event_id for e in live.events_of("u1")] == [f"e{i}" for i in range(3, 8)]
    # older than every kept event of a full member: changes nothing, not written
    assert live.append([_ev(0), _ev(1)]).accepted == 0
    # a newer one pushes the oldest out
    assert live.append([_ev(20)]).accepted == 1
    assert live.events_of("u1")[0].event_id == "e4"
    assert len(_log_ids(tmp_path)) == 9
    live.close()
    replay = LiveState(tmp_path, max_events_per_member=5)
    assert replay.events_of("u1") == live.events_of("u1")


def test_kept_events_leave_the_garbage_collector(tmp_path: Path) -> None:
    """Kept events are tuples of atoms, which the cyclic collector stops tracking: its full
    collections then do not walk a live state of hundreds of thousands of events."""
    live = LiveState(tmp_path)
    live.append([_ev(i) for i in range(3)])
    gc.collect()
    assert [gc.is_tracked(k) for k in live.members["u1"]] == [False] * 3
    assert not gc.is_tracked(live.members["u1"])
    assert not gc.is_tracked(live._ids)
    assert not any(gc.is_tracked(k) for k in live.journal)


def test_a_kept_event_costs_under_600_bytes(tmp_path: Path) -> None:
    """The memory bound docs/events.md states: events parsed from JSON as the server parses
    them, kept with their strings, sort key, id key and journal entry."""
    live = LiveState(tmp_path, max_events_per_member=512)
    raw = [
        orjson.dumps({"e": f"evt-{k:012d}", "u": "member-000123", "t": f"t{k:05d}", "d": "tv"})
        for k in range(512)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k, r in enumerate(raw):
            d = orjson.loads(r)
            live.append([PlayEvent(d["e"], d["u"], d["t"], 1_000_000 + k, d["d"], 60.0, 0.5)])
        per_event = (tracemalloc.get_traced_memory()[0] - before) / len(raw)
    finally:
        tracemalloc.stop()
    assert len(live.events_of("member-000123")) == 512
    assert 100 < per_event < 600, per_event


def test_out_of_order_events_are_kept_in_time_order(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    live.append([_ev(5), _ev(1), _ev(3)])
    live.append([_ev(2)])
    assert [e.event_id for e in live.events_of("u1")] == ["e1", "e2", "e3", "e5"]


def test_a_second_state_on_the_same_log_sees_the_writes_and_dedupes(tmp_path: Path) -> None:
    """Two workers: each its own LiveState over the one log."""
    a, b = LiveState(tmp_path), LiveState(tmp_path)
    a.append([_ev(1), _ev(2)])
    assert b.refresh() == 2
    assert [e.event_id for e in b.events_of("u1")] == ["e1", "e2"]
    got = b.append([_ev(2), _ev(3)])  # e2 came through A first
    assert (got.accepted, got.duplicates) == (1, 1)
    a.refresh()
    assert a.events_of("u1") == b.events_of("u1")
    assert _log_ids(tmp_path) == ["e1", "e2", "e3"]


GOOD = {
    "event_id": "x",
    "user_id": "u",
    "title_id": "t1",
    "ts": "2027-01-01T20:00:00Z",
    "device": "tv",
    "seconds_watched": 60,
    "progress": 0.5,
}
NOW_US = 1_798_833_600_000_000  # 2027-01-01T20:00:00Z


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"title_id": "nope"}, "title_id", "nope"),
        ({"progress": 1.5}, "progress", 1.5),
        ({"progress": -0.1}, "progress", -0.1),
        ({"device": "fridge"}, "device", "fridge"),
        ({"ts": "2027-01-01T20:06:00Z"}, "ts", "2027-01-01T20:06:00Z"),
        ({"ts": "2027-01-01T20:00:00"}, "ts", "2027-01-01T20:00:00"),
        ({"ts": "yesterday"}, "ts", "yesterday"),
        ({"seconds_watched": -1}, "seconds_watched", -1),
        ({"event_id": None}, "event_id", None),
        ({"colour": "red"}, "colour", "red"),
    ],
)
def test_a_bad_event_names_its_index_field_and_value(
    change: dict[str, object], field: str, value: object
) -> None:
    bad = {**GOOD, "event_id": "y", **change}
    with pytest.raises(EventError) as err:
        validate_batch([GOOD, bad], lambda t: t == "t1", NOW_US)
    assert (err.value.index, err.value.field, err.value.value) == (1, field, value)
    assert "event 1" in str(err.value) and repr(value) in str(err.value)


def test_a_missing_field_is_named() -> None:
    bad = {k: v for k, v in GOOD.items() if k != "progress"}
    with pytest.raises(EventError) as err:
        validate_batch([bad], lambda t: True, NOW_US)
    assert (err.value.index, err.value.field) == (0, "progress")
    assert "missing" in str(err.value)


def test_ts_up_to_five_minutes_ahead_passes() -> None:
    ok = {**GOOD, "ts": "2027-01-01T20:04:59Z"}
    (ev,) = validate_batch([ok], lambda t: True, NOW_US)
    assert ev.ts_us - NOW_US < MAX_FUTURE_US
    assert ev.rating is None


def test_concurrent_batches_share_fsyncs_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: threads appending at once wait for the running write and go together in
    the next one; every event is written once."""
    import os
    import threading
    import time

    live = LiveState(tmp_path)
    syncs = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a slow disk makes batches meet
        syncs.append(fd)
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    n_threads, n_batches, size = 8, 10, 5

    def client(k: int) -> None:
        for b in range(n_batches):
            base = (k * n_batches + b) * size
            live.append([_ev(base + i, user=f"u{k}") for i in range(size)])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = _log_ids(tmp_path)
    assert sorted(ids) == sorted(f"e{i}" for i in range(n_threads * n_batches * size))
    assert len(syncs) < n_threads * n_batches


def test_the_first_bad_event_is_named_whichever_check_it_fails() -> None:
    unknown_title = {**GOOD, "title_id": "nope"}
    bad_type = {**GOOD, "event_id": "z", "progress": 7}
    with pytest.raises(EventError) as err:
        validate_batch([GOOD, unknown_title, bad_type], lambda t: t == "t1", NOW_US)
    assert (err.value.index, err.value.field) == (1, "title_id")


_WRITER = """
import sys
from pathlib import Path
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
live = LiveState(Path(sys.argv[1]))
for b in range(100_000):
    live.append([PlayEvent(f"k{b}-{i}", f"u{i % 50}", "t1", 1_800_000_000_000_000 + b * 1000 + i,
                           "tv", 60.0, 0.5) for i in range(20)])
    print(b, flush=True)  # acknowledged: the batch is fsynced
"""


@pytest.mark.slow
def test_sigkill_during_appends_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """A writer process killed at seeded moments: every batch it acknowledged is in the log,
    once, and the log replays."""
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    rng = np.random.default_rng(7)
    acked: set[str] = set()
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # started: imports take a while on a busy machine
        time.sleep(float(rng.uniform(0.05, 0.5)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        done = [int(line) for line in (first + out).split()]
        acked.update(f"k{b}-{i}" for b in done for i in range(20))
    ids = _log_ids(tmp_path)
    assert acked <= set(ids)
    assert len(ids) == len(set(ids))
    replay = LiveState(tmp_path, max_events_per_member=100_000)
    assert replay.applied == len(ids)


def test_a_failed_write_is_taken_back_so_the_retry_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from engine.events.log import EventLogError

    live = LiveState(tmp_path)
    live.append([_ev(1)])

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        with pytest.raises(EventLogError, match="No space left"):
            live.append([_ev(2), _ev(3)])
    assert [e.event_id for e in live.events_of("u1")] == ["e1"]
    assert _log_ids(tmp_path) == ["e1"]
    assert live.append([_ev(2), _ev(3)]).accepted == 2
    assert _log_ids(tmp_path) == ["e1", "e2", "e3"]


def test_a_failed_append_takes_back_what_it_pushed_out_of_a_full_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = LiveState(tmp_path, max_events_per_member=3)
    live.append([_ev(1), _ev(2), _ev(3)])

    def fail(records: list[dict[str, object]], complete_to: int) -> int:
        raise EventLogError("disk full")

    monkeypatch.setattr(live.log, "append_locked", fail)
    with pytest.raises(EventLogError):
        live.append([_ev(4)])  # applied first (pushing e1 out), then taken back
    assert [e.event_id for e in live.events_of("u1")] == ["e1", "e2", "e3"]
    with pytest.raises(EventLogError):
        live.append([_ev(k) for k in range(4, 8)])  # e7 pushes out e4, of the same batch
    assert [e.event_id for e in live.events_of("u1")] == ["e1", "e2", "e3"]
    monkeypatch.undo()
    # nothing of the failed batches is left behind: a retry is applied in full
    assert live.append([_ev(k) for k in range(4, 8)]).accepted == 4
    assert [e.event_id for e in live.events_of("u1")] == ["e5", "e6", "e7"]
