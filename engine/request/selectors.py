"""Page assembly (the selectors stage): scored candidate rows in, the page's rows out.

Greedy and stage-wise: each stage scores every remaining row given the rows already placed
(one batch of the row scorer, so the page model can use "similar to the rows above" as a
feature), then places the best eligible one. Each selector keeps the page legal in one place,
as a small compiled function (numba):

    cap_rows                   a kind that reached its cap leaves the pool
    drop_short_rows            a row shorter than layout.min_row_length leaves the pool
    score_rows                 the row scorer's score of every remaining row as it would show
    penalize_repeated_kinds    the diversity term subtracted from the scores
    pin_rows                   while a pin is pending, only its rows are eligible
    dedupe_titles_across_rows  titles of the row just placed leave every remaining row

`assemble_rows` is the greedy loop over them, the whole page in one compiled pass: at 20 rows
and 9 stages a page, Python per-stage calls and row objects cost more than the arithmetic
(docs/page_model.md). `assemble_page` is the entry point: it lays the rows end to end in a
`RowPool`, runs the loop and turns its `Assembly` into the page's rows and trace. The row
scorer is data, not a callback (`RowScorer`, chosen once: by the engine at load from
`[page] row_order`): the row model, the cascade play estimate, a fixed template of kinds, or
the mean of the top titles (the fallback page). tests/assembly_reference.py keeps the same
rules as a plain Python loop, and a property test holds the two equal.

The page is full at layout.rows rows. Because rows are placed top-down, a title shared by
several rows stays in the highest-placed one. Every input row ends in exactly one outcome of the
trace: placed, capped, dropped as short, or unplaced (the page was full).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numba
import numpy as np

from engine.candidates import CandidateRow
from engine.errors import ConfigError
from engine.request.layout import DeviceLayout
from engine.request.scorers import Forest, _forest_raw

CONTINUE_WATCHING = "continue_watching"
# Kinds with several rows per ranker need a cap; the same figures as AssemblyConfig's default.
DEFAULT_MAX_ROWS_PER_KIND: Mapping[str, int] = MappingProxyType(
    {"because_you_watched": 3, "pvr_genre": 4}
)
# Kinds not listed get this cap: two instances of one ranker type (trending_24h, trending_7d)
# can both show, while a plug-in that proposes twenty rows of one kind cannot fill the page.
DEFAULT_MAX_ROWS_OTHER_KINDS = 2


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


# ----- the row scorer -------------------------------------------------------------------------

ScorerMethod = Literal["learned", "cascade", "template", "top_titles"]
_METHODS: tuple[ScorerMethod, ...] = ("learned", "cascade", "template", "top_titles")
_LEARNED, _CASCADE, _TEMPLATE, _TOP_TITLES = range(4)
_NO_TREES = Forest("").arrays  # the row model's arrays, empty: the same compiled types


@dataclass(frozen=True, eq=False)
class RowScorer:
    """How the assembly scores the remaining rows at each stage (higher is better), read by
    the compiled loop. Build one with the functions below."""

    method: ScorerMethod
    head: int | None = None  # titles of a row its score reads; None: layout.visible_titles
    template: tuple[str, ...] = ()  # "template": kinds in page order
    trees: tuple[np.ndarray, ...] = _NO_TREES  # "learned": the row model (PageModel.row_trees)
    colmap: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    zero: float = 0.0


def score_rows_by_row_model(
    trees: tuple[np.ndarray, ...], colmap: np.ndarray, zero: float
) -> RowScorer:
    """The page model's row model on each row's features at this stage (`RowFeatures`)."""
    return RowScorer("learned", trees=trees, colmap=np.asarray(colmap, dtype=np.int64), zero=zero)


def score_rows_by_play_estimate() -> RowScorer:
    """Rows by the title model alone: P(a play in the row | reached) of the row as it would
    show (`rs_play_est`), the order that is optimal under the cascade browsing model when the
    title probabilities are right (docs/page_model.md). `[page] row_order = "cascade"`."""
    return RowScorer("cascade")


def score_rows_by_top_titles(k: int | None = None) -> RowScorer:
    """A model-free scorer: the mean of each row's first `k` title scores as it would show
    (None: layout.visible_titles). For the fallback page; it ignores the rows already placed."""
    return RowScorer("top_titles", head=k)


def score_rows_by_template(template: Sequence[str], k: int | None = None) -> RowScorer:
    """A fixed editorial order of row kinds instead of the row model: a row's score is set by
    the template slot it would take (the next unused slot of its kind; kinds not in the template
    come after every slot), ties broken by tanh of the float64 mean of its first `k` title
    scores (None: layout.visible_titles; in (-1, 1), so they never cross a slot).
    `[page] row_order = "template"`."""
    return RowScorer("template", head=k, template=tuple(template))


@dataclass(frozen=True)
class RowFeatures:
    """One request's inputs of the "learned" and "cascade" scorers, row i for the assembly's
    rows[i] (engine.pipeline builds it from the title model's output)."""

    static: np.ndarray  # (rows, row features) float32: the row-model matrix, stage columns unset
    state_cols: np.ndarray  # int64 (6,): where rs_top ... pl_same_kind_above go in `static`
    kinds: np.ndarray  # int64 (rows,): the feature store's kind code of each row
    decay: float  # the device's column decay (FeatureStore.col_decay)
    genre_unit: np.ndarray  # float32 (titles, genres): FeatureStore.title_genre_unit


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


# ----- the entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One pin: the first remaining row whose `attr` equals `value` goes next."""

    attr: Literal["ranker", "kind"]
    value: str

    def __str__(self) -> str:
        return f"{self.attr}={self.value}"


def pin_matches(pin: Pin, rows: Sequence[CandidateRow]) -> list[bool]:
    """The rows that satisfy `pin`. A ranker that proposes a row under its own name (Top Picks
    beside its "More Picks" rows) has that main row pinned, not whichever of its rows scores
    best; a ranker of keyed rows only (Because you watched X) has any of them pinned."""
    match = [getattr(r, pin.attr) == pin.value for r in rows]
    if pin.attr == "ranker":
        main = [r.row_id == pin.value for r in rows]
        if any(main):
            return main
    return match


def pins_for(rules: AssemblyRules, continuation_mode: bool) -> tuple[Pin, ...]:
    """The pins of one request, top first."""
    cw = (
        (Pin("kind", CONTINUE_WATCHING),)
        if continuation_mode and rules.pin_continue_watching
        else ()
    )
    return cw + tuple(Pin("ranker", name) for name in rules.pinned)


class RowPool:
    """One page's candidate rows end to end (`titles`, `scores`, row i at starts[i]:starts[i+1])
    with a mask of the titles dedupe has not removed and each row's count of them (`alive`,
    `lengths`: the compiled loop updates both). Row names, kinds and evidence stay on the
    CandidateRows in `rows`; `shown(i)` builds row i as it shows."""

    def __init__(self, rows: Sequence[CandidateRow], titles_per_row: int) -> None:
        self.rows = list(rows)
        self.titles_per_row = titles_per_row
        self.lengths = np.fromiter((len(r.titles) for r in self.rows), np.int64, len(self.rows))
        self.starts = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        if self.rows:
            self.titles = np.concatenate([r.titles for r in self.rows]).astype(np.int32)
            self.scores = np.concatenate([r.scores for r in self.rows]).astype(np.float32)
        else:
            self.titles, self.scores = np.empty(0, np.int32), np.empty(0, np.float32)
        self.alive = np.ones(len(self.titles), dtype=bool)
        self.seen = np.zeros(int(self.titles.max(initial=-1)) + 1, dtype=bool)  # scratch

    def shown(self, i: int) -> CandidateRow:
        """Row i as it shows: its first `titles_per_row` titles left after dedupe."""
        row, n = self.rows[i], self.titles_per_row
        if self.lengths[i] == len(row.titles):
            return row if len(row.titles) <= n else _head(row, n)
        return row.take(np.flatnonzero(self.alive[self.starts[i] : self.starts[i + 1]])[:n])

    def arrays(self) -> _Pool:
        return _Pool(self.starts, self.titles, self.scores, self.alive, self.lengths, self.seen)


def assemble_page(
    rows: Sequence[CandidateRow],
    scorer: RowScorer,
    layout: DeviceLayout,
    rules: AssemblyRules,
    *,
    continuation_mode: bool = False,
    features: RowFeatures | None = None,
) -> AssembledPage:
    """Place rows top-down, one per stage, until the page is full or no row is left.

    `rows` come from the page model with titles already in display order; their input order is
    the tie-break between equal row scores. `continuation_mode`: the member is in the middle of
    something, so a continue_watching row is pinned first (when `rules.pin_continue_watching`).
    `features`: the "learned" and "cascade" scorers' inputs, row i for rows[i]. Fails closed
    (ValueError) on repeated row ids, a title twice in one row, or a non-finite row score.
    """
    _check_rows(rows)
    pool = RowPool(rows, layout.titles_per_row)
    n = len(pool.rows)
    kind_names = list(dict.fromkeys(r.kind for r in pool.rows))
    kind_ids = np.array([kind_names.index(r.kind) for r in pool.rows], dtype=np.int64)
    caps = np.array([rules.cap_for(k) for k in kind_names], dtype=np.int64)
    pins = pins_for(rules, continuation_mode)
    pin_match = np.array([pin_matches(p, pool.rows) for p in pins], dtype=np.bool_).reshape(
        len(pins), n
    )
    got = assemble_rows(
        pool.arrays(),
        _scoring(scorer, pool, layout, kind_names, features),
        _Rules(
            kind_ids,
            caps,
            pin_match,
            layout.rows,
            max(1, layout.min_row_length),
            layout.titles_per_row,
            float(rules.diversity_weight),
            rules.dedupe,
        ),
    )
    if len(got.bad_scores):
        bad = [pool.rows[i].row_id for i in got.bad_scores.tolist()]
        raise ValueError(f"the row scorer ({scorer.method}) returned non-finite scores for {bad}")
    return _assembled(pool, pins, kind_names, caps, got)


def _scoring(
    scorer: RowScorer,
    pool: RowPool,
    layout: DeviceLayout,
    kind_names: list[str],
    features: RowFeatures | None,
) -> _Scoring:
    """The compiled loop's view of the scorer; the model-free scorers get empty features."""
    head = layout.visible_titles if scorer.head is None else scorer.head
    head = min(head, layout.titles_per_row)
    if features is None:
        if scorer.method in ("learned", "cascade"):
            raise ValueError(f"the {scorer.method} row scorer needs the rows' RowFeatures")
        n = len(pool.rows)
        features = RowFeatures(
            np.zeros((n, 0), dtype=np.float32),
            np.zeros(6, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            1.0,
            np.zeros((len(pool.seen), 0), dtype=np.float32),
        )
    # "template": per kind of this page, the score of its 1st, 2nd, ... row (0 past its slots)
    width = 1 + max((scorer.template.count(k) for k in kind_names), default=0)
    slots = np.zeros((len(kind_names), width))
    last = len(scorer.template)
    for i, kind in enumerate(kind_names):
        own = [10.0 * (last - j) for j, t in enumerate(scorer.template) if t == kind]
        slots[i, : len(own)] = own
    return _Scoring(
        _METHODS.index(scorer.method),
        head,
        float(features.decay),
        features.genre_unit,
        features.kinds,
        np.ascontiguousarray(features.static, dtype=np.float32),
        features.state_cols,
        scorer.colmap,
        scorer.trees,
        float(scorer.zero),
        slots,
    )


def _assembled(
    pool: RowPool, pins: Sequence[Pin], kind_names: list[str], caps: np.ndarray, got: Assembly
) -> AssembledPage:
    """The AssembledPage and its trace, from what the compiled loop did."""
    rows = pool.rows
    shown = [pool.shown(i) for i in got.placed.tolist()]  # placed rows: dedupe left them be
    ends = got.duplicates[:, 2].tolist()
    trace = AssemblyTrace(
        placed=tuple(
            PlacedRow(r.row_id, s, p, q)
            for r, s, p, q in zip(
                shown, got.raw.tolist(), got.penalty.tolist(), got.pinned.tolist(), strict=True
            )
        ),
        pins=tuple(
            PinOutcome(str(pins[p]), rows[r].row_id if r >= 0 else None)
            for p, r in got.pins.tolist()
        ),
        duplicates=tuple(
            DuplicateRemoval(rows[r].row_id, rows[to].row_id, pool.titles[got.duplicate_slots[a:b]])
            for (r, to, _), a, b in zip(got.duplicates.tolist(), [0, *ends][:-1], ends, strict=True)
        ),
        dropped_short=tuple(ShortRow(rows[r].row_id, n) for r, n in got.short.tolist()),
        capped=tuple(
            CappedRow(rows[r].row_id, rows[r].kind, int(caps[kind_names.index(rows[r].kind)]))
            for r in got.capped.tolist()
        ),
        unplaced=tuple(rows[i].row_id for i in got.unplaced.tolist()),
    )
    return AssembledPage(tuple(shown), got.raw.astype(np.float64), trace)


# ----- the compiled loop and its selectors ----------------------------------------------------


class _Pool(NamedTuple):
    """RowPool's arrays (`alive`, `lengths` and the `seen` scratch are written)."""

    starts: np.ndarray
    titles: np.ndarray
    scores: np.ndarray
    alive: np.ndarray
    lengths: np.ndarray
    seen: np.ndarray


class _Scoring(NamedTuple):
    """A RowScorer with one request's RowFeatures, as arrays."""

    method: int  # _LEARNED, _CASCADE, _TEMPLATE or _TOP_TITLES
    head: int  # titles per row the scores read
    decay: float
    genre_unit: np.ndarray
    kinds: np.ndarray
    static: np.ndarray
    state_cols: np.ndarray
    colmap: np.ndarray
    trees: tuple[np.ndarray, ...]
    zero: float
    slots: np.ndarray  # "template": (page kind, rows of it placed) -> slot score


class _Rules(NamedTuple):
    """AssemblyRules and the layout for one page's rows, as arrays."""

    kind_ids: np.ndarray  # each row's kind, numbered for this page
    caps: np.ndarray  # per kind
    pin_match: np.ndarray  # (pin, row): the row satisfies the pin
    page_rows: int
    min_length: int
    titles_per_row: int
    weight: float  # the diversity term's
    dedupe: bool


class Assembly(NamedTuple):
    """What the compiled loop did, in order (pool row positions throughout)."""

    placed: np.ndarray  # int64: the page's rows, top first
    raw: np.ndarray  # float64: each placed row's score, before the diversity term
    penalty: np.ndarray  # float64: its diversity term
    pinned: np.ndarray  # bool: placed by a pin
    capped: np.ndarray  # int64: rows over their kind's cap
    short: np.ndarray  # int64 (n, 2): (row, titles left) of rows dropped as short
    pins: np.ndarray  # int64 (pins, 2): (pin, the row that satisfied it or -1)
    duplicates: np.ndarray  # int64 (n, 3): (row, lost to row, end of its slots)
    duplicate_slots: np.ndarray  # int64: the pool slots dedupe removed, row after row
    unplaced: np.ndarray  # int64: rows still eligible when the page was full
    bad_scores: np.ndarray  # int64: rows with a non-finite score (the loop stopped there)


@numba.njit(cache=True, nogil=True)
def assemble_rows(pool, scoring, rules):
    """The greedy loop over `pool`'s rows. Each stage, in order: `cap_rows`, `drop_short_rows`;
    the page is done when it is full or no row is left; `score_rows`,
    `penalize_repeated_kinds`, `pin_rows`; the best eligible row is placed (first of equals)
    and `dedupe_titles_across_rows` removes its shown titles from the rest. Returns an
    `Assembly`."""
    n, n_pins = len(rules.kind_ids), rules.pin_match.shape[0]
    n_genres = scoring.genre_unit.shape[1]
    remaining = np.arange(n)
    n_rem = n
    per_kind = np.zeros(len(rules.caps), dtype=np.int64)
    placed = np.empty(n, dtype=np.int64)
    raw_of = np.empty(n)
    penalty_of = np.empty(n)
    pinned_flag = np.zeros(n, dtype=np.bool_)
    n_placed = 0
    placed_mask = np.zeros(scoring.genre_unit.shape[0], dtype=np.bool_)
    placed_genre = np.zeros((n, n_genres))
    placed_kinds = np.empty(n, dtype=np.int64)
    capped = np.empty(n, dtype=np.int64)
    short = np.empty((n, 2), dtype=np.int64)
    n_capped = n_short = 0
    pin_log = np.empty((n_pins, 2), dtype=np.int64)
    n_pin_log = 0
    pinned = np.empty(n, dtype=np.int64)
    n_pinned = 0
    pin_at = 0  # the first pin still pending
    dups = np.empty((n * n, 3), dtype=np.int64)
    dup_slots = np.empty(len(pool.titles), dtype=np.int64)
    n_dup = n_dup_slots = 0
    shown = np.empty(len(pool.titles), dtype=pool.titles.dtype)
    bad = np.empty(0, dtype=np.int64)
    while True:
        n_rem, n_capped = cap_rows(
            remaining, n_rem, per_kind, rules.kind_ids, rules.caps, capped, n_capped
        )
        n_rem, n_short = drop_short_rows(
            remaining, n_rem, pool.lengths, rules.min_length, short, n_short
        )
        if n_rem == 0 or n_placed >= rules.page_rows:
            break
        rows = remaining[:n_rem].copy()
        raw, cents = score_rows(
            pool,
            scoring,
            rows,
            rules.kind_ids,
            per_kind,
            placed_mask,
            placed_genre[:n_placed],
            placed_kinds[:n_placed],
        )
        finite = np.isfinite(raw)
        if not finite.all():
            bad = rows[~finite]
            break
        above = rules.kind_ids[placed[n_placed - 1]] if n_placed else -1
        penalty = penalize_repeated_kinds(rows, rules.kind_ids, per_kind, above, rules.weight)
        active, pin_at, n_pin_log = pin_rows(
            rules.pin_match, rows, pinned[:n_pinned], pin_at, pin_log, n_pin_log
        )
        pick, best = -1, -np.inf
        for j in range(n_rem):
            v = raw[j] - penalty[j]
            if active >= 0 and not rules.pin_match[active, rows[j]]:
                v = -np.inf
            if pick < 0 or v > best:
                pick, best = j, v
        r = rows[pick]
        placed[n_placed] = r
        raw_of[n_placed], penalty_of[n_placed] = raw[pick], penalty[pick]
        pinned_flag[n_placed] = active >= 0
        placed_genre[n_placed] = cents[pick]
        placed_kinds[n_placed] = scoring.kinds[r]
        n_placed += 1
        per_kind[rules.kind_ids[r]] += 1
        if active >= 0:
            pin_log[n_pin_log] = (active, r)
            n_pin_log += 1
            pinned[n_pinned] = r
            n_pinned += 1
            pin_at = active + 1
        n_shown = 0  # the placed row as it shows: its first titles_per_row titles left
        for s in range(pool.starts[r], pool.starts[r + 1]):
            if n_shown == rules.titles_per_row:
                break
            if pool.alive[s]:
                shown[n_shown] = pool.titles[s]
                n_shown += 1
        for s in range(min(scoring.head, n_shown)):
            placed_mask[shown[s]] = True
        k = 0
        for j in range(n_rem):
            if j != pick:
                remaining[k] = rows[j]
                k += 1
        n_rem = k
        if rules.dedupe:
            n_dup, n_dup_slots = dedupe_titles_across_rows(
                pool, remaining[:n_rem], shown[:n_shown], r, dups, n_dup, dup_slots, n_dup_slots
            )
    # pins never reached: their rows were removed, or the page filled up first
    _, pin_at, n_pin_log = pin_rows(
        rules.pin_match, remaining[:0], pinned[:n_pinned], pin_at, pin_log, n_pin_log
    )
    return Assembly(
        placed[:n_placed],
        raw_of[:n_placed],
        penalty_of[:n_placed],
        pinned_flag[:n_placed],
        capped[:n_capped],
        short[:n_short],
        pin_log[:n_pin_log],
        dups[:n_dup],
        dup_slots[:n_dup_slots],
        remaining[:n_rem].copy(),
        bad,
    )


@numba.njit(cache=True, nogil=True)
def cap_rows(remaining, n_rem, per_kind, kind_ids, caps, capped, n_capped):
    """Rows whose kind reached its cap move from `remaining[:n_rem]` (order kept) to `capped`;
    returns both counts."""
    k = 0
    for j in range(n_rem):
        r = remaining[j]
        if per_kind[kind_ids[r]] >= caps[kind_ids[r]]:
            capped[n_capped] = r
            n_capped += 1
        else:
            remaining[k] = r
            k += 1
    return k, n_capped


@numba.njit(cache=True, nogil=True)
def drop_short_rows(remaining, n_rem, lengths, min_length, short, n_short):
    """Rows with fewer than `min_length` titles left move from `remaining[:n_rem]` (order kept)
    to `short` as (row, titles left); returns both counts."""
    k = 0
    for j in range(n_rem):
        r = remaining[j]
        if lengths[r] < min_length:
            short[n_short, 0], short[n_short, 1] = r, lengths[r]
            n_short += 1
        else:
            remaining[k] = r
            k += 1
    return k, n_short


@numba.njit(cache=True, nogil=True)
def score_rows(pool, scoring, rows, kind_ids, per_kind, placed_mask, placed_genre, placed_kinds):
    """The scorer's score of each of `rows` as it would show now, and their unit genre
    centroids (kept for the row placed)."""
    n = len(rows)
    state = np.empty((n, 6))
    cents = np.zeros((n, scoring.genre_unit.shape[1]))
    row_states(
        pool, rows, scoring.head, scoring.decay, scoring.genre_unit, scoring.kinds[rows],
        placed_mask, placed_genre, placed_kinds, state, cents,
    )  # fmt: skip
    raw = np.empty(n)
    if scoring.method == _CASCADE:
        raw[:] = state[:, 2]
    elif scoring.method == _TOP_TITLES:
        raw[:] = state[:, 1]
    elif scoring.method == _TEMPLATE:
        slots = scoring.slots
        for j in range(n):
            kind = kind_ids[rows[j]]
            mean = state[j, 1]
            tie = math.tanh(mean) if mean == mean else -1.0
            raw[j] = slots[kind, min(per_kind[kind], slots.shape[1] - 1)] + tie
    else:
        static, cols, colmap = scoring.static, scoring.state_cols, scoring.colmap
        X = np.zeros((n, len(colmap)), dtype=np.float32)
        for j in range(n):
            x = static[rows[j]].copy()
            for c in range(6):
                x[cols[c]] = state[j, c]
            for m in range(len(colmap)):
                if colmap[m] >= 0:  # -1: a position slot, served as 0
                    X[j, m] = x[colmap[m]]
        _forest_raw(X, scoring.trees, scoring.zero, raw)
    return raw, cents


@numba.njit(cache=True, nogil=True)
def row_states(
    pool, rows, head, decay, genre_unit, kinds, placed_mask, placed_genre, placed_kinds, out, cents
):
    """The row features that change as the page fills (FeatureStore.row_static's stage
    columns): for each pool row in `rows`, over its first `head` titles left after dedupe, the
    best and mean title score, the cascade play estimate (rs_play_est), the share of them
    already placed above, the genre centroid's best cosine with the rows above, and how many
    rows above are of its kind. Plain loops: one pass per row."""
    starts, titles, scores, alive = pool.starts, pool.titles, pool.scores, pool.alive
    for j in range(len(rows)):
        r = rows[j]
        n, top, total, est, survive, weight = 0, -np.inf, 0.0, 0.0, 1.0, 1.0
        above = 0
        for k in range(starts[r], starts[r + 1]):
            if n == head:
                break
            if not alive[k]:
                continue
            s = np.float64(scores[k])
            top = max(top, s)
            total += s
            p = 1.0 / (1.0 + math.exp(-min(max(s, -30.0), 30.0)))
            est += survive * weight * p
            survive *= 1.0 - p
            weight *= decay
            t = titles[k]
            above += placed_mask[t]
            for g in range(genre_unit.shape[1]):
                cents[j, g] += np.float64(genre_unit[t, g])
            n += 1
        if n:
            out[j, 0], out[j, 1], out[j, 2], out[j, 3] = top, total / n, est, above / n
        else:
            out[j, 0:4] = np.nan
        norm = math.sqrt(np.sum(cents[j] * cents[j]))
        if norm > 0:
            cents[j] /= norm
        best, same = 0.0, 0
        for q in range(len(placed_kinds)):
            sim = np.sum(cents[j] * placed_genre[q])
            best = sim if q == 0 else max(best, sim)
            same += kinds[j] == placed_kinds[q]
        out[j, 4], out[j, 5] = best, same


@numba.njit(cache=True, nogil=True)
def penalize_repeated_kinds(rows, kind_ids, per_kind, above, weight):
    """The diversity term per row: `weight` x (rows of its kind already placed + 1 when the row
    directly above, of kind `above` (-1: none), is of its kind). A second row of a kind right
    under the first pays 2 x weight, the fifth of a run 5 x weight, so a run of one kind needs
    ever larger score leads."""
    penalty = np.zeros(len(rows))
    if above >= 0 and weight != 0:
        for j in range(len(rows)):
            kind = kind_ids[rows[j]]
            penalty[j] = weight * np.float64(per_kind[kind] + (kind == above))
    return penalty


@numba.njit(cache=True, nogil=True)
def pin_rows(pin_match, rows, pinned, pin_at, pin_log, n_pin_log):
    """The pin that limits this stage's choice: the first pending pin (from `pin_at`) that no
    row pinned so far satisfies (a ranker's row pinned by kind in continuation mode is not
    pinned again by name) and that has one of `rows`; pins passed on the way are logged with
    the earlier row or -1. Returns (that pin or -1, the first pin still pending, log size)."""
    while pin_at < pin_match.shape[0]:
        earlier = -1
        for r in pinned:
            if pin_match[pin_at, r]:
                earlier = r
                break
        if earlier < 0:
            for r in rows:
                if pin_match[pin_at, r]:
                    return pin_at, pin_at, n_pin_log
        pin_log[n_pin_log, 0], pin_log[n_pin_log, 1] = pin_at, earlier
        n_pin_log += 1
        pin_at += 1
    return -1, pin_at, n_pin_log


@numba.njit(cache=True, nogil=True)
def dedupe_titles_across_rows(pool, rows, remove, winner, dups, n_dup, slots, n_slots):
    """Masks out every title of `remove` (the shown titles of the row just placed, `winner`)
    in each of `rows`; a row that lost some is logged in `dups` as (row, winner, end of its
    removed slots in `slots`). Returns both counts."""
    seen, starts, titles, alive = pool.seen, pool.starts, pool.titles, pool.alive
    for t in remove:
        seen[t] = True
    for r in rows:
        lost = 0
        for k in range(starts[r], starts[r + 1]):
            if alive[k] and seen[titles[k]]:
                alive[k] = False
                slots[n_slots] = k
                n_slots += 1
                lost += 1
        if lost:
            pool.lengths[r] -= lost
            dups[n_dup, 0], dups[n_dup, 1], dups[n_dup, 2] = r, winner, n_slots
            n_dup += 1
    for t in remove:
        seen[t] = False
    return n_dup, n_slots


# ----- checks and helpers ---------------------------------------------------------------------


def _head(row: CandidateRow, n: int) -> CandidateRow:
    # Built directly rather than with dataclasses.replace: this runs for every long row.
    progress = None if row.progress is None else row.progress[:n]
    titles, scores = row.titles[:n], row.scores[:n]
    return CandidateRow(
        row.row_id, row.ranker, row.kind, row.title, row.evidence, titles, scores, progress
    )


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
