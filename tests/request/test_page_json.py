"""The Page and its JSON contract: schema, key order, finite numbers, stable bytes, round trip."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import numpy as np
import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.candidates import CandidateRow
from engine.data.columns import DEVICES, Col
from engine.data.dataset import Dataset
from engine.data.history import History
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS
from engine.request.page import (
    PAGE_FRAME_SCHEMA,
    Page,
    PageItem,
    PageTrace,
    _round_one,
    build_page,
    page_schema,
    round_significant,
)
from engine.request.selectors import AssemblyRules, assemble_page, score_rows_by_top_titles

CLOCK = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
GENERATED = datetime(2026, 11, 27, 20, 0, 1, 250_000, tzinfo=UTC)
LOCAL = datetime(2026, 11, 27, 21, 0, tzinfo=timezone(timedelta(hours=1)))
CUTOFF = datetime(2026, 11, 20, tzinfo=UTC)
N_TITLES = 60


@pytest.fixture(scope="module")
def history() -> History:
    ts = pl.Series([CLOCK - timedelta(days=30)] * N_TITLES).dt.cast_time_unit("us")
    titles = pl.DataFrame(
        {
            Col.TITLE_ID: [f"t{i:03d}" for i in range(N_TITLES)],
            # names that need escaping in JSON
            Col.NAME: [f'Title "{i}" — café\\{i}' for i in range(N_TITLES)],
            Col.KIND: ["movie"] * N_TITLES,
            Col.GENRES: [["Drama"]] * N_TITLES,
            Col.RELEASE_YEAR: pl.Series([2000] * N_TITLES, dtype=pl.Int32),
            Col.DURATION_MIN: pl.Series([90.0] * N_TITLES, dtype=pl.Float32),
            Col.MATURITY: pl.Series([0] * N_TITLES, dtype=pl.Int8),
            Col.COUNTRIES: [[]] * N_TITLES,
            Col.ADDED_AT: ts,
        },
        schema_overrides={Col.COUNTRIES: pl.List(pl.String)},
    )
    users = pl.DataFrame(
        {
            Col.USER_ID: ["u1"],
            Col.COUNTRY: ["FR"],
            Col.MATURITY_MAX: pl.Series([18], dtype=pl.Int8),
            Col.CREATED_AT: ts[:1],
        }
    )
    plays = pl.DataFrame(
        {
            Col.USER_ID: ["u1"],
            Col.TITLE_ID: ["t000"],
            Col.TS: ts[:1],
            Col.DEVICE: ["tv"],
            Col.SECONDS_WATCHED: pl.Series([600.0], dtype=pl.Float32),
            Col.PROGRESS: pl.Series([0.3], dtype=pl.Float32),
        }
    )
    return History.from_dataset(Dataset(titles, users, plays, None, CLOCK, "test"))


def candidate_rows() -> list[CandidateRow]:
    def row(
        row_id: str,
        kind: str,
        titles: range,
        evidence: dict[str, object] | None = None,
        progress: np.ndarray | None = None,
    ) -> CandidateRow:
        t = np.asarray(titles, dtype=np.int32)
        scores = (np.float32(0.1) * np.arange(len(t), 0, -1)).astype(np.float32)
        ranker = row_id.split(":")[0]
        return CandidateRow(
            row_id, ranker, kind, f"Label of {row_id}", evidence, t, scores, progress
        )

    return [
        row(
            "continue_watching",
            "continue_watching",
            range(0, 6),
            progress=np.linspace(0.05, 0.85, 6, dtype=np.float32),
        ),
        row(
            "because_you_watched:t000",
            "because_you_watched",
            range(4, 30),
            evidence={"seed": "t000", "similarity": np.float32(0.8123456789), "n": np.int64(3)},
        ),
        row("trending_24h", "trending", range(20, 50)),
        row("my_plugin", "some_plugin_kind", range(40, 60), evidence={"tags": ("a", "b")}),
    ]


def make_page(history: History, **kw: object) -> Page:
    request = RequestContext(user_id="u1", device="tv", at=LOCAL, country="FR")
    assembled = assemble_page(
        candidate_rows(),
        score_rows_by_top_titles(3),
        DEFAULT_LAYOUTS["tv"],
        AssemblyRules(),
        continuation_mode=True,
    )
    return build_page(
        assembled,
        history,
        request,
        model_version="test-model-1",
        data_cutoff=CUTOFF,
        generated_at=GENERATED,
        trace=PageTrace(
            assembled.trace,
            history.title_ids,
            rankers={"continue_watching": 1},
            failed_rankers={"x": "boom"},
        ),
        **kw,  # type: ignore[arg-type]
    )


def validate(doc: object) -> None:
    jsonschema.Draft202012Validator(
        page_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(doc)


def test_schema_is_valid_and_matches_the_engine() -> None:
    jsonschema.Draft202012Validator.check_schema(page_schema())
    assert page_schema()["$defs"]["context"]["properties"]["device"]["enum"] == list(DEVICES)


def test_page_json_validates_with_keys_in_contract_order(history: History) -> None:
    page = make_page(history)
    doc = orjson.loads(page.to_json())
    validate(doc)
    schema = page_schema()
    assert list(doc) == list(schema["properties"])[:-1]  # all but the optional trace
    assert doc["data_cutoff"] == "2026-11-20T00:00:00+00:00"
    assert list(doc["context"]) == list(schema["$defs"]["context"]["properties"])
    for row in doc["rows"]:
        assert list(row) == list(schema["$defs"]["row"]["properties"])
        for item in row["items"]:
            assert list(item) == list(schema["$defs"]["item"]["properties"])
    assert doc["generated_at"] == "2026-11-27T20:00:01.250000+00:00"
    assert doc["context"] == {
        "device": "tv",
        "local_time": "2026-11-27T21:00:00+01:00",
        "hour": 21,
        "weekday": 4,
        "country": "FR",
    }
    assert doc["fallback"] is False
    assert "trace" not in doc


def test_page_content_follows_the_assembled_page(history: History) -> None:
    page = make_page(history)
    doc = orjson.loads(page.to_json())
    assert [r["row_id"] for r in doc["rows"]] == [r.row_id for r in page.rows]
    assert doc["rows"][0]["kind"] == "continue_watching"  # pinned in continuation mode
    cw = doc["rows"][0]["items"]
    assert [i["title_id"] for i in cw] == [f"t{i:03d}" for i in range(6)]
    assert cw[0]["name"] == 'Title "0" — café\\0'
    assert [i["progress"] for i in cw] == [0.05, 0.21, 0.37, 0.53, 0.69, 0.85]
    byw = next(r for r in doc["rows"] if r["kind"] == "because_you_watched")
    assert all(i["progress"] is None for i in byw["items"])
    # titles 4 and 5 went to the pinned row above; numpy evidence became plain JSON
    assert byw["items"][0]["title_id"] == "t006"
    assert byw["evidence"] == {"seed": "t000", "similarity": 0.812346, "n": 3}
    plugin = next(r for r in doc["rows"] if r["kind"] == "some_plugin_kind")
    assert plugin["evidence"] == {"tags": ["a", "b"]}
    titles = [i["title_id"] for r in doc["rows"] for i in r["items"]]
    assert len(titles) == len(set(titles))


def test_floats_are_written_with_six_significant_digits(history: History) -> None:
    raw = make_page(history).to_json()
    # float32(0.1) * 26 is 2.6000001430511475 as a double: written short and stable
    assert b'"score":2.6,' in raw
    assert b"0000001" not in raw


def test_same_page_same_bytes(history: History) -> None:
    a, b = make_page(history), make_page(history)
    assert a == b
    assert a.to_json() == b.to_json() == a.to_json()
    assert a.to_json(include_trace=True) == b.to_json(include_trace=True)


def test_round_trip_keeps_the_content(history: History) -> None:
    page = make_page(history)
    raw = page.to_json()
    back = Page.from_json(raw)
    assert back.to_json() == raw
    assert back.user_id == page.user_id and back.model_version == page.model_version
    assert back.generated_at == page.generated_at
    assert back.data_cutoff == page.data_cutoff == CUTOFF
    assert back.context == page.context
    assert back.fallback is page.fallback
    assert len(back.rows) == len(page.rows)
    for got, want in zip(back.rows, page.rows, strict=True):
        assert (got.row_id, got.kind, got.ranker, got.title) == (
            want.row_id,
            want.kind,
            want.ranker,
            want.title,
        )
        assert [(i.title_id, i.name) for i in got.items] == [
            (i.title_id, i.name) for i in want.items
        ]
        np.testing.assert_allclose(
            [i.score for i in got.items], [i.score for i in want.items], rtol=1e-5
        )
        assert math.isclose(got.score, want.score, rel_tol=1e-5)


def test_trace_only_when_asked(history: History) -> None:
    page = make_page(history)
    doc = orjson.loads(page.to_json(include_trace=True))
    validate(doc)
    assert list(doc)[-1] == "trace"
    assert doc["trace"]["failed_rankers"] == [{"ranker": "x", "error": "boom"}]
    assert list(doc["trace"]) == ["rankers", "failed_rankers", "assembly"]
    assembly = doc["trace"]["assembly"]
    assert [p["row_id"] for p in assembly["placed"]] == [r.row_id for r in page.rows]
    lost = next(d for d in assembly["duplicates"] if d["row_id"] == "because_you_watched:t000")
    assert lost == {
        "row_id": "because_you_watched:t000",
        "lost_to": "continue_watching",
        "titles": ["t004", "t005"],
    }
    assert Page.from_json(orjson.dumps(doc)).trace == doc["trace"]


def test_a_page_without_a_cut_off_leaves_the_key_out(history: History) -> None:
    page = replace(make_page(history), data_cutoff=None)
    doc = orjson.loads(page.to_json())
    validate(doc)
    assert "data_cutoff" not in doc
    assert Page.from_json(page.to_json()).data_cutoff is None


def test_warnings_are_in_the_trace_and_on_the_page(history: History) -> None:
    assembled = make_page(history).trace
    assert isinstance(assembled, PageTrace)
    warned = replace(make_page(history), trace=replace(assembled, warnings=("stale data",)))
    assert warned.warnings == ("stale data",)
    doc = orjson.loads(warned.to_json(include_trace=True))
    assert doc["trace"]["warnings"] == ["stale data"]
    assert "warnings" not in orjson.loads(warned.to_json())  # the page itself is unchanged
    assert make_page(history).warnings == ()


def test_to_frame_has_a_row_per_item_in_page_order(history: History) -> None:
    page = make_page(history)
    frame = page.to_frame()
    items = [(r, row, p, it) for r, row in enumerate(page.rows) for p, it in enumerate(row.items)]
    assert frame.height == len(items) > 0
    assert frame.schema == PAGE_FRAME_SCHEMA
    assert frame["row_index"].to_list() == [r for r, *_ in items]
    assert frame["position"].to_list() == [p for _, _, p, _ in items]
    assert frame["row_id"].to_list() == [row.row_id for _, row, _, _ in items]
    assert frame["title_id"].to_list() == [it.title_id for *_, it in items]
    assert frame["score"].to_list() == [it.score for *_, it in items]
    assert frame["progress"].to_list() == [it.progress for *_, it in items]
    assert set(frame["user_id"]) == {"u1"} and set(frame["device"]) == {"tv"}
    assert set(frame["country"]) == {"FR"} and set(frame["hour"]) == {21}
    # The Continue Watching row carries progress; the frame keeps it per item.
    assert frame.filter(pl.col("kind") == "continue_watching")["progress"].null_count() == 0
    empty = replace(page, rows=())
    assert empty.to_frame().height == 0 and empty.to_frame().schema == PAGE_FRAME_SCHEMA


def test_fallback_flag_is_written(history: History) -> None:
    doc = orjson.loads(make_page(history, fallback=True).to_json())
    validate(doc)
    assert doc["fallback"] is True


def set_first_item(page: Page, **change: object) -> Page:
    row = page.rows[0]
    items = (replace(row.items[0], **change), *row.items[1:])  # type: ignore[arg-type]
    return replace(page, rows=(replace(row, items=items), *page.rows[1:]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_raise(history: History, bad: float) -> None:
    page = make_page(history)
    with pytest.raises(ValueError, match="non-finite"):
        set_first_item(page, score=bad).to_json()
    with pytest.raises(ValueError, match="progress"):
        set_first_item(page, progress=bad).to_json()
    with pytest.raises(ValueError, match="score"):
        replace(page, rows=(replace(page.rows[0], score=bad), *page.rows[1:])).to_json()
    with pytest.raises(ValueError, match="evidence"):
        bad_evidence = replace(page.rows[1], evidence={"x": [1.0, bad]})
        replace(page, rows=(page.rows[0], bad_evidence, *page.rows[2:])).to_json()


def test_unserializable_evidence_raises(history: History) -> None:
    page = make_page(history)
    with pytest.raises(TypeError, match="evidence"):
        replace(page, rows=(replace(page.rows[0], evidence={"x": object()}),)).to_json()


def test_naive_times_are_refused(history: History) -> None:
    page = make_page(history)
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(page, generated_at=datetime(2026, 1, 1))


def test_generated_at_is_written_in_utc(history: History) -> None:
    paris = timezone(timedelta(hours=1))
    page = replace(make_page(history), generated_at=GENERATED.astimezone(paris))
    assert orjson.loads(page.to_json())["generated_at"] == "2026-11-27T20:00:01.250000+00:00"


def test_empty_page_is_valid(history: History) -> None:
    page = replace(make_page(history), rows=())
    validate(orjson.loads(page.to_json()))


def test_item_default_progress_is_null() -> None:
    assert PageItem("t1", "x", 1.0).progress is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda v: v != 0),
        min_size=1,
        max_size=20,
    )
)
def test_round_significant_keeps_six_digits(values: list[float]) -> None:
    x = np.array(values)
    r = round_significant(x)
    ulp6 = 10.0 ** (np.floor(np.log10(np.abs(x))) - 5)
    assert np.all(np.abs(r - x) <= 0.5 * ulp6 * (1 + 1e-9))
    for v in r.tolist():
        digits = repr(abs(v)).split("e")[0].replace(".", "").strip("0")
        assert len(digits) <= 6, v
    np.testing.assert_array_equal(round_significant(r), r)  # idempotent: stable goldens
    assert round_significant(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_one_float_rounds_exactly_as_an_array_does(value: float) -> None:
    """Evidence floats go through the scalar path, row and item scores through the array one:
    the same number must give the same bytes either way."""
    assert _round_one(value) == round_significant(np.array([value]))[0]
