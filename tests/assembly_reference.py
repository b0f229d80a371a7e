"""The page assembly's rules as a plain Python loop: the reference that
tests/request/test_assembly.py holds engine.request.selectors.assemble_page (one compiled loop)
equal to, and that takes any Python row scorer, so tests can give it scores by hand.

Same rules, same order, same trace as the compiled loop (engine.request.selectors' docstring);
written for reading, not speed: rows are rebuilt as dedupe removes their titles.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from engine.candidates import CandidateRow
from engine.request.layout import DeviceLayout
from engine.request.selectors import (
    AssembledPage,
    AssemblyRules,
    AssemblyTrace,
    CappedRow,
    DuplicateRemoval,
    Pin,
    PinOutcome,
    PlacedRow,
    ShortRow,
    _check_rows,
    pin_matches,
    pins_for,
)

RowScorer = Callable[[Sequence[CandidateRow], Sequence[CandidateRow]], np.ndarray]
"""(rows placed so far, remaining rows as they would show) -> one finite score per remaining
row, higher is better. Called once per stage with every remaining row."""


def assemble_page(
    rows: Sequence[CandidateRow],
    score_rows: RowScorer,
    layout: DeviceLayout,
    rules: AssemblyRules,
    *,
    continuation_mode: bool = False,
) -> AssembledPage:
    """Place rows top-down, one per stage, until the page is full or no row is left."""
    _check_rows(rows)
    current = list(rows)  # each row as dedupe left it (not yet cut to the layout)
    remaining = list(range(len(current)))
    pins = pins_for(rules, continuation_mode)
    # which rows satisfy each pin is settled on the input rows, before any stage
    matches = {
        p: {r.row_id for r, m in zip(rows, pin_matches(p, rows), strict=True) if m} for p in pins
    }
    placed: list[CandidateRow] = []
    pinned_rows: list[CandidateRow] = []
    per_kind: Counter[str] = Counter()
    placed_log: list[PlacedRow] = []
    pin_log: list[PinOutcome] = []
    dup_log: list[DuplicateRemoval] = []
    short_log: list[ShortRow] = []
    cap_log: list[CappedRow] = []
    while True:
        for i in list(remaining):  # caps
            cap = rules.cap_for(current[i].kind)
            if per_kind[current[i].kind] >= cap:
                cap_log.append(CappedRow(current[i].row_id, current[i].kind, cap))
                remaining.remove(i)
        for i in list(remaining):  # short rows
            n = len(current[i].titles)
            if n < max(1, layout.min_row_length):
                short_log.append(ShortRow(current[i].row_id, n))
                remaining.remove(i)
        if not remaining or len(placed) >= layout.rows:
            break
        shown = [_cut(current[i], layout.titles_per_row) for i in remaining]
        raw = _checked(score_rows(tuple(placed), shown), len(shown))
        penalty = penalize_repeated_kinds(placed, shown, rules.diversity_weight)
        eligible, pins, skipped = pin_rows(shown, pins, pinned_rows, matches)
        pin_log += skipped
        adjusted = raw - penalty if eligible is None else np.where(eligible, raw - penalty, -np.inf)
        pick = int(np.argmax(adjusted))  # first of equals: input order breaks ties
        chosen = shown[pick]
        placed.append(chosen)
        per_kind[chosen.kind] += 1
        placed_log.append(
            PlacedRow(chosen.row_id, float(raw[pick]), float(penalty[pick]), eligible is not None)
        )
        if eligible is not None:
            pin_log.append(PinOutcome(str(pins[0]), chosen.row_id))
            pinned_rows.append(chosen)
            pins = pins[1:]
        del remaining[pick]
        if rules.dedupe:
            for i in remaining:
                lost = np.isin(current[i].titles, chosen.titles)
                if lost.any():
                    dup_log.append(
                        DuplicateRemoval(current[i].row_id, chosen.row_id, current[i].titles[lost])
                    )
                    current[i] = current[i].take(~lost)
    pin_log += pin_rows([], pins, pinned_rows, matches)[2]  # pins never reached
    trace = AssemblyTrace(
        placed=tuple(placed_log),
        pins=tuple(pin_log),
        duplicates=tuple(dup_log),
        dropped_short=tuple(short_log),
        capped=tuple(cap_log),
        unplaced=tuple(current[i].row_id for i in remaining),
    )
    scores = np.array([p.score for p in placed_log], dtype=np.float64)
    return AssembledPage(tuple(placed), scores, trace)


def pin_rows(
    rows: Sequence[CandidateRow],
    pins: Sequence[Pin],
    pinned_rows: Sequence[CandidateRow],
    matches: dict[Pin, set[str]],
) -> tuple[np.ndarray | None, tuple[Pin, ...], list[PinOutcome]]:
    """(eligible mask or None when no pin is pending, the pins still pending with the active
    one first, outcomes of the pins passed on the way). A pin already satisfied by a row pinned
    earlier is passed with that row."""
    skipped: list[PinOutcome] = []
    for i, pin in enumerate(pins):
        earlier = [r.row_id for r in pinned_rows if r.row_id in matches[pin]]
        if earlier:
            skipped.append(PinOutcome(str(pin), earlier[0]))
            continue
        mask = np.array([r.row_id in matches[pin] for r in rows], dtype=bool)
        if mask.any():
            return mask, tuple(pins[i:]), skipped
        skipped.append(PinOutcome(str(pin), None))
    return None, (), skipped


def penalize_repeated_kinds(
    placed: Sequence[CandidateRow], rows: Sequence[CandidateRow], weight: float
) -> np.ndarray:
    """`weight` x (rows of its kind already placed + 1 when the row directly above is of it)."""
    if not placed or weight == 0:
        return np.zeros(len(rows))
    placed_per_kind = Counter(r.kind for r in placed)
    above = placed[-1].kind
    return weight * np.array(
        [placed_per_kind[r.kind] + (r.kind == above) for r in rows], dtype=np.float64
    )


# ----- the model-free scorers of engine.request.selectors, in Python ---------------------------


def _head_mean(row: CandidateRow, k: int) -> float:
    total = 0.0  # a plain running sum, as the compiled loop adds
    head = row.scores[:k].tolist()
    for v in head:
        total += v
    return total / len(head) if head else math.nan


def score_rows_by_top_titles(k: int) -> RowScorer:
    def score(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
        return np.array([_head_mean(r, k) for r in rows])

    return score


def score_rows_by_template(template: Sequence[str], k: int) -> RowScorer:
    slots: dict[str, list[int]] = {}
    for i, kind in enumerate(template):
        slots.setdefault(kind, []).append(i)
    last = len(template)

    def score(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
        used = Counter(r.kind for r in placed)
        out = np.empty(len(rows))
        for j, r in enumerate(rows):
            own = slots.get(r.kind, [])
            slot = own[used[r.kind]] if used[r.kind] < len(own) else last
            mean = _head_mean(r, k)
            out[j] = 10.0 * (last - slot) + (math.tanh(mean) if mean == mean else -1.0)
        return out

    return score


def score_rows_by_play_estimate(k: int, decay: float) -> RowScorer:
    """P(a play in the row | reached) over its first k titles, each title's probability the
    logistic of its score, column c weighted decay**c (FeatureStore.row_static's rs_play_est)."""

    def estimate(row: CandidateRow) -> float:
        est, survive, weight = 0.0, 1.0, 1.0
        for s in row.scores[:k].tolist():
            p = 1.0 / (1.0 + math.exp(-min(max(s, -30.0), 30.0)))
            est += survive * weight * p
            survive *= 1.0 - p
            weight *= decay
        return est

    def score(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
        return np.array([estimate(r) for r in rows])

    return score


def _cut(row: CandidateRow, n: int) -> CandidateRow:
    return row if len(row.titles) <= n else row.take(np.arange(n))


def _checked(scores: np.ndarray, n: int) -> np.ndarray:
    out = np.asarray(scores, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"the row scorer returned shape {out.shape} for {n} rows; expected ({n},)")
    if not np.isfinite(out).all():
        raise ValueError(f"the row scorer returned non-finite scores: {out[~np.isfinite(out)]}")
    return out
