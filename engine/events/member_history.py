"""A member-local History: the model's snapshot with one member's plays replaced by their
snapshot plays plus their live plays, the same arrays every stage already reads.

Titles and users are the snapshot's own arrays (shared, not copied); the play arrays hold only
this member's plays, so the member keeps their user index and every per-title or per-user
array fitted on the snapshot still lines up. A member new to the model gets the next index
(`n_users`), with no country and the cold-start maturity limit, as an unknown member has.
Rankers that precompute per-member state at fit time see `live_member` and compute it for this
member from these arrays instead (rankers/continue_watching.py, watch_again.py, pvr.py's ALS).

Only plays at or after the snapshot's cut-off are layered: what came before it is the
snapshot's (a model trained on the log up to its cut-off has them already, so nothing is
counted twice across a model swap). Plays of titles the snapshot does not know are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from engine.data.columns import DEVICES
from engine.data.history import History
from engine.events.schema import PlayEvent
from engine.request.filters import UNKNOWN_USER_MATURITY_MAX

_DEVICE_CODE = {d: i for i, d in enumerate(DEVICES)}
# Per-History caches worth sharing with the snapshot (they depend on titles only).
_TITLE_CACHES = ("episodes_in_order", "_country_masks")


@dataclass(frozen=True, eq=False)
class MemberHistory(History):
    """The snapshot's titles and users with one member's plays, snapshot and live."""

    member_id: str = ""
    member: int = -1

    def __post_init__(self) -> None:
        # The index dicts are the snapshot's (shared): rebuilding them would cost a pass over
        # every title and user on each new member-local History.
        pass

    @property
    def live_member(self) -> int:
        return self.member

    def user_index(self, user_id: str) -> int:
        if user_id == self.member_id:
            return self.member
        return super().user_index(user_id)


def member_history(snapshot: History, user_id: str, events: Sequence[PlayEvent]) -> History:
    """`snapshot` with `user_id`'s plays: theirs in the snapshot, then `events` at or after
    its cut-off (sorted by time; a play's title must be in the snapshot)."""
    live = [e for e in events if e.ts_us >= snapshot.cutoff_us]
    t_idx = np.array([snapshot.title_index(e.title_id) for e in live], dtype=np.int32)
    known = t_idx >= 0
    live = [e for e, k in zip(live, known, strict=True) if k]
    t_idx = t_idx[known]
    ts = np.array([e.ts_us for e in live], dtype=np.int64)
    ids = np.array([e.event_id for e in live], dtype=str)
    order = np.lexsort((ids, ts)) if live else np.empty(0, dtype=np.int64)
    live = [live[i] for i in order]
    t_idx, ts = t_idx[order], ts[order]

    user = snapshot.user_index(user_id)
    base = dict((f.name, getattr(snapshot, f.name)) for f in fields(History) if f.init)
    if user < 0:  # a new member: the next index, as an unknown member is treated
        user = snapshot.n_users
        first_us = int(ts[0]) if len(ts) else snapshot.cutoff_us
        base["user_ids"] = np.append(snapshot.user_ids, user_id)
        base["user_country"] = np.append(snapshot.user_country, "")
        base["user_maturity_max"] = np.append(
            snapshot.user_maturity_max, np.int8(UNKNOWN_USER_MATURITY_MAX)
        )
        base["user_created_us"] = np.append(snapshot.user_created_us, np.int64(first_us))
    s = snapshot.user_plays(user) if user < snapshot.n_users else slice(0, 0)
    n = (s.stop - s.start) + len(live)
    offsets = np.zeros(len(base["user_ids"]) + 1, dtype=np.int64)
    offsets[user + 1 :] = n
    base.update(
        play_user=np.full(n, user, dtype=np.int32),
        play_title=np.concatenate([snapshot.play_title[s], t_idx]).astype(np.int32),
        play_ts=np.concatenate([snapshot.play_ts[s], ts]).astype(np.int64),
        play_device=np.concatenate(
            [
                snapshot.play_device[s],
                np.array([_DEVICE_CODE.get(e.device, -1) for e in live], dtype=np.int8),
            ]
        ).astype(np.int8),
        play_progress=np.concatenate(
            [snapshot.play_progress[s], np.array([e.progress for e in live], dtype=np.float32)]
        ).astype(np.float32),
        play_seconds=np.concatenate(
            [
                snapshot.play_seconds[s],
                np.array([e.seconds_watched for e in live], dtype=np.float32),
            ]
        ).astype(np.float32),
        user_offsets=offsets,
        _title_index=snapshot._title_index,
        _user_index=snapshot._user_index,
    )
    out = MemberHistory(**base, member_id=user_id, member=user)
    for name in _TITLE_CACHES:  # cached_property values live in the instance's __dict__
        out.__dict__[name] = getattr(snapshot, name)
    return out
