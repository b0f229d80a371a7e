"""The page model's member features for a member with live plays: the feature store with every
member-indexed array cut to one row, that member's, recomputed from their plays now (snapshot
plus live) by the functions that fit everyone's at training time. The request then reads it as
member 0.

Recomputed: activity (plays, plays in the 7 days before the cut-off, last play, mean progress),
device and daypart shares, minutes per play per device, genre mix and recent genres, and the
member x title statistics (last and best progress, plays, days since). Kept from the snapshot
(they come from logged impressions, which events do not carry): times shown without a play and
the row-kind engagement rates; a member new to the model has none (zeros, as a cold start).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from engine.data.history import History
from engine.request.feature_fit import _Plays, member_statistics, member_title_statistics
from engine.request.features import FeatureStore


def one_member_history(history: History, user: int) -> History:
    """`history` with only member `user` (index 0) and their plays."""
    s = history.user_plays(user)
    n = s.stop - s.start
    one = slice(user, user + 1)
    return replace(
        history,
        user_ids=history.user_ids[one],
        user_country=history.user_country[one],
        user_maturity_max=history.user_maturity_max[one],
        user_created_us=history.user_created_us[one],
        play_user=np.zeros(n, dtype=np.int32),
        play_title=history.play_title[s],
        play_ts=history.play_ts[s],
        play_device=history.play_device[s],
        play_progress=history.play_progress[s],
        play_seconds=history.play_seconds[s],
        user_offsets=np.array([0, n], dtype=np.int64),
    )


def member_store(store: FeatureStore, history: History) -> FeatureStore:
    """`store` as the live member of `history` (a member-local History) reads it: one member,
    index 0 (see the module doc)."""
    user = history.live_member
    h1 = one_member_history(history, user)
    members = member_statistics(h1, _Plays.of(h1), store.countries)
    pairs = member_title_statistics(h1)
    known = user < store.user_stats.shape[0]  # else new to the model: no impressions logged
    n_t = store.n_titles
    if known:
        lo, hi = np.searchsorted(store.shown_keys, [user * n_t, (user + 1) * n_t])
        shown_keys = store.shown_keys[lo:hi] - user * n_t
        shown_counts = store.shown_counts[lo:hi]
        kinds = {
            k: getattr(store, k)[user : user + 1]
            for k in ("user_kind", "user_kind_device", "user_kind_daypart")
        }
    else:
        shown_keys = store.shown_keys[:0]
        shown_counts = store.shown_counts[:0]
        kinds = {
            k: np.zeros((1, *getattr(store, k).shape[1:]), dtype=getattr(store, k).dtype)
            for k in ("user_kind", "user_kind_device", "user_kind_daypart")
        }
    updates: dict[str, Any] = {
        k: np.ascontiguousarray(v).astype(getattr(store, k).dtype) for k, v in members.items()
    }
    updates.update(
        kinds,
        ut_keys=pairs["ut_keys"].astype(store.ut_keys.dtype),
        ut_values=pairs["ut_values"].astype(store.ut_values.dtype),
        shown_keys=np.ascontiguousarray(shown_keys),
        shown_counts=np.ascontiguousarray(shown_counts),
        user_created_us=h1.user_created_us.astype(store.user_created_us.dtype),
    )
    return replace(store, **updates)
