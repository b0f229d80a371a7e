"""The page pipeline end to end on the tiny model: failure policy, cold start, CLI, JSON."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import assembly_reference as reference
import jsonschema
import numpy as np
import orjson
import pytest

import engine
from engine.candidates import CandidateRow
from engine.data.history import History
from engine.errors import BadRequestError, NotFittedError
from engine.pipeline import (
    Engine,
    _invalid_values,
    candidate_rows,
    continuation_mode,
    filter_rows,
    propose_rows,
)
from engine.request.context import RequestContext
from engine.request.filters import series_entries
from engine.request.page import page_schema
from engine.request.selectors import AssembledPage, AssemblyRules, assemble_page

ROWRANK = [sys.executable, "-m", "engine.cli"]


class _Raising:
    """Wraps a ranker; `propose` raises the given exception."""

    def __init__(self, inner: Any, exc: BaseException) -> None:
        self._inner, self._exc = inner, exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        raise self._exc


def _with_ranker(eng: Engine, name: str, ranker: Any) -> Engine:
    rankers = dict(eng.rankers)
    rankers[name] = ranker
    return Engine(
        config=eng.config,
        page_config=eng.page_config,
        history=eng.history,
        rankers=rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )


class _Counting:
    """Wraps a ranker; counts `propose` calls."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        self.calls += 1
        return self._inner.propose(request, history)


def test_rows_that_do_not_depend_on_the_device_are_reused_across_devices(
    tiny_model: Path, member: str, at: str
) -> None:
    """One member's pages on every device in a row (what precompute asks): device-free rankers
    run once, Continue Watching once per device, and each page is byte-equal to the page of
    an engine that reuses nothing."""
    eng = engine.load(tiny_model)
    pvr, cw = _Counting(eng.rankers["pvr"]), _Counting(eng.rankers["continue_watching"])
    eng = _with_ranker(_with_ranker(eng, "pvr", pvr), "continue_watching", cw)
    devices = ("tv", "mobile", "web", "tablet")
    pages = [eng.page(member, device=d, at=at).to_json() for d in devices]
    assert (pvr.calls, cw.calls) == (1, len(devices))
    for d, page in zip(devices, pages, strict=True):
        assert engine.load(tiny_model).page(member, device=d, at=at).to_json() == page
    # Another time or another member is another request.
    later = (datetime.fromisoformat(at) + timedelta(minutes=1)).isoformat()
    eng.page(member, device="tv", at=later)
    other = str(
        eng.history.user_ids[0] if eng.history.user_ids[0] != member else eng.history.user_ids[1]
    )
    eng.page(other, device="tv", at=later)
    assert pvr.calls == 3
    # The same instant written in another time zone is another local time: not reused.
    shifted = datetime.fromisoformat(later).astimezone(timezone(timedelta(hours=5)))
    eng.page(other, device="web", at=shifted.isoformat())
    assert pvr.calls == 4


def test_a_failing_ranker_drops_its_rows_and_is_traced(eng: Engine, member: str, at: str) -> None:
    page = eng.page(member, "tv", at)
    victim = page.rows[0].ranker
    broken = _with_ranker(eng, victim, _Raising(eng.rankers[victim], KeyError("x")))
    page2 = broken.page(member, "tv", at)
    assert page2.rows and not page2.fallback
    assert all(r.ranker != victim for r in page2.rows)
    assert page2.trace["failed_rankers"] == [{"ranker": victim, "error": "KeyError: 'x'"}]
    assert page.trace["failed_rankers"] == []


class _Damaging:
    """Wraps a ranker; `propose` returns its rows with the first row damaged by `damage`."""

    def __init__(self, inner: Any, damage: Any) -> None:
        self._inner, self._damage = inner, damage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        rows = self._inner.propose(request, history)
        titles, scores = rows[0].titles.copy(), rows[0].scores.copy()
        self._damage(titles, scores, history.n_titles)
        return [replace(rows[0], titles=titles, scores=scores), *rows[1:]]


def _set(array: str, k: int, value: Any) -> Any:
    def damage(titles: np.ndarray, scores: np.ndarray, n_titles: int) -> None:
        target = titles if array == "titles" else scores
        target[k] = n_titles if value == "n_titles" else value

    return damage


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (_set("titles", -1, "n_titles"), "title index out of range"),
        (_set("titles", 0, -1), "title index out of range"),
        (_set("scores", 1, np.nan), "non-finite scores"),
        (_set("scores", -1, -np.inf), "non-finite scores"),
        (lambda t, s, n: t.__setitem__(-1, t[0]), "a title appears twice in one row"),
    ],
)
def test_a_ranker_returning_invalid_values_loses_its_rows(
    eng: Engine, member: str, at: str, damage: Any, error: str
) -> None:
    victim = eng.page(member, "tv", at).rows[0].ranker
    broken = _with_ranker(eng, victim, _Damaging(eng.rankers[victim], damage))
    page = broken.page(member, "tv", at)
    assert page.rows and not page.fallback
    assert all(r.ranker != victim for r in page.rows)
    if "range" in error:
        error += f" [0, {eng.history.n_titles})"
    assert page.trace["failed_rankers"] == [
        {"ranker": victim, "error": f"ValueError: rows of {victim}: {error}"}
    ]


def test_one_title_in_two_rows_of_one_ranker_is_valid(eng: Engine, member: str, at: str) -> None:
    """Repeats across rows are dedupe's business (assembly), not a ranker error."""
    row = next(r for r in eng.page(member, "tv", at).rows if len(r.items) > 2)
    titles = np.array([eng.history.title_index(i.title_id) for i in row.items[:3]], np.int32)
    rows = [
        CandidateRow(f"{row.ranker}:{k}", row.ranker, row.kind, "x", None, titles[k:], s)
        for k, s in ((0, np.array([3, 2, 1], np.float32)), (1, np.array([2, 1], np.float32)))
    ]
    assert _invalid_values(rows, eng.history.n_titles) is None
    assert _invalid_values([*rows[:1], rows[1].take(np.array([0, 0]))], 10**6) == (
        f"rows of {row.ranker}: a title appears twice in one row"
    )


@pytest.mark.parametrize(
    "exc", [TypeError("bad argument"), AttributeError("no attr"), NotFittedError("fit first")]
)
def test_programmer_errors_are_not_swallowed(
    eng: Engine, member: str, at: str, exc: Exception
) -> None:
    broken = _with_ranker(eng, "top_picks", _Raising(eng.rankers["top_picks"], exc))
    with pytest.raises(type(exc)):
        broken.page(member, "tv", at)


def test_a_ranker_returning_a_non_row_is_a_programmer_error(
    eng: Engine, member: str, at: str
) -> None:
    class Wrong:
        def __getattr__(self, name: str) -> Any:
            return getattr(eng.rankers["top_picks"], name)

        def propose(self, request: RequestContext, history: History) -> Any:
            return ({"titles": [1, 2]},)

    with pytest.raises(TypeError, match="not a list of CandidateRow"):
        _with_ranker(eng, "top_picks", Wrong()).page(member, "tv", at)


def test_unknown_member_gets_a_cold_start_page(eng: Engine, at: str) -> None:
    country = eng.store.countries[0]
    page = eng.page("nobody-ever", "mobile", at, country=country)
    assert page.trace["cold_start"] is True
    assert not page.fallback
    assert len(page.rows) >= 3
    assert page.context.country == country
    assert page.user_id == "nobody-ever"


def _serving(eng: Engine, **serving: Any) -> Engine:
    """`eng` with its config's [serving] table changed."""
    config = eng.config.model_copy(
        update={"serving": eng.config.serving.model_copy(update=serving)}
    )
    return Engine(
        config=config,
        page_config=eng.page_config,
        history=eng.history,
        rankers=eng.rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )


def test_no_country_anywhere_is_a_bad_request_not_an_empty_page(eng: Engine, at: str) -> None:
    # Every simulated title lists its countries: without one, no title may be shown.
    assert eng.titles_everywhere < eng.history.n_titles
    with pytest.raises(BadRequestError, match="a country is needed") as err:
        eng.page("nobody-ever", "mobile", at)
    assert "is not in the model" in str(err.value)
    assert "[serving] default_country" in str(err.value)
    with pytest.raises(BadRequestError, match="a country is needed"):
        eng.fallback_page(RequestContext("nobody-ever", "tv", datetime.fromisoformat(at)))


def test_a_member_without_a_country_in_the_data_is_refused_too(eng: Engine, at: str) -> None:
    h = eng.history
    blank = replace(h, user_country=np.where(np.arange(len(h.user_ids)) == 0, "", h.user_country))
    bare = Engine(
        config=eng.config,
        page_config=eng.page_config,
        history=blank,
        rankers=eng.rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )
    with pytest.raises(BadRequestError, match="has no country in the data"):
        bare.page(str(h.user_ids[0]), "tv", at)
    bare.warm_up()  # `rowrank serve` warms up on the first member: it must not be refused


def test_default_country_is_used_and_recorded(eng: Engine, at: str) -> None:
    country = eng.store.countries[0]
    served = _serving(eng, default_country=country)
    page = served.page("nobody-ever", "mobile", at)
    assert page.context.country == country  # recorded in the page's context
    assert page.rows and page == eng.page("nobody-ever", "mobile", at, country=country)
    # The request's country and the member's come first.
    other = next(c for c in eng.store.countries if c != country)
    assert served.page("nobody-ever", "mobile", at, country=other).context.country == other


def test_page_carries_the_data_cut_off_and_warns_when_stale(
    eng: Engine, member: str, at: str
) -> None:
    cutoff = datetime.fromtimestamp(eng.history.cutoff_us // 1_000_000, UTC)
    fresh = eng.page(member, "tv", at)
    assert fresh.data_cutoff == cutoff
    assert orjson.loads(fresh.to_json())["data_cutoff"] == cutoff.isoformat()
    assert fresh.warnings == () and "warnings" not in fresh.trace
    late = eng.page(member, "tv", cutoff + timedelta(days=30))
    (warning,) = late.warnings
    assert "30 days past the model's data cut-off" in warning
    assert f"{cutoff:%Y-%m-%d}" in warning
    assert list(late.trace["warnings"]) == [warning]
    fallback = eng.fallback_page(eng.context(member, "tv", cutoff + timedelta(days=30)))
    assert fallback.warnings == (warning,) and fallback.data_cutoff == cutoff
    # Within the configured age, or with the warning off: none.
    assert eng.page(member, "tv", cutoff + timedelta(days=6)).warnings == ()
    assert (
        _serving(eng, stale_after_days=60).page(member, "tv", cutoff + timedelta(days=30)).warnings
        == ()
    )
    assert (
        _serving(eng, stale_after_days=0).page(member, "tv", cutoff + timedelta(days=900)).warnings
        == ()
    )


def test_country_is_the_request_else_the_member(eng: Engine, member: str, at: str) -> None:
    u = eng.history.user_index(member)
    own = str(eng.history.user_country[u])
    assert eng.page(member, "tv", at).context.country == own
    other = next(c for c in eng.store.countries if c != own)
    assert eng.page(member, "tv", at, country=other).context.country == other


def test_pages_follow_the_layout_and_never_repeat_a_title(
    eng: Engine, member: str, at: str
) -> None:
    for device in ("tv", "mobile", "web", "tablet"):
        page = eng.page(member, device, at)
        layout = eng.layout(device)
        assert 1 <= len(page.rows) <= layout.rows
        ids = [i.title_id for r in page.rows for i in r.items]
        assert len(ids) == len(set(ids))
        assert all(
            layout.min_row_length <= len(r.items) <= layout.titles_per_row for r in page.rows
        )
        # within a row, the title model's order, unless the guard kept the ranker's
        # (tests/training/test_title_order_guard.py)
        for r in page.rows:
            if r.kind in eng.ranker_order_kinds:
                continue
            s = [i.score for i in r.items]
            assert s == sorted(s, reverse=True)


def test_page_json_validates_against_the_schema(eng: Engine, member: str, at: str) -> None:
    schema = page_schema()
    for user in (member, "nobody-ever"):
        doc = orjson.loads(eng.page(user, "tv", at, eng.store.countries[0]).to_json())
        jsonschema.validate(doc, schema)
    jsonschema.validate(orjson.loads(eng.fallback_page(eng.context(member)).to_json()), schema)


def test_fallback_page(eng: Engine, member: str, at: str) -> None:
    page = eng.fallback_page(eng.context(member, "web", at))
    assert page.fallback
    assert [r.row_id for r in page.rows] == ["fallback_popular", "fallback_trending"]


def test_continuation_mode_rule(eng: Engine) -> None:
    h = eng.history
    cfg = eng.page_config
    open_ = (h.play_progress >= 0.3) & (h.play_progress < 0.8)
    i = int(np.flatnonzero(open_)[-1])
    u = int(h.play_user[i])
    just_after = int(h.play_ts[i]) + 3_600_000_000
    if h.play_title[i] not in h.finished(u):
        assert continuation_mode(h, u, just_after, cfg)
    assert not continuation_mode(h, u, just_after + 30 * 86_400_000_000, cfg)
    assert not continuation_mode(h, -1, just_after, cfg)


def test_a_page_needs_no_io(tiny_model: Path, tmp_path: Path, member: str, at: str) -> None:
    d = shutil.copytree(tiny_model, tmp_path / "m")
    e = engine.load(d)
    before = e.page(member, "tv", at).to_json()
    shutil.rmtree(d)
    assert e.page(member, "tv", at).to_json() == before


def test_bad_requests_raise_bad_request(eng: Engine, member: str) -> None:
    with pytest.raises(BadRequestError, match="unknown device 'fridge'"):
        eng.page(member, "fridge")
    with pytest.raises(BadRequestError, match="malformed time"):
        eng.page(member, "tv", "tomorrow")


# ----- the CLI --------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*ROWRANK, *args], capture_output=True, timeout=120, check=False)


def test_cli_and_python_give_identical_bytes(
    eng: Engine, tiny_model: Path, member: str, at: str
) -> None:
    res = _run("page", str(tiny_model), "--user", member, "--device", "mobile", "--at", at)
    assert res.returncode == 0, res.stderr
    assert res.stdout == eng.page(member, "mobile", at).to_json() + b"\n"
    again = engine.load(tiny_model).page(member, device="mobile", at=at)
    assert res.stdout == again.to_json() + b"\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "fridge"], b"unknown device 'fridge': use one of tv, mobile, tablet, web"),
        (["--at", "tomorrow"], b"malformed time 'tomorrow': use ISO 8601"),
        (["--model", "nope"], b"does not exist: train one with `rowrank train"),
    ],
)
def test_cli_bad_values_exit_2(
    tiny_model: Path,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    args: list[str],
    message: bytes,
) -> None:
    from engine.cli import main

    model = str(tmp_path / "nope") if args[0] == "--model" else str(tiny_model)
    extra = [] if args[0] == "--model" else args
    assert main(["page", model, "--user", "u1", *extra]) == 2
    out, err = capsysbinary.readouterr()
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert out == b""


def test_series_are_entered_at_the_start_or_where_the_member_is(eng: Engine, at: str) -> None:
    h = eng.history
    entry_new = series_entries(h, -1)
    episodes = (h.series >= 0) & (h.episode >= 0)
    assert episodes.any()
    # A new member: only each series' first episode (and every non-episode).
    first_ep = {
        int(s): int(h.episode[(h.series == s)].min()) for s in np.unique(h.series[episodes])
    }
    expected = ~episodes | np.array(
        [episodes[t] and h.episode[t] == first_ep[int(h.series[t])] for t in range(h.n_titles)]
    )
    np.testing.assert_array_equal(entry_new, expected)
    # A member who finished episodes: the entry moves to their first unfinished episode.
    done = h.play_progress >= 0.9
    i = int(np.flatnonzero(done & episodes[h.play_title])[0])
    u, t = int(h.play_user[i]), int(h.play_title[i])
    assert not series_entries(h, u)[t]  # a finished episode is not an entry any more
    page = eng.page(str(h.user_ids[u]), "tv", at)
    shown = {
        h.title_index(item.title_id)
        for r in page.rows
        if r.kind not in ("watch_again", "continue_watching")
        for item in r.items
    }
    assert all(series_entries(h, u)[sorted(shown)])


_WARM_UP_PROBE = """
import json, sys
import engine
from engine import pipeline
from engine.request import features, scorers, selectors
# The loops a request calls from Python (the selectors run inside assemble_rows).
loops = [scorers._forest_raw, features._title_rows, pipeline._row_values]
loops += [selectors.assemble_rows]
eng = engine.load(sys.argv[1])
before = [len(f.signatures) for f in loops]
eng.warm_up()
print(json.dumps([before, [len(f.signatures) for f in loops]]))
"""


def test_warm_up_leaves_no_page_loop_for_a_request_to_compile(tiny_model: Path) -> None:
    """In a fresh process no compiled loop of the page path is ready after engine.load, and
    every one is after Engine.warm_up (what `rowrank serve` runs before a model is ready)."""
    cmd = [sys.executable, "-c", _WARM_UP_PROBE, str(tiny_model)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    before, after = orjson.loads(out)
    assert before == [0] * 4
    assert all(n >= 1 for n in after)


def _assembled_key(page: AssembledPage) -> Any:
    rows = [
        (r.row_id, r.ranker, r.kind, r.title, r.evidence, r.titles.tolist(), r.scores.tolist())
        for r in page.rows
    ]
    progress = [None if r.progress is None else r.progress.tolist() for r in page.rows]
    return rows, progress, page.scores.tolist(), page.trace.to_dict()


@pytest.mark.parametrize("row_order", ["cascade", "template"])
def test_the_row_order_chosen_at_load_builds_the_reference_page(
    eng: Engine, at: str, row_order: str
) -> None:
    """`[page] row_order` "cascade" and "template" (the benchmarks' ablations) run through the
    one compiled assembly and build exactly the page the Python reference builds from the same
    scored rows, with and without continuation mode and under rule variants that exercise pins,
    caps, dedupe off and no diversity term."""
    h = eng.history
    page_cfg = eng.page_config.model_copy(update={"row_order": row_order})
    other = Engine(
        config=eng.config,
        page_config=page_cfg,
        history=h,
        rankers=eng.rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )
    assert other.row_scorer.method == row_order
    variants = [
        eng.rules,
        replace(eng.rules, dedupe=False),
        AssemblyRules(
            pinned=("new_releases", "no_such_ranker"),
            max_rows_per_kind={"pvr_genre": 1},
            diversity_weight=0.0,
        ),
    ]
    members = [str(u) for u in h.user_ids[:: max(1, len(h.user_ids) // 6)][:6]]
    start = datetime.fromisoformat(at)
    checked = placed = 0
    for member in members:
        for device in ("tv", "mobile"):
            ctx = other.context(member, device, start)
            layout = other.layout(device)
            cand = candidate_rows(other.rankers, ctx, h, page_cfg)
            pvr, _ = other.pvr.scores(h.user_index(member), h, ctx.at_us)
            scored = other.score(ctx, cand.rows, pvr, layout)
            k = layout.visible_titles
            python = (
                reference.score_rows_by_template(page_cfg.row_template, k)
                if row_order == "template"
                else reference.score_rows_by_play_estimate(k, scored.row_features.decay)
            )
            for rules in variants:
                for cont in (False, True):
                    want = reference.assemble_page(
                        scored.rows, python, layout, rules, continuation_mode=cont
                    )
                    got = assemble_page(
                        scored.rows,
                        other.row_scorer,
                        layout,
                        rules,
                        continuation_mode=cont,
                        features=scored.row_features,
                    )
                    assert _assembled_key(got) == _assembled_key(want)
                    checked += 1
                    placed += len(want.rows)
            page = other.page_for(ctx)
            assert [r.row_id for r in page.rows] == [
                r.row_id
                for r in reference.assemble_page(
                    scored.rows,
                    python,
                    layout,
                    eng.rules,
                    continuation_mode=page.trace["continuation_mode"],
                ).rows
            ]
    assert checked >= 60 and placed > 0


def test_rows_of_a_kind_named_in_the_config_are_cut_to_their_own_length(eng: Engine) -> None:
    """[page] row_titles_scored_by_kind: those kinds' rows keep more (or fewer) titles for the
    title model; every other row is cut to row_titles_scored; the cut keeps the ranker's head."""
    h = eng.history
    member = str(h.user_ids[0])
    ctx = eng.context(member, "tv", datetime(2030, 1, 7, 20, tzinfo=UTC))
    proposed = propose_rows(eng.rankers, ctx, h)
    uncut, _ = filter_rows(proposed.rows, ctx, h, eng.rankers, 10_000)
    long_kinds = sorted({r.kind for r in uncut if len(r.titles) > 5})
    assert len(long_kinds) >= 2, "the tiny model's page has rows of two kinds to compare"
    deep = long_kinds[0]
    rows, _ = filter_rows(proposed.rows, ctx, h, eng.rankers, 3, {deep: 5})
    assert [r.row_id for r in rows] == [r.row_id for r in uncut]
    for got, full in zip(rows, uncut, strict=True):
        n = 5 if got.kind == deep else 3
        assert got.titles.tolist() == full.titles[: min(n, len(full.titles))].tolist()
