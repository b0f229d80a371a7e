"""Live member state: per member, their newest play events, folded from the event log.

Every process (each server worker, the ingest CLI) keeps its own `LiveState` and reads the one
shared log from its own offset: before a member's page is built (`history_for` refreshes), and
under the writers' lock before appending (so an event another process took first is a no-op
here too). A 2xx is sent after the fsync, and the next page of any worker reads the log first:
read-your-writes across workers with one `fstat` a page when nothing is new. With the Redis log
(engine.events.redis_log, shared by several machines) the writers' lock is the append script's
compare-and-append (LogMoved: catch up, decide again) and the check before a page one round trip.

Memory bound: per member at most `max_events_per_member` events (MAX_EVENTS_PER_MEMBER by
default), the newest by (ts, event_id): each event with its strings, sort key and id costs about
600 bytes (tracemalloc: 300 KB for a member at 512 events), so about 150 KB for a member at the
default bound. Older events are dropped from memory (they stay in the log); an event older than a
full member's oldest kept one changes nothing and is not written. Idempotence follows: a retried
`event_id` is either kept (a no-op) or older than every kept event (a no-op). The number of
members with live events is not bounded here: it is the members who played since the model's
cut-off, and a newer model folds them into its snapshot.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

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
# The newest plays kept for the title counts kept nearline (`plays_since`): 200 s at 5,000 events/s,
# three refreshes of the default 60 s. A reference each (most are in a member's kept events too),
# about 600 bytes for one that is not. A reader further behind misses the oldest in its counts.
MAX_JOURNAL = 1_000_000
# Member-local Histories kept built, so the several asks of one page (and the pages of one
# member on several devices) share one History and the rankers' caches keyed by it.
MEMBER_HISTORY_CACHE = 256


@dataclass
class MemberEvents:
    """One member's newest events, sorted by (ts_us, event_id); `version` counts changes."""

    keys: list[tuple[int, str]] = field(default_factory=list)
    events: list[PlayEvent] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    version: int = 0

    def add(self, ev: PlayEvent, bound: int) -> bool:
        """Keep `ev`; False when it changes nothing (a repeated id, or older than a full
        window's oldest event)."""
        if ev.event_id in self.ids:
            return False  # a retry (even with another ts: the first one stands)
        key = (ev.ts_us, ev.event_id)
        i = bisect.bisect_left(self.keys, key)
        if len(self.keys) >= bound and i == 0:
            return False
        self.keys.insert(i, key)
        self.events.insert(i, ev)
        self.ids.add(ev.event_id)
        if len(self.keys) > bound:
            self.ids.discard(self.events[0].event_id)
            del self.keys[0], self.events[0]
        self.version += 1
        return True

    def remove(self, ev: PlayEvent) -> None:
        key = (ev.ts_us, ev.event_id)
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i], self.events[i]
            self.ids.discard(ev.event_id)
            self.version += 1


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
        self.members: dict[str, MemberEvents] = {}
        self.offset = 0
        self.applied = 0  # events applied since start (replay included)
        # Every play applied and on disk (written here, or read from the log), in the order
        # applied: what title-level counts consume (`plays_since`). Entry k is play number
        # journal_start + k.
        self.journal: list[PlayEvent] = []
        self.journal_start = 0
        self._lock = threading.Lock()
        self._group = threading.Condition()
        self._queue: list[_Ticket] = []
        self._writing = False
        self._cache: OrderedDict[tuple[int, str], tuple[History, int, History]] = OrderedDict()
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
            ev = PlayEvent.from_record(r)
            if self._apply(ev):
                self._journal([ev])
                n += 1
        return n

    def _journal(self, events: list[PlayEvent]) -> None:
        self.journal += events
        if len(self.journal) > 2 * MAX_JOURNAL:  # trimmed in steps: amortized O(1) a play
            cut = len(self.journal) - MAX_JOURNAL
            del self.journal[:cut]
            self.journal_start += cut

    def _apply(self, ev: PlayEvent, evicted: list[PlayEvent] | None = None) -> bool:
        """Keep `ev`; the event it pushed out of a full member goes to `evicted` (for _undo)."""
        m = self.members.get(ev.user_id)
        if m is None:
            m = self.members[ev.user_id] = MemberEvents()
        oldest = m.events[0] if len(m.events) >= self.bound else None
        if m.add(ev, self.bound):
            self.applied += 1
            if oldest is not None and evicted is not None:
                evicted.append(oldest)
            return True
        return False

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
                fresh: list[PlayEvent] = []
                evicted: list[PlayEvent] = []
                for t in group:
                    mine = [ev for ev in t.events if self._apply(ev, evicted)]
                    t.appended = Appended(len(mine), len(t.events) - len(mine))
                    fresh += mine
            # Applied first (that drops repeats inside the group); the write and its
            # fsync run without the state's lock, so this worker's pages are not held up
            # by the disk (the 2xx still waits for the fsync). A failed write is cut off
            # and taken back: the client gets no 2xx and its retry must not be a no-op.
            # Taken back, the log is read again from `end`: a page's refresh may have read
            # past it meanwhile and found some of these ids already applied.
            try:
                new_end = self.log.append_locked([e.to_record() for e in fresh], end)
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

    def _undo(self, events: list[PlayEvent], evicted: list[PlayEvent]) -> None:
        for ev in reversed(events):
            self.members[ev.user_id].remove(ev)
            self.applied -= 1
        taken_back = {id(ev) for ev in events}
        for ev in reversed(evicted):  # what the events pushed out of full members, back in
            if id(ev) not in taken_back:
                self.members[ev.user_id].add(ev, self.bound)

    # ----- the live layer the engine reads ----------------------------------------------------

    def events_of(self, user_id: str) -> list[PlayEvent]:
        m = self.members.get(user_id)
        return list(m.events) if m is not None else []

    def history_for(self, snapshot: History, user_id: str) -> History:
        """The History a page of `user_id` reads: `snapshot` itself when the member has no live
        play after its cut-off, else the member-local History (engine.events.member_history)."""
        self.refresh()
        m = self.members.get(user_id)
        if m is None or not m.events or m.events[-1].ts_us < snapshot.cutoff_us:
            return snapshot
        key = (id(snapshot), user_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is snapshot and hit[1] == m.version:
                self._cache.move_to_end(key)
                return hit[2]
            events = list(m.events)
            version = m.version
        built = member_history(snapshot, user_id, events)
        with self._lock:
            self._cache[key] = (snapshot, version, built)
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
        new = [ev for ev in new if ev.ts_us >= cutoff]
        title = np.array([snapshot.title_index(ev.title_id) for ev in new], dtype=np.int32)
        user = np.array([snapshot.user_index(ev.user_id) for ev in new], dtype=np.int64)
        ts = np.minimum(np.array([ev.ts_us for ev in new], dtype=np.int64), until_us)
        known = title >= 0
        title, user, ts = title[known], user[known], ts[known]
        country = np.where(user >= 0, snapshot.user_country[np.maximum(user, 0)], "").astype(str)
        return LivePlays(title, country, ts, int(ts.max()) if len(ts) else cutoff), end

    def live_plays(self) -> int:
        return int(np.sum([len(m.events) for m in self.members.values()], dtype=np.int64))
