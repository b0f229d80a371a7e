"""Live member state: per member, their newest play events, folded from the event log.

Every process (each server worker, the ingest CLI) keeps its own `LiveState` and reads the one
shared log from its own offset: before a member's page is built (`history_for` refreshes), and
under the writers' lock before appending (so an event another process took first is a no-op
here too). A 2xx is sent after the fsync, and the next page of any worker reads the log first:
read-your-writes across workers with one `fstat` a page when nothing is new. With the Redis log
(engine.events.redis_log, shared by several machines) the writers' lock is the append script's
compare-and-append (LogMoved: catch up, decide again) and the check before a page one round trip.

Memory bound: per member at most `max_events_per_member` events (MAX_EVENTS_PER_MEMBER by
default), the newest by (ts, event_id): each event with its strings, id key and journal entry
costs under 600 bytes (tests/events/test_event_log.py measures it), so under 150 KB for a member
at the default bound. Older events are dropped from memory (they stay in the log); an event
older than a full member's oldest kept one changes nothing and is not written. Idempotence
follows: a retried `event_id` is either kept (a no-op) or older than every kept event (a
no-op). The number of members with live events is not bounded here: it is the members who
played since the model's cut-off, and a newer model folds them into its snapshot.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from engine.candidates import LivePlays
from engine.data.history import History
from engine.events.log import LogMoved, open_log
from engine.events.member_features import member_store
from engine.events.member_history import member_history
from engine.events.schema import PlayEvent
from engine.request.features import FeatureStore

# A day of even a heavy member's plays: the window between two trainings, with room to spare.
MAX_EVENTS_PER_MEMBER = 256
# The newest plays kept for the title counts kept nearline (`plays_since`): 200 s at 5,000
# events/s, three refreshes of the default 60 s. A reference each (most are in a member's kept
# events too; the event itself for one that is not). A reader further behind misses the oldest.
MAX_JOURNAL = 1_000_000
# Member-local Histories kept built, so the several asks of one page (and the pages of one
# member on several devices) share one History and the rankers' caches keyed by it.
MEMBER_HISTORY_CACHE = 256


# A kept event: an exact tuple of atoms, (ts_us, event_id, user_id, title_id, device,
# seconds_watched, progress, rating), ordered by (ts_us, event_id); a member's events: a tuple of
# them in that order, replaced whole on every change. The cyclic garbage collector stops tracking
# tuples of atoms, so its full collections skip the live state, which would otherwise make
# each of them a pause as long as the live state is large (bench/bench_live_state.py).
Kept = tuple[int, str, str, str, str, float, float, float | None]
Events = tuple[Kept, ...]


def kept(ev: PlayEvent) -> Kept:
    return (
        ev.ts_us,
        ev.event_id,
        ev.user_id,
        ev.title_id,
        ev.device,
        ev.seconds_watched,
        ev.progress,
        ev.rating,
    )


def event_of(k: Kept) -> PlayEvent:
    ts_us, event_id, user_id, title_id, device, seconds, progress, rating = k
    return PlayEvent(event_id, user_id, title_id, ts_us, device, seconds, progress, rating)


def with_event(events: Events, ev: Kept, bound: int) -> Events | None:
    """`events` with `ev` (not among them) in its place, the oldest dropped past `bound`; None
    when it is older than a full member's oldest event."""
    i = bisect.bisect_left(events, ev[:2])
    if len(events) >= bound and i == 0:
        return None
    out = (*events[:i], ev, *events[i:])
    return out[1:] if len(out) > bound else out


def id_key(ev: Kept) -> str:
    """The key of a kept event's id: the member's and the event's ids (a string, so the dict of
    keys stays untracked by the garbage collector, as a set or a dict of tuples would not)."""
    return f"{ev[2]}\x00{ev[1]}"


def without_event(events: Events, ev: Kept) -> Events:
    i = bisect.bisect_left(events, ev[:2])
    if i < len(events) and events[i][:2] == ev[:2]:
        return events[:i] + events[i + 1 :]
    return events


@dataclass(frozen=True)
class Appended:
    accepted: int  # new events written and applied
    duplicates: int  # events that changed nothing (retried ids, too old to keep)


@dataclass(eq=False)
class _Ticket:
    """One caller's batch waiting for a group commit."""

    events: list[PlayEvent]
    done: bool = False
    appended: Appended | None = None
    error: BaseException | None = None

    def result(self) -> Appended:
        if self.error is not None:
            raise self.error
        assert self.appended is not None
        return self.appended


class LiveState:
    """Per-member live events folded from the log of `state` (see the module doc): a
    directory, this machine's file log, or a redis:// URL (engine.events.redis_log)."""

    def __init__(
        self, state: str | os.PathLike[str], *, max_events_per_member: int = MAX_EVENTS_PER_MEMBER
    ) -> None:
        self.log = open_log(state)
        self.bound = max_events_per_member
        self.members: dict[str, Events] = {}
        self._ids: dict[str, int] = {}  # id_key -> ts_us of every kept event
        self.offset = 0
        self.applied = 0  # events applied since start (replay included)
        # Every play applied and on disk (written here, or read from the log), in the order
        # applied: what title-level counts consume (`plays_since`). Entry k is play number
        # journal_start + k.
        self.journal: list[Kept] = []
        self.journal_start = 0
        self._lock = threading.Lock()
        self._group = threading.Condition()
        self._queue: list[_Ticket] = []
        self._writing = False
        self._cache: OrderedDict[tuple[int, str], tuple[History, Events, History]] = OrderedDict()
        self._stores: OrderedDict[tuple[int, int], tuple[FeatureStore, History, FeatureStore]] = (
            OrderedDict()
        )
        self.refresh()  # a restart replays the log

    def close(self) -> None:
        self.log.close()

    # ----- reading the log --------------------------------------------------------------------

    def refresh(self) -> int:
        """Apply what other processes appended since the last read; returns how many."""
        if not self.log.has_new(self.offset):  # the common case: one fstat (Redis: one round trip)
            return 0
        with self._lock:
            return self._catch_up()

    def _catch_up(self) -> int:
        # Applying is idempotent, so reading lines this process is writing right now (under
        # the writers' lock, without the state's) only finds them applied already.
        records, end = self.log.read_from(self.offset)
        self.offset = max(self.offset, end)
        n = 0
        for r in records:
            ev = kept(PlayEvent.from_record(r))
            if self._apply(ev):
                self._journal([ev])
                n += 1
        return n

    def _journal(self, events: list[Kept]) -> None:
        self.journal += events
        if len(self.journal) > 2 * MAX_JOURNAL:  # trimmed in steps: amortized O(1) a play
            cut = len(self.journal) - MAX_JOURNAL
            del self.journal[:cut]
            self.journal_start += cut

    def _apply(self, ev: Kept, evicted: list[Kept] | None = None) -> bool:
        """Keep `ev`; the event it pushed out of a full member goes to `evicted` (for _undo)."""
        key = id_key(ev)
        if key in self._ids:
            return False  # a retry (even with another ts: the first one stands)
        old = self.members.get(ev[2], ())
        new = with_event(old, ev, self.bound)
        if new is None:
            return False
        self.members[ev[2]] = new
        self._ids[key] = ev[0]
        self.applied += 1
        if len(old) >= self.bound:  # its oldest event left
            del self._ids[id_key(old[0])]
            if evicted is not None:
                evicted.append(old[0])
        return True

    # ----- writing ----------------------------------------------------------------------------

    def append(self, events: list[PlayEvent]) -> Appended:
        """Write the events that change something (fsync before returning) and apply them.

        Group commit: batches that arrive from other threads while a write is running wait,
        then go together in the next write, behind one fsync."""
        ticket = _Ticket(events)
        with self._group:
            self._queue.append(ticket)
            while not ticket.done and self._writing:
                self._group.wait()
            if ticket.done:
                return ticket.result()
            self._writing = True  # this thread writes the queue, its own batch included
            group, self._queue = self._queue, []
        try:
            self._commit(group)
        finally:
            with self._group:
                self._writing = False
                for t in group:
                    t.done = True
                self._group.notify_all()
        return ticket.result()

    def _commit(self, group: list[_Ticket]) -> None:
        try:
            while not self._commit_once(group):
                pass  # another machine appended first (LogMoved): catch up, decide again
        except BaseException as exc:
            for t in group:
                t.error = exc
            raise

    def _commit_once(self, group: list[_Ticket]) -> bool:
        with self.log.locked():
            with self._lock:
                self._catch_up()
                end = self.offset
                fresh: list[Kept] = []
                evicted: list[Kept] = []
                for t in group:
                    mine = [ev for ev in map(kept, t.events) if self._apply(ev, evicted)]
                    t.appended = Appended(len(mine), len(t.events) - len(mine))
                    fresh += mine
            # Applied first (that drops repeats inside the group); the write and its
            # fsync run without the state's lock, so this worker's pages are not held up
            # by the disk (the 2xx still waits for the fsync). A failed write is cut off
            # and taken back: the client gets no 2xx and its retry must not be a no-op.
            # Taken back, the log is read again from `end`: a page's refresh may have read
            # past it meanwhile and found some of these ids already applied.
            try:
                new_end = self.log.append_locked([event_of(e).to_record() for e in fresh], end)
            except LogMoved:
                with self._lock:
                    self._undo(fresh, evicted)
                    self.offset = min(self.offset, end)
                return False
            except BaseException:
                self.log.cut_to(end)
                with self._lock:
                    self._undo(fresh, evicted)
                    self.offset = min(self.offset, end)
                raise
            with self._lock:
                self.offset = max(self.offset, new_end)
                self._journal(fresh)  # on disk now: a taken-back play never gets here
        return True

    def _undo(self, events: list[Kept], evicted: list[Kept]) -> None:
        for ev in reversed(events):
            self.members[ev[2]] = without_event(self.members[ev[2]], ev)
            self._ids.pop(id_key(ev), None)  # absent if a later event of the group pushed it out
            self.applied -= 1
        taken_back = {id(ev) for ev in events}
        for ev in reversed(evicted):  # what the events pushed out of full members, back in
            if id(ev) not in taken_back:
                back = with_event(self.members[ev[2]], ev, self.bound)
                if back is not None:
                    self.members[ev[2]] = back
                    self._ids[id_key(ev)] = ev[0]

    # ----- the live layer the engine reads ----------------------------------------------------

    def events_of(self, user_id: str) -> list[PlayEvent]:
        return [event_of(k) for k in self.members.get(user_id, ())]

    def history_for(self, snapshot: History, user_id: str) -> History:
        """The History a page of `user_id` reads: `snapshot` itself when the member has no live
        play after its cut-off, else the member-local History (engine.events.member_history)."""
        self.refresh()
        events = self.members.get(user_id, ())
        if not events or events[-1][0] < snapshot.cutoff_us:
            return snapshot
        key = (id(snapshot), user_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is snapshot and hit[1] is events:
                self._cache.move_to_end(key)
                return hit[2]
        built = member_history(snapshot, user_id, [event_of(k) for k in events])
        with self._lock:
            self._cache[key] = (snapshot, events, built)
            self._cache.move_to_end(key)
            while len(self._cache) > MEMBER_HISTORY_CACHE:
                self._cache.popitem(last=False)
        return built

    def features_for(self, store: FeatureStore, history: History) -> FeatureStore:
        """The feature store as the live member of `history` (from `history_for`) reads it:
        their member features recomputed from their plays (engine.events.member_features)."""
        key = (id(store), id(history))
        with self._lock:
            hit = self._stores.get(key)
            if hit is not None and hit[0] is store and hit[1] is history:
                self._stores.move_to_end(key)
                return hit[2]
        built = member_store(store, history)
        with self._lock:
            self._stores[key] = (store, history, built)
            while len(self._stores) > MEMBER_HISTORY_CACHE:
                self._stores.popitem(last=False)
        return built

    def plays_since(self, position: int, snapshot: History, until_us: int) -> tuple[LivePlays, int]:
        """The plays applied since journal position `position` (0: since the start) at or
        after `snapshot`'s cut-off, of titles it knows, for title counts kept nearline
        (Trending); and the position to ask from next time. A play stamped after `until_us`
        (a client clock ahead, up to the 5 minutes allowed) counts as at `until_us`. A member's
        country is theirs in the snapshot ("" for a member new to it: the world's counts)."""
        self.refresh()
        with self._lock:
            start = max(position - self.journal_start, 0)
            new = self.journal[start:]
            end = self.journal_start + len(self.journal)
        cutoff = snapshot.cutoff_us
        new = [ev for ev in new if ev[0] >= cutoff]
        title = np.array([snapshot.title_index(ev[3]) for ev in new], dtype=np.int32)
        user = np.array([snapshot.user_index(ev[2]) for ev in new], dtype=np.int64)
        ts = np.minimum(np.array([ev[0] for ev in new], dtype=np.int64), until_us)
        known = title >= 0
        title, user, ts = title[known], user[known], ts[known]
        country = np.where(user >= 0, snapshot.user_country[np.maximum(user, 0)], "").astype(str)
        return LivePlays(title, country, ts, int(ts.max()) if len(ts) else cutoff), end

    def live_plays(self) -> int:
        return int(np.sum([len(e) for e in self.members.values()], dtype=np.int64))
