"""Page assembly: the compiled loop equals the Python reference (tests/assembly_reference.py) on
generated rows, hypothesis properties for the page invariants, examples for the rest (on the
reference where they score rows by hand)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import assembly_reference as reference
import numpy as np
import pytest
from assembly_reference import RowScorer, assemble_page
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.candidates import CandidateRow
from engine.errors import ConfigError
from engine.request import selectors
from engine.request.layout import DeviceLayout
from engine.request.selectors import (
    AssembledPage,
    AssemblyRules,
    RowFeatures,
    RowPool,
    dedupe_titles_across_rows,
    penalize_repeated_kinds,
)

# kind -> ranker instances of that kind (two instances of one type are normal)
RANKERS = {
    "because_you_watched": ("because_you_watched",),
    "pvr_genre": ("pvr",),
    "trending": ("trending_24h", "trending_7d"),
    "top_n": ("top_n",),
    "continue_watching": ("continue_watching",),
    "my_plugin_kind": ("plugin",),
}
KINDS = tuple(RANKERS)
ALL_RANKERS = tuple(r for rs in RANKERS.values() for r in rs)
N_TITLES = 40  # small catalog, so rows overlap a lot


def make_row(
    row_id: str,
    kind: str,
    titles: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    ranker: str | None = None,
    progress: bool = False,
) -> CandidateRow:
    t = np.asarray(titles, dtype=np.int32)
    s = np.linspace(1.0, 0.0, len(t)) if scores is None else np.asarray(scores)
    p = np.linspace(0.1, 0.8, len(t)).astype(np.float32) if progress else None
    return CandidateRow(
        row_id, ranker or row_id.split(":")[0], kind, row_id, None, t, s.astype(np.float32), p
    )


@dataclass(frozen=True)
class Case:
    rows: list[CandidateRow]
    layout: DeviceLayout
    rules: AssemblyRules
    continuation_mode: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    seen = set()  # a ranker's first row is its main row (row id = its name) half the time
    for i in range(draw(st.integers(0, 16))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        ranker = RANKERS[kind][int(rng.integers(len(RANKERS[kind])))]
        n = int(rng.integers(0, 30))
        titles = rng.choice(N_TITLES, size=min(n, N_TITLES), replace=False)
        scores = np.sort(rng.normal(size=len(titles)))[::-1]
        row_id = f"{ranker}:{i}" if ranker in seen or rng.random() < 0.5 else ranker
        seen.add(ranker)
        rows.append(make_row(row_id, kind, titles, scores, ranker=ranker, progress=bool(i % 2)))
    titles_per_row = draw(st.integers(1, 15))
    layout = DeviceLayout(
        rows=draw(st.integers(1, 8)),
        titles_per_row=titles_per_row,
        min_row_length=draw(st.integers(0, titles_per_row)),
        visible_rows=1,
        visible_titles=1,
    )
    caps = draw(st.dictionaries(st.sampled_from(KINDS), st.integers(0, 3), max_size=4))
    rules = AssemblyRules(
        pinned=tuple(draw(st.lists(st.sampled_from(ALL_RANKERS), unique=True, max_size=3))),
        pin_continue_watching=draw(st.booleans()),
        max_rows_per_kind=caps,
        max_rows_other_kinds=draw(st.integers(1, 3)),
        dedupe=draw(st.booleans()),
        diversity_weight=draw(st.sampled_from([0.0, 0.2, 1.0])),
    )
    return Case(rows, layout, rules, draw(st.booleans()))


def context_scorer(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
    """Uses both arguments, as the page model does: top-title mean, minus a penalty for
    each placed row from the same ranker."""
    base = reference.score_rows_by_top_titles(3)(placed, rows)
    same = Counter(r.ranker for r in placed)
    return base - 0.3 * np.array([same[r.ranker] for r in rows], dtype=np.float64)


def run(case: Case, scorer: RowScorer = context_scorer) -> AssembledPage:
    return assemble_page(
        case.rows, scorer, case.layout, case.rules, continuation_mode=case.continuation_mode
    )


PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEMPLATE = ("continue_watching", "top_n", "pvr_genre", "trending", "pvr_genre", "top_n")


def _key(page: AssembledPage) -> object:
    rows = [
        (r.row_id, r.ranker, r.kind, r.title, r.evidence, r.titles.tolist(), r.scores.tolist())
        for r in page.rows
    ]
    progress = [None if r.progress is None else r.progress.tolist() for r in page.rows]
    return rows, progress, page.scores.tolist(), page.trace.to_dict()


def compiled(case: Case, scorer: str = "template", k: int = 3, decay: float = 0.8) -> AssembledPage:
    """The engine's assembly (one compiled loop) of `case` with a model-free row scorer."""
    features = None
    if scorer == "cascade":
        n = len(case.rows)
        features = RowFeatures(
            np.zeros((n, 0), dtype=np.float32),
            np.zeros(6, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            decay,
            np.zeros((N_TITLES, 0), dtype=np.float32),
        )
    return selectors.assemble_page(
        case.rows,
        {
            "template": selectors.score_rows_by_template(TEMPLATE, k),
            "top_titles": selectors.score_rows_by_top_titles(k),
            "cascade": replace(selectors.score_rows_by_play_estimate(), head=k),
        }[scorer],
        case.layout,
        case.rules,
        continuation_mode=case.continuation_mode,
        features=features,
    )


@PROPERTY
@given(
    cases(),
    st.sampled_from(["template", "top_titles", "cascade"]),
    st.integers(1, 8),
    st.sampled_from([0.5, 0.8, 1.0]),
)
def test_the_compiled_assembly_equals_the_reference(
    case: Case, scorer: str, k: int, decay: float
) -> None:
    """The one assembly algorithm (engine.request.selectors.assemble_rows, compiled) builds
    exactly what the Python reference builds with the same scorer: rows, titles, scores,
    progress and the whole trace, under generated rows, layouts and rules."""
    head = min(k, case.layout.titles_per_row)
    python = {
        "template": reference.score_rows_by_template(TEMPLATE, head),
        "top_titles": reference.score_rows_by_top_titles(head),
        "cascade": reference.score_rows_by_play_estimate(head, decay),
    }[scorer]
    want = assemble_page(
        case.rows, python, case.layout, case.rules, continuation_mode=case.continuation_mode
    )
    assert _key(compiled(case, scorer, k, decay)) == _key(want)


@PROPERTY
@given(cases())
def test_page_invariants(case: Case) -> None:
    """On the engine's compiled loop, with a scorer that reads the rows placed (template)."""
    page = compiled(case)
    by_id = {r.row_id: r for r in case.rows}
    layout, rules = case.layout, case.rules

    assert len(page.rows) <= layout.rows
    assert len(page.scores) == len(page.rows)
    assert np.isfinite(page.scores).all()
    for row in page.rows:
        assert max(1, layout.min_row_length) <= len(row.titles) <= layout.titles_per_row
        source = by_id[row.row_id]
        # every placed title came from this row's input, in the input order, with its score
        where = {int(t): i for i, t in enumerate(source.titles)}
        assert all(int(t) in where for t in row.titles)
        pos = np.array([where[int(t)] for t in row.titles])
        assert np.all(np.diff(pos) > 0)
        np.testing.assert_array_equal(row.scores, source.scores[pos])
        if source.progress is not None:
            assert row.progress is not None
            np.testing.assert_array_equal(row.progress, source.progress[pos])
        assert (row.kind, row.ranker, row.title) == (source.kind, source.ranker, source.title)

    titles = np.concatenate([r.titles for r in page.rows]) if page.rows else np.array([])
    if rules.dedupe:
        assert len(np.unique(titles)) == len(titles)

    kinds = Counter(r.kind for r in page.rows)
    assert all(n <= rules.cap_for(k) for k, n in kinds.items())

    # every input row has exactly one outcome
    t = page.trace
    outcomes = (
        [p.row_id for p in t.placed]
        + [c.row_id for c in t.capped]
        + [s.row_id for s in t.dropped_short]
        + list(t.unplaced)
    )
    assert sorted(outcomes) == sorted(by_id)
    assert [p.row_id for p in t.placed] == [r.row_id for r in page.rows]
    if len(page.rows) < layout.rows:
        assert t.unplaced == ()  # the page only stops short when nothing eligible is left

    # pinned rows come first, in pin order
    pinned_flags = [p.pinned for p in t.placed]
    n_pinned = sum(pinned_flags)
    assert pinned_flags == [True] * n_pinned + [False] * (len(pinned_flags) - n_pinned)
    prefix = page.rows[:n_pinned]
    targets = (
        [("kind", "continue_watching")]
        if case.continuation_mode and rules.pin_continue_watching
        else []
    ) + [("ranker", name) for name in rules.pinned]

    def pinnable(name: str) -> set[str]:
        """A ranker's main row when it proposed one (row id = its name), else any of its rows."""
        ids = {r.row_id for r in case.rows if r.ranker == name}
        return {name} if name in ids else ids

    def satisfies(r: CandidateRow, target: tuple[str, str]) -> bool:
        attr, v = target
        return r.kind == v if attr == "kind" else r.row_id in pinnable(v)

    # each pinned row satisfies a pin not satisfied before it, in pin order
    pos_in_targets: list[int] = []
    for r in prefix:
        pos_in_targets.append(
            next(
                i
                for i, target in enumerate(targets)
                if i not in pos_in_targets and satisfies(r, target)
            )
        )
    assert pos_in_targets == sorted(pos_in_targets)
    for name in rules.pinned:
        if any(r.row_id in pinnable(name) for r in page.rows):
            assert any(r.row_id in pinnable(name) for r in prefix)
    if (
        targets
        and targets[0][0] == "kind"
        and any(r.kind == "continue_watching" for r in page.rows)
    ):
        assert page.rows[0].kind == "continue_watching"

    # deterministic
    again = compiled(case)
    assert [r.row_id for r in again.rows] == [r.row_id for r in page.rows]
    for a, b in zip(again.rows, page.rows, strict=True):
        np.testing.assert_array_equal(a.titles, b.titles)
    np.testing.assert_array_equal(again.scores, page.scores)


@PROPERTY
@given(cases())
def test_scorer_sees_each_stage_once(case: Case) -> None:
    calls: list[tuple[tuple[str, ...], list[CandidateRow]]] = []

    def recording(placed: Sequence[CandidateRow], rows: Sequence[CandidateRow]) -> np.ndarray:
        calls.append((tuple(r.row_id for r in placed), list(rows)))
        return context_scorer(placed, rows)

    page = run(case, recording)
    ids = [r.row_id for r in page.rows]
    assert len(calls) == len(page.rows)
    for stage, (placed_ids, rows) in enumerate(calls):
        assert placed_ids == tuple(ids[:stage])  # placed so far, in page order
        assert ids[stage] in {r.row_id for r in rows}
        assert all(len(r.titles) <= case.layout.titles_per_row for r in rows)
        assert not set(placed_ids) & {r.row_id for r in rows}


# ----- examples -------------------------------------------------------------------------------

LAYOUT = DeviceLayout(rows=7, titles_per_row=5, min_row_length=3, visible_rows=3, visible_titles=3)


def fixed_scores(table: dict[str, float]) -> RowScorer:
    return lambda placed, rows: np.array([table[r.row_id] for r in rows])


def test_diversity_term_interleaves_kinds() -> None:
    byw = [make_row(f"byw:{i}", "because_you_watched", range(10 * i, 10 * i + 5)) for i in range(5)]
    other = [make_row(f"top:{i}", "top_n", range(100 + 10 * i, 105 + 10 * i)) for i in range(3)]
    table = {f"byw:{i}": 1.0 - 0.01 * i for i in range(5)} | {
        f"top:{i}": 0.9 - 0.01 * i for i in range(3)
    }
    caps = {"because_you_watched": 5, "top_n": 3}
    plain = assemble_page(
        byw + other,
        fixed_scores(table),
        LAYOUT,
        AssemblyRules(max_rows_per_kind=caps, diversity_weight=0.0),
    )
    assert [r.kind for r in plain.rows][:5] == ["because_you_watched"] * 5

    tall = DeviceLayout(
        rows=8, titles_per_row=5, min_row_length=3, visible_rows=3, visible_titles=3
    )
    rules = AssemblyRules(max_rows_per_kind=caps, diversity_weight=0.2)
    page = assemble_page(byw + other, fixed_scores(table), tall, rules)
    kinds = [r.kind for r in page.rows]
    # byw:1 under byw:0 would pay 0.2 x (1 placed + 1 directly above): 0.59 < top:0's 0.9, and
    # so on down the page; only when the top_n rows run out do two byw rows touch.
    assert kinds == ["because_you_watched", "top_n"] * 3 + ["because_you_watched"] * 2
    penalties = [p.penalty for p in page.trace.placed]
    np.testing.assert_allclose(penalties, [0.0, 0.0, 0.2, 0.2, 0.4, 0.4, 0.6, 1.0])
    # the row score reported is the scorer's, before the diversity term
    np.testing.assert_allclose(page.scores, [table[r.row_id] for r in page.rows])


def test_penalty_counts_placed_kinds_and_the_row_above() -> None:
    # placed: a (kind x), b (y), c (x); remaining rows d (x), e (y), f (z), kinds numbered 0-2
    rows, kind_ids, per_kind = np.arange(3), np.arange(3), np.array([2, 1, 0])
    np.testing.assert_allclose(
        penalize_repeated_kinds(rows, kind_ids, per_kind, 0, 0.5), [1.5, 0.5, 0.0]
    )
    nothing_above = penalize_repeated_kinds(rows, kind_ids, np.zeros(3, np.int64), -1, 0.5)
    assert nothing_above.tolist() == [0.0, 0.0, 0.0]


def test_trace_records_every_selector() -> None:
    rows = [
        make_row("top_n", "top_n", range(0, 5)),
        make_row("trending", "trending", range(2, 7)),  # loses 2..4 to top_n: 2 left < 3
        make_row("pvr:drama", "pvr_genre", range(20, 25)),
        make_row("pvr:comedy", "pvr_genre", range(30, 35)),  # over the pvr_genre cap of 1
        make_row("cw", "continue_watching", range(40, 45), progress=True),
        make_row("short", "top_n", [50, 51], ranker="top_n_b"),  # short from the start
        make_row("missing_pin_target", "trending", range(60, 65)),
    ]
    table = {
        "top_n": 0.9,
        "trending": 0.95,
        "pvr:drama": 0.5,
        "pvr:comedy": 0.4,
        "cw": 0.1,
        "short": 1.0,
        "missing_pin_target": 0.0,
    }
    rules = AssemblyRules(
        pinned=("top_n", "nobody"), max_rows_per_kind={"pvr_genre": 1}, diversity_weight=0.0
    )
    layout = DeviceLayout(
        rows=4, titles_per_row=5, min_row_length=3, visible_rows=2, visible_titles=2
    )
    page = assemble_page(rows, fixed_scores(table), layout, rules, continuation_mode=True)
    t = page.trace

    assert [r.row_id for r in page.rows] == ["cw", "top_n", "pvr:drama", "missing_pin_target"]
    assert [(p.pin, p.row_id) for p in t.pins] == [
        ("kind=continue_watching", "cw"),
        ("ranker=top_n", "top_n"),
        ("ranker=nobody", None),
    ]
    assert [p.pinned for p in t.placed] == [True, True, False, False]
    assert [(d.row_id, d.lost_to, d.titles.tolist()) for d in t.duplicates] == [
        ("trending", "top_n", [2, 3, 4])
    ]
    assert [(s.row_id, s.length) for s in t.dropped_short] == [("short", 2), ("trending", 2)]
    assert [(c.row_id, c.kind, c.cap) for c in t.capped] == [("pvr:comedy", "pvr_genre", 1)]
    assert t.unplaced == ()
    assert page.rows[0].progress is not None

    as_dict = t.to_dict(np.array([f"t{i}" for i in range(70)]))
    assert as_dict["duplicates"] == [
        {"row_id": "trending", "lost_to": "top_n", "titles": ["t2", "t3", "t4"]}
    ]
    assert as_dict["pins"][2] == {"pin": "ranker=nobody", "row_id": None}


def test_pin_of_the_continue_watching_instance_is_not_pinned_twice() -> None:
    rows = [
        make_row("continue_watching", "continue_watching", range(0, 5)),
        make_row(
            "continue_watching:more", "continue_watching", range(5, 10), ranker="continue_watching"
        ),
        make_row("top_n", "top_n", range(10, 15)),
    ]
    rules = AssemblyRules(pinned=("continue_watching",), max_rows_per_kind={"continue_watching": 2})
    table = {"continue_watching": 0.1, "continue_watching:more": 0.0, "top_n": 1.0}
    page = assemble_page(rows, fixed_scores(table), LAYOUT, rules, continuation_mode=True)
    assert [r.row_id for r in page.rows] == ["continue_watching", "top_n", "continue_watching:more"]
    assert [(p.pin, p.row_id) for p in page.trace.pins] == [
        ("kind=continue_watching", "continue_watching"),
        ("ranker=continue_watching", "continue_watching"),
    ]


def test_a_ranker_pin_takes_the_rankers_main_row_over_its_keyed_rows() -> None:
    # "More Picks" outscores Top Picks, yet the pin places the row under the ranker's own name
    rows = [
        make_row("top_picks:more1", "top_picks_more", range(5, 10), ranker="top_picks"),
        make_row("top_picks", "top_picks", range(0, 5)),
        make_row("trending", "trending", range(10, 15)),
    ]
    table = {"top_picks:more1": 2.0, "top_picks": 0.1, "trending": 1.0}
    rules = AssemblyRules(pinned=("top_picks",))
    page = assemble_page(rows, fixed_scores(table), LAYOUT, rules)
    assert [r.row_id for r in page.rows] == ["top_picks", "top_picks:more1", "trending"]
    # a ranker of keyed rows only has its best row pinned
    keyed = [rows[0], rows[2]]
    page = assemble_page(keyed, fixed_scores(table), LAYOUT, rules)
    assert [(p.pin, p.row_id) for p in page.trace.pins] == [("ranker=top_picks", "top_picks:more1")]


def test_continue_watching_competes_outside_continuation_mode() -> None:
    rows = [make_row("cw", "continue_watching", range(5)), make_row("top", "top_n", range(5, 10))]
    table = {"cw": 0.1, "top": 0.9}
    for mode, first in ((True, "cw"), (False, "top")):
        page = assemble_page(
            rows, fixed_scores(table), LAYOUT, AssemblyRules(), continuation_mode=mode
        )
        assert page.rows[0].row_id == first
    off = AssemblyRules(pin_continue_watching=False)
    page = assemble_page(rows, fixed_scores(table), LAYOUT, off, continuation_mode=True)
    assert page.rows[0].row_id == "top"


def test_dedupe_only_removes_titles_that_show() -> None:
    # titles 5..9 sit beyond titles_per_row in row a, so row b keeps them
    a = make_row("a", "top_n", range(0, 10))
    b = make_row("b", "trending", range(3, 10))
    page = assemble_page([a, b], fixed_scores({"a": 1.0, "b": 0.5}), LAYOUT, AssemblyRules())
    assert page.rows[0].titles.tolist() == [0, 1, 2, 3, 4]
    assert page.rows[1].titles.tolist() == [5, 6, 7, 8, 9]


def test_without_dedupe_titles_may_repeat() -> None:
    a, b = make_row("a", "top_n", range(5)), make_row("b", "trending", range(5))
    rules = AssemblyRules(dedupe=False)
    page = assemble_page([a, b], fixed_scores({"a": 1.0, "b": 0.5}), LAYOUT, rules)
    assert [r.titles.tolist() for r in page.rows] == [[0, 1, 2, 3, 4]] * 2
    assert page.trace.duplicates == ()


def test_dedupe_selector_keeps_order_and_names_the_winner() -> None:
    rows = [make_row("x", "trending", [1, 3, 2, 9, 4]), make_row("y", "trending", [5, 6])]

    def dedupe(pool: RowPool, names: list[int], winner_titles: list[int]) -> list[object]:
        dups = np.empty((len(names), 3), dtype=np.int64)
        slots = np.empty(len(pool.titles), dtype=np.int64)
        n_dup, _ = dedupe_titles_across_rows(
            pool.arrays(), np.array(names), np.array(winner_titles, np.int32), 7, dups, 0, slots, 0
        )
        ends = dups[:n_dup, 2].tolist()
        return [
            (int(r), int(w), pool.titles[slots[a:b]].tolist())
            for (r, w, _), a, b in zip(dups[:n_dup].tolist(), [0, *ends][:-1], ends, strict=True)
        ]

    pool = RowPool(rows, titles_per_row=4)
    assert dedupe(pool, [0, 1], [7, 3, 9]) == [(0, 7, [3, 9])]
    assert pool.lengths.tolist() == [3, 2]
    kept = [pool.shown(0), pool.shown(1)]
    assert [r.titles.tolist() for r in kept] == [[1, 2, 4], [5, 6]]
    np.testing.assert_array_equal(kept[0].scores, rows[0].scores[[0, 2, 4]])
    # rows not named are left alone, and a row is cut to titles_per_row as it shows
    other = RowPool(rows, titles_per_row=2)
    assert dedupe(other, [1], [7, 3, 9]) == []
    assert other.shown(0).titles.tolist() == [1, 3]


def test_equal_scores_keep_input_order() -> None:
    rows = [make_row(f"r{i}", KINDS[i], range(5 * i, 5 * i + 5)) for i in range(4)]
    page = assemble_page(rows, lambda p, r: np.zeros(len(r)), LAYOUT, AssemblyRules())
    assert [r.row_id for r in page.rows] == ["r0", "r1", "r2", "r3"]


def test_empty_input_gives_an_empty_page() -> None:
    page = selectors.assemble_page(
        [], selectors.score_rows_by_top_titles(3), LAYOUT, AssemblyRules()
    )
    assert page.rows == () and page.scores.shape == (0,) and page.trace.placed == ()


@pytest.mark.parametrize(
    "bad", [lambda p, r: np.zeros(len(r) + 1), lambda p, r: np.full(len(r), np.nan)]
)
def test_a_bad_scorer_fails_closed(bad: RowScorer) -> None:
    rows = [make_row("a", "top_n", range(5))]
    with pytest.raises(ValueError, match="row scorer"):
        assemble_page(rows, bad, LAYOUT, AssemblyRules())


def test_a_non_finite_row_score_fails_the_compiled_assembly_closed() -> None:
    rows = [make_row("a", "top_n", range(5)), make_row("b", "trending", range(5, 10))]
    rows[1] = replace(rows[1], scores=np.full(5, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"non-finite scores for \['b'\]"):
        selectors.assemble_page(
            rows, selectors.score_rows_by_top_titles(3), LAYOUT, AssemblyRules()
        )


def test_a_learned_or_cascade_scorer_without_row_features_fails_closed() -> None:
    with pytest.raises(ValueError, match="RowFeatures"):
        selectors.assemble_page(
            [make_row("a", "top_n", range(5))],
            selectors.score_rows_by_play_estimate(),
            LAYOUT,
            AssemblyRules(),
        )


def test_bad_rows_fail_closed() -> None:
    top = selectors.score_rows_by_top_titles(3)
    with pytest.raises(ValueError, match="unique"):
        selectors.assemble_page(
            [make_row("a", "top_n", range(5))] * 2, top, LAYOUT, AssemblyRules()
        )
    with pytest.raises(ValueError, match="twice within"):
        selectors.assemble_page([make_row("a", "top_n", [1, 2, 1])], top, LAYOUT, AssemblyRules())


def test_rules_validate_and_build_from_config_fields() -> None:
    rules = AssemblyRules(pinned=["cw"], max_rows_per_kind={"pvr_genre": 4}, dedupe=False)  # type: ignore[arg-type]
    assert rules.pinned == ("cw",)
    assert rules.cap_for("pvr_genre") == 4 and rules.cap_for("plugin") == rules.max_rows_other_kinds
    with pytest.raises(ConfigError, match="pvr_genre"):
        AssemblyRules(max_rows_per_kind={"pvr_genre": -1})
    with pytest.raises(ConfigError, match="diversity_weight"):
        AssemblyRules(diversity_weight=float("nan"))
