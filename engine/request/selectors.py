"""Page assembly (the selectors stage): scored candidate rows in, the page's rows out.

Greedy and stage-wise: each stage scores every remaining row given the rows already placed
(one batch call of the row scorer, so the page model can use "similar to the rows above" as a
feature), then places the best eligible one. Between stages the selectors below keep the page
legal, each in one place:

    cap_rows_per_kind          a kind that reached its cap leaves the pool
    drop_short_rows            a row shorter than layout.min_row_length leaves the pool
    RowPool.shown              each row is cut to layout.titles_per_row (what the screen shows)
    penalize_repeated_kinds    the diversity term subtracted from the scores
    pin_rows                   while a pin is pending, only its rows are eligible
    dedupe_titles_across_rows  titles of the row just placed leave every remaining row

The rows' titles live end to end in a `RowPool` for the whole loop: dedupe masks titles out in
one compiled pass (numba) instead of rebuilding row objects, and a row is built as it would
show only when something reads it. At 20 rows and 9 stages a page, the per-row numpy calls and
objects this replaces cost more than the arithmetic (docs/page_model.md).

`assemble_page` is the reference loop and serves any RowScorer. The engine's own scorers
(engine.pipeline.RowModelScorer, CascadeScorer) run the same loop as one compiled pass
(`RowModelScorer.assemble`), which tests/test_pipeline.py checks against this one, trace and
all: a change to a selector here must be made there too.

The page is full at layout.rows rows. Because rows are placed top-down, a title shared by
several rows stays in the highest-placed one. Every input row ends in exactly one outcome of the
trace: placed, capped, dropped as short, or unplaced (the page was full).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, overload

import numba
import numpy as np

from engine.candidates import CandidateRow
from engine.errors import ConfigError
from engine.request.layout import DeviceLayout

CONTINUE_WATCHING = "continue_watching"
# Kinds with several rows per ranker need a cap; the same figures as AssemblyConfig's default.
DEFAULT_MAX_ROWS_PER_KIND: Mapping[str, int] = MappingProxyType(
    {"because_you_watched": 3, "pvr_genre": 4}
)
# Kinds not listed get this cap: two instances of one ranker type (trending_24h, trending_7d)
# can both show, while a plug-in that proposes twenty rows of one kind cannot fill the page.
DEFAULT_MAX_ROWS_OTHER_KINDS = 2

RowScorer = Callable[[Sequence[CandidateRow], Sequence[CandidateRow]], np.ndarray]
"""(rows placed so far, remaining rows as they would show) -> one finite score per remaining
row, higher is better. Called once per stage with every remaining row."""


@dataclass(frozen=True)
class AssemblyRules:
    """How rows become a page; the engine config's `[assembly]` table builds one
    (engine.config.AssemblyConfig.rules())."""

    # Ranker instance names pinned to the top, in this order, whenever they have a row.
    pinned: tuple[str, ...] = ()
    # In continuation mode a continue_watching row goes above everything, configured pins too.
    pin_continue_watching: bool = True
    # Cap per kind; kinds not listed get `max_rows_other_kinds`. Pinned rows obey caps too.
    max_rows_per_kind: Mapping[str, int] = field(default_factory=lambda: DEFAULT_MAX_ROWS_PER_KIND)
    max_rows_other_kinds: int = DEFAULT_MAX_ROWS_OTHER_KINDS
    dedupe: bool = True
    # In the row scorer's units: subtracted once per row of the same kind already placed, and
    # once more when the row directly above is of that kind.
    diversity_weight: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "pinned", tuple(self.pinned))
        object.__setattr__(
            self, "max_rows_per_kind", MappingProxyType(dict(self.max_rows_per_kind))
        )
        caps = {**self.max_rows_per_kind, "(other kinds)": self.max_rows_other_kinds}
        bad = {k: v for k, v in caps.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"max rows per kind must be integers >= 0, got {bad}")
        if not np.isfinite(self.diversity_weight) or self.diversity_weight < 0:
            raise ConfigError(f"diversity_weight must be finite and >= 0: {self.diversity_weight}")

    def cap_for(self, kind: str) -> int:
        """How many rows of `kind` a page may hold."""
        return self.max_rows_per_kind.get(kind, self.max_rows_other_kinds)


# ----- the trace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedRow:
    row_id: str
    score: float  # the row scorer's score
    penalty: float  # the diversity term subtracted before choosing
    pinned: bool


@dataclass(frozen=True)
class DuplicateRemoval:
    row_id: str  # the row that lost the titles
    lost_to: str  # the placed row that kept them
    titles: np.ndarray  # title indices (into History)


@dataclass(frozen=True)
class ShortRow:
    row_id: str
    length: int  # titles left when it was dropped


@dataclass(frozen=True)
class CappedRow:
    row_id: str
    kind: str
    cap: int


@dataclass(frozen=True)
class PinOutcome:
    pin: str  # "ranker=<name>" or "kind=continue_watching"
    row_id: str | None  # None: no eligible row of it (or the page filled first)


@dataclass(frozen=True)
class AssemblyTrace:
    """What each selector did, in the order it happened."""

    placed: tuple[PlacedRow, ...] = ()
    pins: tuple[PinOutcome, ...] = ()
    duplicates: tuple[DuplicateRemoval, ...] = ()
    dropped_short: tuple[ShortRow, ...] = ()
    capped: tuple[CappedRow, ...] = ()
    unplaced: tuple[str, ...] = ()  # rows still eligible when the page was full

    def to_dict(self, title_ids: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-able form; with `title_ids` (History.title_ids) titles are given by id."""

        def titles(idx: np.ndarray) -> list[Any]:
            return (idx if title_ids is None else title_ids[idx]).tolist()

        return {
            "placed": [
                {"row_id": p.row_id, "score": p.score, "penalty": p.penalty, "pinned": p.pinned}
                for p in self.placed
            ],
            "pins": [{"pin": p.pin, "row_id": p.row_id} for p in self.pins],
            "duplicates": [
                {"row_id": d.row_id, "lost_to": d.lost_to, "titles": titles(d.titles)}
                for d in self.duplicates
            ],
            "dropped_short": [{"row_id": s.row_id, "length": s.length} for s in self.dropped_short],
            "capped": [{"row_id": c.row_id, "kind": c.kind, "cap": c.cap} for c in self.capped],
            "unplaced": list(self.unplaced),
        }


@dataclass(frozen=True)
class AssembledPage:
    """The page's rows in order, each cut to the layout, with the scorer's score for each."""

    rows: tuple[CandidateRow, ...]
    scores: np.ndarray  # float64, one per row: the scorer's score, before the diversity term
    trace: AssemblyTrace = field(default_factory=AssemblyTrace)


# ----- selectors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One pending pin: the first remaining row whose `attr` equals `value` goes next."""

    attr: Literal["ranker", "kind"]
    value: str

    def matches(self, rows: Sequence[CandidateRow]) -> np.ndarray:
        return np.fromiter((getattr(r, self.attr) == self.value for r in rows), bool, len(rows))

    def __str__(self) -> str:
        return f"{self.attr}={self.value}"


def pins_for(rules: AssemblyRules, continuation_mode: bool) -> tuple[Pin, ...]:
    """The pins of one request, top first."""
    cw = (
        (Pin("kind", CONTINUE_WATCHING),)
        if continuation_mode and rules.pin_continue_watching
        else ()
    )
    return cw + tuple(Pin("ranker", name) for name in rules.pinned)


def pin_rows(
    rows: Sequence[CandidateRow], pins: Sequence[Pin], pinned_rows: Sequence[CandidateRow]
) -> tuple[np.ndarray | None, tuple[Pin, ...], list[PinOutcome]]:
    """Which rows may go next: the rows of the first pending pin that still has one.

    Returns (eligible mask or None when no pin is pending, the pins still pending with the
    active one first, outcomes of the pins skipped on the way). A pin whose ranker already
    placed a row through an earlier pin (continuation mode pins that row by kind) is satisfied
    by it rather than pinning a second row."""
    skipped: list[PinOutcome] = []
    for i, pin in enumerate(pins):
        earlier = [r.row_id for r in pinned_rows if getattr(r, pin.attr) == pin.value]
        if earlier:
            skipped.append(PinOutcome(str(pin), earlier[0]))
            continue
        mask = pin.matches(rows)
        if mask.any():
            return mask, tuple(pins[i:]), skipped
        skipped.append(PinOutcome(str(pin), None))
    return None, (), skipped


def cap_rows_per_kind(
    rows: Sequence[CandidateRow], placed_per_kind: Mapping[str, int], rules: AssemblyRules
) -> tuple[list[int], list[CappedRow]]:
    """Positions (in `rows`) of the rows whose kind is still under its cap, and the others."""
    kept: list[int] = []
    capped: list[CappedRow] = []
    for k, row in enumerate(rows):
        cap = rules.cap_for(row.kind)
        if placed_per_kind.get(row.kind, 0) >= cap:
            capped.append(CappedRow(row.row_id, row.kind, cap))
        else:
            kept.append(k)
    return kept, capped


def drop_short_rows(
    rows: Sequence[CandidateRow], lengths: Sequence[int], min_length: int
) -> tuple[list[int], list[ShortRow]]:
    """Positions of the rows with at least `min_length` titles (`lengths`: titles left in each
    row), and the others; an empty row never shows."""
    floor = max(1, min_length)
    kept = [k for k, n in enumerate(lengths) if n >= floor]
    dropped = [ShortRow(r.row_id, n) for r, n in zip(rows, lengths, strict=True) if n < floor]
    return kept, dropped


def penalize_repeated_kinds(
    placed: Sequence[CandidateRow], rows: Sequence[CandidateRow], weight: float
) -> np.ndarray:
    """The diversity term per row: `weight` x (rows of its kind already placed + 1 when the row
    directly above is of its kind). A second row of a kind right under the first pays 2 x weight,
    the fifth of a run 5 x weight, so a run of one kind needs ever larger score leads."""
    if not placed or weight == 0:
        return np.zeros(len(rows))
    placed_per_kind = Counter(r.kind for r in placed)
    above = placed[-1].kind
    counts = [placed_per_kind[r.kind] + (r.kind == above) for r in rows]
    return weight * np.array(counts, dtype=np.float64)


class RowPool:
    """One page's candidate rows end to end (`titles`, `scores`, row i at starts[i]:starts[i+1])
    with a mask of the titles dedupe has not removed. Row names, kinds and evidence stay on the
    CandidateRows in `rows`; `shown(i)` builds row i as it would show now."""

    def __init__(self, rows: Sequence[CandidateRow], titles_per_row: int) -> None:
        self.rows = list(rows)
        self.titles_per_row = titles_per_row
        self.lengths = np.fromiter((len(r.titles) for r in self.rows), np.int64, len(self.rows))
        self.starts = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        if self.rows:
            self.titles = np.concatenate([r.titles for r in self.rows])
            self.scores = np.concatenate([r.scores for r in self.rows]).astype(np.float32)
        else:
            self.titles, self.scores = np.empty(0, np.int32), np.empty(0, np.float32)
        self.alive = np.ones(len(self.titles), dtype=bool)
        self._seen = np.zeros(int(self.titles.max(initial=-1)) + 1, dtype=bool)  # scratch
        self._shown: dict[int, CandidateRow] = {}

    def shown(self, i: int) -> CandidateRow:
        """Row i as it would show now: its first `titles_per_row` titles left after dedupe."""
        got = self._shown.get(i)
        if got is None:
            row, n = self.rows[i], self.titles_per_row
            if self.lengths[i] == len(row.titles):
                got = row if len(row.titles) <= n else _head(row, n)
            else:
                got = row.take(np.flatnonzero(self.alive[self.starts[i] : self.starts[i + 1]])[:n])
            self._shown[i] = got
        return got

    def remove_titles(
        self, rows: Sequence[int], titles: np.ndarray
    ) -> list[tuple[int, np.ndarray]]:
        """Remove `titles` from each of `rows` (order kept); (row, the titles it lost) for each
        row that lost some, in the order of `rows`."""
        order = np.asarray(rows, dtype=np.int64)
        slots, lost = _remove_titles(
            self.starts, self.titles, self.alive, self.lengths, order, titles, self._seen
        )
        out = []
        ends = np.cumsum(lost).tolist()
        for k in np.flatnonzero(lost).tolist():
            i = int(order[k])
            self._shown.pop(i, None)  # built again when read
            out.append((i, self.titles[slots[ends[k] - lost[k] : ends[k]]]))
        return out


@numba.njit(cache=True, nogil=True)
def _remove_titles(starts, titles, alive, lengths, rows, remove, seen):
    """Masks out every title of `remove` in `rows`: (the removed slots, row by row; how many
    each of `rows` lost)."""
    for t in remove:
        seen[t] = True
    slots = np.empty(starts[-1], dtype=np.int64)
    lost = np.zeros(len(rows), dtype=np.int64)
    n = 0
    for j in range(len(rows)):
        r = rows[j]
        for k in range(starts[r], starts[r + 1]):
            if alive[k] and seen[titles[k]]:
                alive[k] = False
                slots[n] = k
                n += 1
                lost[j] += 1
        lengths[r] -= lost[j]
    for t in remove:
        seen[t] = False
    return slots[:n], lost


class ShownRows(Sequence[CandidateRow]):
    """A stage's remaining rows as they would show, each built only when read. Row scorers that
    read the pool's arrays (engine.pipeline.RowModelScorer) use `pool` and `positions` instead."""

    def __init__(self, pool: RowPool, positions: np.ndarray) -> None:
        self.pool = pool
        self.positions = positions  # int64 row positions in the pool

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[CandidateRow]:
        return (self.pool.shown(i) for i in self.positions.tolist())

    @overload
    def __getitem__(self, k: int) -> CandidateRow: ...
    @overload
    def __getitem__(self, k: slice) -> list[CandidateRow]: ...
    def __getitem__(self, k: int | slice) -> CandidateRow | list[CandidateRow]:
        if isinstance(k, slice):
            return [self.pool.shown(i) for i in self.positions[k].tolist()]
        return self.pool.shown(int(self.positions[k]))


def dedupe_titles_across_rows(
    pool: RowPool, rows: Sequence[int], placed: CandidateRow
) -> list[DuplicateRemoval]:
    """Remove the titles of the row just placed from every one of `rows` (pool positions)."""
    return [
        DuplicateRemoval(pool.rows[i].row_id, placed.row_id, titles)
        for i, titles in pool.remove_titles(rows, placed.titles)
    ]


# ----- the greedy loop ------------------------------------------------------------------------


def assemble_page(
    rows: Sequence[CandidateRow],
    score_rows: RowScorer,
    layout: DeviceLayout,
    rules: AssemblyRules,
    *,
    continuation_mode: bool = False,
) -> AssembledPage:
    """Place rows top-down, one per stage, until the page is full or no row is left.

    `rows` come from the page model with titles already in display order; their input order is
    the tie-break between equal row scores. `continuation_mode`: the member is in the middle of
    something, so a continue_watching row is pinned first (when `rules.pin_continue_watching`).
    """
    _check_rows(rows)
    pool = RowPool(rows, layout.titles_per_row)
    remaining = list(range(len(pool.rows)))  # pool positions, in input order
    pins = pins_for(rules, continuation_mode)
    placed: list[CandidateRow] = []
    pinned_rows: list[CandidateRow] = []
    per_kind: Counter[str] = Counter()
    placed_log: list[PlacedRow] = []
    pin_log: list[PinOutcome] = []
    dup_log: list[DuplicateRemoval] = []
    short_log: list[ShortRow] = []
    cap_log: list[CappedRow] = []
    while True:
        kept, capped = cap_rows_per_kind([pool.rows[i] for i in remaining], per_kind, rules)
        remaining = [remaining[k] for k in kept]
        kept, short = drop_short_rows(
            [pool.rows[i] for i in remaining],
            pool.lengths[remaining].tolist(),
            layout.min_row_length,
        )
        remaining = [remaining[k] for k in kept]
        cap_log += capped
        short_log += short
        if not remaining or len(placed) >= layout.rows:
            break
        index = np.array(remaining, dtype=np.int64)
        raw = _checked_scores(score_rows(tuple(placed), ShownRows(pool, index)), len(index))
        candidates = [pool.rows[i] for i in remaining]  # names and kinds; dedupe keeps them
        penalty = penalize_repeated_kinds(placed, candidates, rules.diversity_weight)
        eligible, pins, skipped = pin_rows(candidates, pins, pinned_rows)
        pin_log += skipped
        adjusted = raw - penalty if eligible is None else np.where(eligible, raw - penalty, -np.inf)
        pick = int(np.argmax(adjusted))  # first of equals: input order breaks ties
        chosen = pool.shown(remaining[pick])
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
            dup_log += dedupe_titles_across_rows(pool, remaining, chosen)
    # Pins never reached: their rows were removed, or the page filled up first.
    pin_log += pin_rows([], pins, pinned_rows)[2]
    trace = AssemblyTrace(
        placed=tuple(placed_log),
        pins=tuple(pin_log),
        duplicates=tuple(dup_log),
        dropped_short=tuple(short_log),
        capped=tuple(cap_log),
        unplaced=tuple(pool.rows[i].row_id for i in remaining),
    )
    scores = np.array([p.score for p in placed_log], dtype=np.float64)
    return AssembledPage(tuple(placed), scores, trace)


def score_rows_by_top_titles(k: int) -> RowScorer:
    """A model-free scorer: the mean of each row's first `k` title scores. For the fallback
    page and for tests; it ignores the rows already placed."""

    def score(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
        return np.array([sum(r.scores[:k].tolist()) / min(k, len(r.scores)) for r in rows])

    return score


def score_rows_by_template(template: Sequence[str], k: int) -> RowScorer:
    """A fixed editorial order of row kinds instead of the row model: a row's score is set by
    the template slot it would take (the next unused slot of its kind; kinds not in the template
    come after every slot), ties broken by the mean of its first `k` title scores (squashed
    into (-1, 1) so they never cross a slot)."""
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
            head = r.scores[:k]
            tie = float(np.tanh(head.mean())) if len(head) else -1.0
            out[j] = 10.0 * (last - slot) + tie
        return out

    return score


def _head(row: CandidateRow, n: int) -> CandidateRow:
    # Built directly rather than with dataclasses.replace: this runs for every long row.
    progress = None if row.progress is None else row.progress[:n]
    titles, scores = row.titles[:n], row.scores[:n]
    return CandidateRow(
        row.row_id, row.ranker, row.kind, row.title, row.evidence, titles, scores, progress
    )


def _checked_scores(scores: Any, n: int) -> np.ndarray:
    out = np.asarray(scores, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"the row scorer returned shape {out.shape} for {n} rows; expected ({n},)")
    if not np.isfinite(out).all():
        raise ValueError(f"the row scorer returned non-finite scores: {out[~np.isfinite(out)]}")
    return out


def _check_rows(rows: Iterable[CandidateRow]) -> None:
    """Fail closed on programmer errors: repeated row ids, or a title twice in one row."""
    rows = list(rows)
    ids = Counter(r.row_id for r in rows)
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise ValueError(f"row ids must be unique on a page; repeated: {repeated}")
    if not rows:
        return
    titles = np.concatenate([r.titles for r in rows]).astype(np.int64)
    if len(titles) == 0:
        return
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), [len(r.titles) for r in rows])
    keys = owner * (int(titles.max()) + 1) + titles
    keys.sort()
    if (keys[1:] == keys[:-1]).any():
        bad = [r.row_id for r in rows if len(np.unique(r.titles)) != len(r.titles)]
        raise ValueError(f"a title appears twice within row(s) {bad}; rankers must dedupe")
