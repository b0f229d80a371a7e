"""The Page: what the engine answers, as frozen dataclasses, and its JSON contract.

`build_page` turns an assembled page into a Page; `Page.to_json` writes the bytes described
by engine/request/page.schema.json (docs/page.md). Same Page, same bytes: keys in contract order,
floats rounded to 6 significant digits, times in ISO 8601. A non-finite number raises instead of
becoming `null` (orjson writes NaN as null without complaint).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, cached_property
from importlib import resources
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import polars as pl

from engine.candidates import CandidateRow
from engine.data.columns import Col
from engine.data.history import History
from engine.request.context import RequestContext
from engine.request.selectors import AssembledPage, AssemblyTrace

SCHEMA_FILE = "page.schema.json"
SIGNIFICANT_DIGITS = 6
# Page.to_frame's columns, in order (dataset column names where the dataset has them).
PAGE_FRAME_SCHEMA = pl.Schema(
    {
        Col.USER_ID: pl.String,
        Col.DEVICE: pl.String,
        Col.COUNTRY: pl.String,
        "hour": pl.Int8,  # the member's local hour and weekday (Monday = 0)
        "weekday": pl.Int8,
        Col.ROW_INDEX: pl.Int32,
        Col.ROW_ID: pl.String,
        "kind": pl.String,  # the row's kind (PageRow.kind)
        "ranker": pl.String,
        "row_title": pl.String,
        "row_score": pl.Float64,
        Col.POSITION: pl.Int32,
        Col.TITLE_ID: pl.String,
        Col.NAME: pl.String,
        "score": pl.Float64,
        Col.PROGRESS: pl.Float64,
    }
)


@dataclass(frozen=True)
class PageItem:
    title_id: str
    name: str
    score: float
    progress: float | None = None  # fraction watched, for rows where it applies


@dataclass(frozen=True)
class PageRow:
    row_id: str
    kind: str  # the ranker type's row kind, e.g. "trending"; plug-ins add their own
    ranker: str  # the ranker instance name
    title: str  # display label
    evidence: Mapping[str, Any] | None
    score: float  # the page model's row score
    items: tuple[PageItem, ...]


@dataclass(frozen=True)
class PageContext:
    device: str
    local_time: datetime  # the member's local time, aware
    hour: int
    weekday: int  # Monday = 0
    country: str | None

    @classmethod
    def from_request(cls, request: RequestContext) -> PageContext:
        return cls(request.device, request.at, request.hour, request.weekday, request.country)


@dataclass(frozen=True)
class Page:
    """One member's page. `trace` explains it (rankers run and failed, filter removals, the
    assembly trace); it is left out of equality and, unless asked for, out of the JSON."""

    user_id: str
    generated_at: datetime  # aware; written in UTC
    model_version: str
    context: PageContext
    rows: tuple[PageRow, ...]
    fallback: bool = False
    trace: Mapping[str, Any] = field(default_factory=dict, compare=False)
    data_cutoff: datetime | None = None  # aware: the end of the model's data; written in UTC

    def __post_init__(self) -> None:
        for name, ts in (
            ("generated_at", self.generated_at),
            ("local_time", self.context.local_time),
            ("data_cutoff", self.data_cutoff),
        ):
            if ts is not None and ts.tzinfo is None:
                raise ValueError(f"page for {self.user_id}: {name} must be timezone-aware")

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the engine warns about this page (the trace's "warnings"): e.g. a request long
        past the model's data cut-off."""
        return tuple(self.trace.get("warnings", ()))

    def to_dict(self, *, include_trace: bool = False) -> dict[str, Any]:
        """The JSON document as Python values (rounded, checked), keys in contract order."""
        ctx = self.context
        doc: dict[str, Any] = {
            "user_id": self.user_id,
            "generated_at": self.generated_at.astimezone(UTC).isoformat(),
            "model_version": self.model_version,
            **(
                {"data_cutoff": self.data_cutoff.astimezone(UTC).isoformat()}
                if self.data_cutoff is not None
                else {}
            ),
            "context": {
                "device": ctx.device,
                "local_time": ctx.local_time.isoformat(),
                "hour": ctx.hour,
                "weekday": ctx.weekday,
                "country": ctx.country,
            },
            "rows": _row_docs(self.rows),
            "fallback": self.fallback,
        }
        if include_trace:
            doc["trace"] = to_plain(self.trace, "trace")
        return doc

    def to_json(self, *, include_trace: bool = False) -> bytes:
        """The page as JSON bytes (schema: engine/request/page.schema.json)."""
        return orjson.dumps(self.to_dict(include_trace=include_trace))

    def to_frame(self) -> pl.DataFrame:
        """One row per title shown, top row first, in row order (polars; PAGE_FRAME_SCHEMA):
        the request (user_id, device, country, the member's local hour and weekday), the row
        (row_index, row_id, kind, ranker, row_title, row_score) and the title in it (position,
        title_id, name, score, progress)."""
        items = [i for r in self.rows for i in r.items]
        ctx = self.context
        per_item = [len(r.items) for r in self.rows]
        n = len(items)
        columns = (  # in PAGE_FRAME_SCHEMA's order
            [self.user_id] * n,
            [ctx.device] * n,
            [ctx.country] * n,
            [ctx.hour] * n,
            [ctx.weekday] * n,
            [r for r, k in enumerate(per_item) for _ in range(k)],
            [r.row_id for r in self.rows for _ in r.items],
            [r.kind for r in self.rows for _ in r.items],
            [r.ranker for r in self.rows for _ in r.items],
            [r.title for r in self.rows for _ in r.items],
            [r.score for r in self.rows for _ in r.items],
            [p for k in per_item for p in range(k)],
            [i.title_id for i in items],
            [i.name for i in items],
            [i.score for i in items],
            [i.progress for i in items],
        )
        return pl.DataFrame(
            dict(zip(PAGE_FRAME_SCHEMA.names(), columns, strict=True)), schema=PAGE_FRAME_SCHEMA
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Page:
        """Read bytes `to_json` wrote (a trace, when present, comes back as plain JSON)."""
        doc = orjson.loads(data)
        try:
            c = doc["context"]
            context = PageContext(
                c["device"],
                datetime.fromisoformat(c["local_time"]),
                c["hour"],
                c["weekday"],
                c["country"],
            )
            rows = tuple(
                PageRow(
                    r["row_id"],
                    r["kind"],
                    r["ranker"],
                    r["title"],
                    r["evidence"],
                    r["score"],
                    tuple(
                        PageItem(i["title_id"], i["name"], i["score"], i["progress"])
                        for i in r["items"]
                    ),
                )
                for r in doc["rows"]
            )
            cutoff = doc.get("data_cutoff")
            return cls(
                doc["user_id"],
                datetime.fromisoformat(doc["generated_at"]),
                doc["model_version"],
                context,
                rows,
                doc["fallback"],
                doc.get("trace", {}),
                None if cutoff is None else datetime.fromisoformat(cutoff),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a rowrank page document ({exc!r}); see docs/page.md") from exc


@dataclass(frozen=True, eq=False)
class PageTrace(Mapping[str, Any]):
    """Why a page is what it is, built once when the page is done and read as its JSON object
    (the page's "trace", docs/page.md): a Mapping over that object, keys in contract order.
    Fields left None are not part of the page's story (a fallback page built without rankers
    has only its assembly) and are left out."""

    assembly: AssemblyTrace
    title_ids: np.ndarray = field(repr=False)  # History.title_ids: duplicates are given by id
    cold_start: bool | None = None
    rankers: Mapping[str, int] | None = None  # ranker instance -> rows proposed
    failed_rankers: Mapping[str, str] | None = None  # ranker instance -> "ErrorType: message"
    filters: Mapping[str, Mapping[str, int]] | None = None  # row id -> titles removed per filter
    pvr_features: str | None = None  # why the ut_pvr_* features are missing
    reason: str | None = None  # why the page is a fallback page
    continuation_mode: bool | None = None
    scored: tuple[int, int] | None = None  # (rows, pairs) the title model scored
    warnings: tuple[str, ...] | None = None  # for the caller: the CLI's stderr, an HTTP header

    @cached_property
    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.cold_start is not None:
            doc["cold_start"] = self.cold_start
        if self.rankers is not None:
            doc["rankers"] = self.rankers
        if self.failed_rankers is not None:
            doc["failed_rankers"] = [
                {"ranker": name, "error": err} for name, err in self.failed_rankers.items()
            ]
        if self.filters is not None:
            doc["filters"] = self.filters
        if self.pvr_features:
            doc["pvr_features"] = self.pvr_features
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.continuation_mode is not None:
            doc["continuation_mode"] = self.continuation_mode
        if self.scored is not None:
            doc["scored"] = {"rows": self.scored[0], "pairs": self.scored[1]}
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        doc["assembly"] = self.assembly.to_dict(self.title_ids)
        return doc

    def __getitem__(self, key: str) -> Any:
        return self._doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)


def build_page(
    assembled: AssembledPage,
    history: History,
    request: RequestContext,
    *,
    model_version: str,
    data_cutoff: datetime | None = None,
    generated_at: datetime | None = None,
    fallback: bool = False,
    trace: PageTrace | None = None,
) -> Page:
    """The Page for an assembled page: ids and names looked up by array, not per title.
    `trace` defaults to the assembly's alone. `generated_at` defaults to now (UTC)."""
    rows = tuple(
        _page_row(row, float(score), history)
        for row, score in zip(assembled.rows, assembled.scores.tolist(), strict=True)
    )
    return Page(
        user_id=request.user_id,
        generated_at=datetime.now(UTC) if generated_at is None else generated_at,
        model_version=model_version,
        context=PageContext.from_request(request),
        rows=rows,
        fallback=fallback,
        trace=PageTrace(assembled.trace, history.title_ids) if trace is None else trace,
        data_cutoff=data_cutoff,
    )


@cache
def page_schema() -> dict[str, Any]:
    """The page's JSON Schema (draft 2020-12), shipped as engine/request/page.schema.json."""
    text = resources.files("engine.request").joinpath(SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


def round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """Round to `digits` significant digits (float64), so written floats are short and stable.

    Scaling by an exact power of ten (10**k is exact up to k = 22) keeps the result the double
    nearest the rounded decimal; the rare value outside that range goes through `%g`."""
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    nonzero = np.flatnonzero(np.isfinite(x) & (x != 0))
    if len(nonzero) == 0:
        return out
    shift = digits - 1 - np.floor(np.log10(np.abs(x[nonzero]))).astype(np.int64)
    exact = np.abs(shift) <= 22
    up, down = nonzero[exact & (shift >= 0)], nonzero[exact & (shift < 0)]
    scale_up, scale_down = 10.0 ** shift[exact & (shift >= 0)], 10.0 ** -shift[exact & (shift < 0)]
    out[up] = np.round(x[up] * scale_up) / scale_up
    out[down] = np.round(x[down] / scale_down) * scale_down
    for i in nonzero[~exact]:
        out[i] = float(f"{x[i]:.{digits}g}")
    return out


def _round_one(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`round_significant` for one finite float, without numpy's per-call overhead (evidence
    values are rounded one by one); the same arithmetic, so the same result."""
    if x == 0:
        return x
    shift = digits - 1 - math.floor(math.log10(abs(x)))
    if abs(shift) > 22:
        return float(f"{x:.{digits}g}")
    if shift >= 0:
        scale = 10.0**shift
        return round(x * scale) / scale
    scale = 10.0**-shift
    return round(x / scale) * scale


def to_plain(value: Any, where: str) -> Any:
    """JSON-ready copy of a small nested value (evidence, trace): numpy to Python, floats
    checked finite and rounded, datetimes to ISO 8601, tuples to lists."""
    if isinstance(value, np.generic):
        return to_plain(value.item(), where)
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: JSON object keys must be strings, got {bad!r}")
        return {k: to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist(), where)
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite value {value}; a page never carries NaN")
        return _round_one(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serializable ({value!r})")


# ----- internals ------------------------------------------------------------------------------


def _page_row(row: CandidateRow, score: float, history: History) -> PageRow:
    ids = history.title_ids[row.titles].tolist()
    names = history.title_names[row.titles].tolist()
    progress = repeat(None) if row.progress is None else row.progress.tolist()
    items = tuple(map(PageItem, ids, names, row.scores.tolist(), progress))
    return PageRow(row.row_id, row.kind, row.ranker, row.title, row.evidence, score, items)


def _row_docs(rows: tuple[PageRow, ...]) -> list[dict[str, Any]]:
    """The rows' JSON objects. Every number of the page is checked and rounded in one batch."""
    items = [i for r in rows for i in r.items]
    n = len(items)
    owner = np.repeat(np.arange(len(rows)), [len(r.items) for r in rows])
    row_score = np.fromiter((r.score for r in rows), np.float64, len(rows))
    item_score = np.fromiter((i.score for i in items), np.float64, n)
    has = [i.progress is not None for i in items]
    progress = np.fromiter((i.progress or 0.0 for i in items), np.float64, n)
    for values, rows_of, what in (
        (row_score, np.arange(len(rows)), "row score"),
        (item_score, owner, "item score"),
        (progress, owner, "item progress"),
    ):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            where = f"row {rows[rows_of[bad[0]]].row_id}"
            raise ValueError(
                f"{where}: non-finite {what} {values[bad[0]]}; a page never carries NaN or "
                f"infinity ({len(bad)} such value(s) on the page)"
            )
    # One rounding call for the page's numbers (elementwise, so the same as one per kind).
    rounded = round_significant(np.concatenate([row_score, item_score, progress])).tolist()
    row_scores, scores = rounded[: len(rows)], rounded[len(rows) : len(rows) + n]
    fractions = [p if h else None for p, h in zip(rounded[len(rows) + n :], has, strict=True)]
    docs: list[dict[str, Any]] = []
    start = 0
    for row, score in zip(rows, row_scores, strict=True):
        end = start + len(row.items)
        docs.append(
            {
                "row_id": row.row_id,
                "kind": row.kind,
                "ranker": row.ranker,
                "title": row.title,
                "evidence": to_plain(row.evidence, f"row {row.row_id} evidence"),
                "score": score,
                "items": [
                    {"title_id": i.title_id, "name": i.name, "score": s, "progress": p}
                    for i, s, p in zip(
                        row.items, scores[start:end], fractions[start:end], strict=True
                    )
                ],
            }
        )
        start = end
    return docs
