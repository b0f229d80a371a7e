"""Business filters: property tests (hypothesis) plus the documented defaults."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ranker_contract import CUTOFF, make_dataset

from engine.candidates import CandidateRow
from engine.data.history import FINISHED_PROGRESS, History
from engine.request.context import RequestContext
from engine.request.filters import FILTERS, UNKNOWN_USER_MATURITY_MAX, apply_filters, request_masks

HISTORY = History.from_dataset(make_dataset(seed=3), CUTOFF)
N_TITLES = HISTORY.n_titles
AT = CUTOFF + timedelta(hours=1)
RANKERS: dict[str, Any] = {
    "plain": SimpleNamespace(keeps_finished=False),
    "again": SimpleNamespace(keeps_finished=True),
}


def _row(ranker: str, key: int, titles: list[int], with_progress: bool) -> CandidateRow:
    t = np.array(titles, dtype=np.int32)
    return CandidateRow(
        row_id=f"{ranker}:{key}",
        ranker=ranker,
        kind="test",
        title="a row",
        evidence=None,
        titles=t,
        scores=np.linspace(1.0, 0.0, len(t), dtype=np.float32),
        progress=np.linspace(0.1, 0.5, len(t), dtype=np.float32) if with_progress else None,
    )


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["plain", "again", "not_configured"]),
        st.lists(st.integers(0, N_TITLES - 1), unique=True, max_size=40),
        st.booleans(),
    ),
    max_size=6,
)
users = st.sampled_from([*HISTORY.user_ids[:40].tolist(), "cold-start-user"])
countries = st.sampled_from([None, "US", "FR", "DE", "XX"])


@settings(max_examples=200, deadline=None)
@given(rows_strategy, users, countries)
def test_filters_keep_a_legal_subsequence_and_account_for_every_title(
    spec: list[tuple[str, list[int], bool]], user_id: str, country: str | None
) -> None:
    rows = [_row(r, i, t, p) for i, (r, t, p) in enumerate(spec)]
    request = RequestContext(user_id, "tv", AT, country)
    kept, removed = apply_filters(rows, request, HISTORY, RANKERS)
    masks = request_masks(request, HISTORY)

    # Filters never drop or reorder rows.
    assert [r.row_id for r in kept] == [r.row_id for r in rows]
    assert set(removed) == {r.row_id for r in rows}
    for before, after in zip(rows, kept, strict=True):
        # Output is an order-preserving subsequence of the input, scores and progress aligned.
        pos = {int(t): i for i, t in enumerate(before.titles)}
        idx = np.array([pos[int(t)] for t in after.titles], dtype=np.int64)
        assert (np.diff(idx) > 0).all()
        assert np.array_equal(after.scores, before.scores[idx])
        if before.progress is not None:
            assert after.progress is not None
            assert np.array_equal(after.progress, before.progress[idx])
        # Nothing unavailable, over the maturity limit, or (unless kept on purpose) finished.
        assert not masks.unavailable[after.titles].any()
        assert not masks.maturity[after.titles].any()
        if not getattr(RANKERS.get(before.ranker), "keeps_finished", False):
            assert not masks.finished[after.titles].any()
            assert not masks.series_entry[after.titles].any()
        # kept + removed = input, each title removed by exactly one filter that rejects it.
        gone = removed[before.row_id].by_filter
        assert set(gone) == set(FILTERS)
        parts = np.concatenate([after.titles, *gone.values()])
        assert sorted(parts.tolist()) == sorted(before.titles.tolist())
        for name, titles in gone.items():
            assert getattr(masks, name)[titles].all(), name
        assert removed[before.row_id].total == len(before.titles) - len(after.titles)


def test_unknown_member_gets_the_documented_maturity_limit() -> None:
    masks = request_masks(RequestContext("nobody", "tv", AT, "US"), HISTORY)
    assert masks.maturity_max == UNKNOWN_USER_MATURITY_MAX == 13
    assert np.array_equal(masks.maturity, HISTORY.maturity > 13)
    assert not masks.finished.any()


def test_country_falls_back_to_the_member_then_to_titles_available_everywhere() -> None:
    user = int(np.flatnonzero(HISTORY.user_country == "FR")[0])
    uid = str(HISTORY.user_ids[user])
    masks = request_masks(RequestContext(uid, "tv", AT), HISTORY)
    assert masks.country == "FR"
    assert np.array_equal(~masks.unavailable, HISTORY.available_in("FR"))
    nowhere = request_masks(RequestContext("nobody", "tv", AT), HISTORY)
    everywhere = np.array([len(c) == 0 for c in HISTORY.title_countries])
    assert np.array_equal(~nowhere.unavailable, everywhere)
    # Some titles are licensed only elsewhere, so the filter has something to do.
    assert masks.unavailable.any() and (~masks.unavailable).any()


def test_finished_titles_leave_rows_except_for_rankers_that_keep_them() -> None:
    # A member with finished titles that pass the other filters.
    for user in range(HISTORY.n_users):
        s = HISTORY.user_plays(user)
        done = np.unique(HISTORY.play_title[s][HISTORY.play_progress[s] >= FINISHED_PROGRESS])
        ok = done[
            (HISTORY.maturity[done] <= HISTORY.user_maturity_max[user])
            & np.array([len(HISTORY.title_countries[t]) == 0 for t in done], dtype=bool)
        ]
        if len(ok) >= 2:
            break
    uid = str(HISTORY.user_ids[user])
    rows = [_row("plain", 0, ok.tolist(), True), _row("again", 1, ok.tolist(), False)]
    kept, removed = apply_filters(rows, RequestContext(uid, "tv", AT), HISTORY, RANKERS)
    assert len(kept[0].titles) == 0  # the row stays, empty: dropping it is the assembly's job
    assert removed["plain:0"].counts() == {
        "unavailable": 0,
        "maturity": 0,
        "finished": len(ok),
        "series_entry": 0,
    }
    assert np.array_equal(kept[1].titles, ok)
    assert removed["again:1"].total == 0
