"""Business filters, applied to every candidate row of a request (the filters stage).

In this order, each title is removed by the first filter that rejects it:

    unavailable   not licensed in the member's country (History.available_in)
    maturity      rated above the member's limit (History.user_maturity_max)
    finished      already watched to FINISHED_PROGRESS (History.finished), except in rows of
                  rankers with `keeps_finished` (Watch again)
    series_entry  an episode that is not the member's way into its series (`series_entries`),
                  except in rows of rankers with `keeps_finished` and Continue Watching rows

The country is the request's, else the member's; with neither, only titles available everywhere
pass. A member unknown to the history (cold start) gets UNKNOWN_USER_MATURITY_MAX: we do not
know whose profile it is, so nothing rated above 13 is shown until we do.

Filters never remove a row, even when it ends empty: dropping short rows is the assembly's
business. What was removed is returned too, so a page can explain itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.candidates import CandidateRow, Ranker
from engine.data.history import History
from engine.request.context import RequestContext

FILTERS: tuple[str, ...] = ("unavailable", "maturity", "finished", "series_entry")
UNKNOWN_USER_MATURITY_MAX = 13


@dataclass(frozen=True)
class Removed:
    """Titles one row lost (int32 title indices, in the row's order), each with the filter
    that removed it: `reasons[i]` is 1 + its position in FILTERS."""

    row_id: str
    titles: np.ndarray
    reasons: np.ndarray  # uint8

    @property
    def by_filter(self) -> dict[str, np.ndarray]:
        """Per filter, the titles it removed."""
        return {f: self.titles[self.reasons == k] for k, f in enumerate(FILTERS, 1)}

    def counts(self) -> dict[str, int]:
        n = np.bincount(self.reasons, minlength=len(FILTERS) + 1).tolist()
        return {f: n[k] for k, f in enumerate(FILTERS, 1)}

    @property
    def total(self) -> int:
        return len(self.titles)


@dataclass(frozen=True)
class RequestMasks:
    """Per-title rejection masks for one request (True = the filter removes the title)."""

    unavailable: np.ndarray
    maturity: np.ndarray
    finished: np.ndarray
    series_entry: np.ndarray
    country: str
    maturity_max: int
    # Per title, the first filter that rejects it (1 + its position in FILTERS), else 0.
    reason: np.ndarray


def request_masks(request: RequestContext, history: History) -> RequestMasks:
    """The masks for this member, country and catalog: computed once per request."""
    user = history.user_index(request.user_id)
    country = request.country or (str(history.user_country[user]) if user >= 0 else "")
    limit = int(history.user_maturity_max[user]) if user >= 0 else UNKNOWN_USER_MATURITY_MAX
    finished = np.zeros(history.n_titles, dtype=bool)
    finished[history.finished(user, request.at_us)] = True
    masks = {
        "unavailable": ~history.available_in(country),
        "maturity": history.maturity > limit,
        "finished": finished,
        "series_entry": ~series_entries(history, user, request.at_us),
    }
    reason = np.zeros(history.n_titles, dtype=np.uint8)
    for k, name in reversed(list(enumerate(FILTERS, 1))):  # the first filter's code wins
        reason[masks[name]] = k
    return RequestMasks(**masks, country=country, maturity_max=limit, reason=reason)


def apply_filters(
    rows: Sequence[CandidateRow],
    request: RequestContext,
    history: History,
    rankers: Mapping[str, Ranker],
    masks: RequestMasks | None = None,
) -> tuple[list[CandidateRow], dict[str, Removed]]:
    """Filter every row; returns the rows (same order, titles in the same order, none dropped)
    and, per row id, what each filter removed. `rankers` maps instance names to rankers; a row
    of an instance not in it is treated as not keeping finished titles. `masks`: the request's
    `request_masks` when the caller has them (they do not depend on the device)."""
    if masks is None:
        masks = request_masks(request, history)
    kept: list[CandidateRow] = []
    removed: dict[str, Removed] = {}
    for row in rows:
        ranker = rankers.get(row.ranker)
        t = row.titles
        reason = masks.reason[t]
        # Watch again shows finished episodes, Continue Watching the one the member is in:
        # the filters after `last` do not apply to their rows.
        if getattr(ranker, "keeps_finished", False):
            last = _MATURITY
        elif row.kind == "continue_watching":
            last = _FINISHED
        else:
            last = _SERIES_ENTRY
        if last < _SERIES_ENTRY:
            reason[reason > last] = 0
        drop = reason > 0
        if drop.any():
            kept.append(row.take(~drop))
            removed[row.row_id] = Removed(row.row_id, t[drop], reason[drop])
        else:
            kept.append(row)
            removed[row.row_id] = Removed(row.row_id, t[:0], reason[:0])
    return kept, removed


# Reason codes (1 + position in FILTERS) after which a row kind keeps its titles.
_MATURITY = 1 + FILTERS.index("maturity")
_FINISHED = 1 + FILTERS.index("finished")
_SERIES_ENTRY = 1 + FILTERS.index("series_entry")


def series_entries(history: History, user: int, before_us: int | None = None) -> np.ndarray:
    """Bool per title: not an episode, or the member's entry into its series (the first
    episode they have not finished). Episode 7 of a series the member never started is not
    proposed: a member starts a series at its start or goes on where they are. This is how the
    simulated world's members behave (a skipped episode is rarely played) and how the logged
    pages were built, so titles outside it would also be outside the training data."""
    order = history.episodes_in_order  # by (series, episode): computed once per History
    out = np.ones(history.n_titles, dtype=bool)
    out[order] = False
    unfinished = np.ones(history.n_titles, dtype=bool)
    if user >= 0:
        unfinished[history.finished(user, before_us)] = False
    cand = order[unfinished[order]]  # the first unfinished episode of each series is its entry
    if len(cand):
        s = history.series[cand]
        out[cand[np.r_[True, s[1:] != s[:-1]]]] = True
    return out
