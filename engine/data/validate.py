"""Reading and checking a dataset directory (docs/data.md).

Two layers, so each problem is reported once:
- `read_tables` / `conform_dataset`: the structure. Files present and readable, required columns
  present, dtypes right. Accepted dtype variants (any integer width, Float64, timestamps in any
  unit) are normalised to the schema dtype; anything else is a problem, never a silent cast, and
  the offending column is dropped so nothing downstream reads it.
- `validate_dataset`: the rules on the values, all of them, every problem at once. Rules whose
  columns are missing or of the wrong dtype are skipped: the structure layer already said so.

Every message names the file, the column, the rule and up to five offending rows (row numbers
count from 0, as in polars), e.g.
`plays.parquet: column progress: must be within [0, 1]; 3 rows break it, e.g. row 17 (...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from engine.data.columns import (
    COUNTRY_CODE,
    DEVICES,
    IMPRESSIONS,
    MATURITY_LEVELS,
    OPTIONAL_TABLES,
    PLAYS,
    REQUIRED_TABLES,
    SCHEMA,
    TITLE_KINDS,
    TITLES,
    USERS,
    Col,
    Column,
    empty_table,
)
from engine.data.dataset import MANIFEST, SCHEMA_VERSION, Dataset, to_utc

MAX_EXAMPLES = 5
# The row number column the rules add (rows count from 0 in file order).
ROW = "__row"
# Impression rows whose slot hashes one pass of the duplicate-slot check groups in memory.
SLOT_ROWS_PER_PASS = 8_000_000
# Time zones taken as UTC without conversion doubts.
UTC_NAMES = frozenset({"UTC", "Etc/UTC"})
# Earliest plausible release year (the first films date from the late 1880s).
MIN_RELEASE_YEAR = 1870
# A title may be announced before release; beyond this many years past the clock is a typo.
RELEASE_YEAR_SLACK = 5
# Columns that identify a row in the examples of a message.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    TITLES: (Col.TITLE_ID,),
    USERS: (Col.USER_ID,),
    PLAYS: (Col.USER_ID, Col.TITLE_ID),
    IMPRESSIONS: (Col.PAGE_ID, Col.ROW_INDEX, Col.POSITION),
}


# ----- structure ---------------------------------------------------------------------------------


def read_tables(directory: Path) -> tuple[Dataset, list[str]]:
    """Read `<table>.parquet` files and `dataset.json` from `directory`.

    Returns the dataset (normalised to the schema dtypes) and the structural problems found:
    missing or unreadable files, a bad manifest, missing required columns, wrong dtypes. A table
    that cannot be read comes back empty, so the value rules can still run on the others.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return _empty_dataset(), [f"{directory}: no such dataset directory"]
    problems: list[str] = []
    clock, source = _read_manifest(directory, problems)
    frames: dict[str, pl.DataFrame | pl.LazyFrame | None] = {}
    for table in (*REQUIRED_TABLES, *OPTIONAL_TABLES):
        path = directory / f"{table}.parquet"
        if not path.is_file():
            if table in REQUIRED_TABLES:
                problems.append(
                    f"{path.name}: file is missing; every dataset needs "
                    + ", ".join(f"{t}.parquet" for t in REQUIRED_TABLES)
                )
                frames[table] = empty_table(table)
            else:
                frames[table] = None
            continue
        try:
            scan, found = conform_table(table, pl.scan_parquet(path))
            if table == IMPRESSIONS:
                # They stay a scan (engine.data.dataset); one streaming pass decodes every
                # column now, so a damaged page is reported here, not half way through training.
                scan.select(pl.all().null_count()).collect(engine="streaming")
                frames[table] = scan
            else:
                frames[table] = scan.collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{path.name}: cannot be read as Parquet ({reason}); rewrite the file")
            frames[table] = empty_table(table)
            continue
        problems += found
    titles, users, plays = frames[TITLES], frames[USERS], frames[PLAYS]
    assert isinstance(titles, pl.DataFrame) and isinstance(users, pl.DataFrame)
    assert isinstance(plays, pl.DataFrame)
    imp = frames[IMPRESSIONS]
    ds = Dataset(
        titles=titles,
        users=users,
        plays=plays,
        impressions=None if imp is None else imp.lazy(),
        clock=clock,
        source=source,
    )
    return ds, problems


def conform_dataset(ds: Dataset) -> tuple[Dataset, list[str]]:
    """The structural checks of `read_tables` for a dataset built in code (e.g. a simulator):
    normalise accepted dtype variants, report missing columns and wrong dtypes."""
    problems: list[str] = []
    frames: dict[str, pl.LazyFrame] = {}
    for table, frame in _lazy_tables(ds).items():
        frames[table], found = conform_table(table, frame)
        problems += found
    ds = replace(
        ds,
        titles=frames[TITLES].collect(),
        users=frames[USERS].collect(),
        plays=frames[PLAYS].collect(),
        impressions=frames.get(IMPRESSIONS),
        clock=to_utc(ds.clock),
    )
    return ds, problems


def _lazy_tables(ds: Dataset) -> dict[str, pl.LazyFrame]:
    out = {TITLES: ds.titles.lazy(), USERS: ds.users.lazy(), PLAYS: ds.plays.lazy()}
    if ds.impressions is not None:
        out[IMPRESSIONS] = ds.impressions
    return out


def conform_table(table: str, frame: pl.LazyFrame) -> tuple[pl.LazyFrame, list[str]]:
    """Check one table's columns against SCHEMA; return the normalised frame and the problems.

    Accepted without complaint and cast to the schema dtype: any integer width for integer
    columns (when every value fits), Float32 or Float64 for float columns, Datetime in any unit
    with time zone UTC for timestamps, and an all-null column (dtype Null) for nullable columns.
    A column with any other dtype is reported and dropped. Extra columns are kept as they are.
    """
    file = f"{table}.parquet"
    problems: list[str] = []
    casts: list[pl.Expr] = []
    drop: list[str] = []
    schema = frame.collect_schema()
    for col in SCHEMA[table]:
        if col.name not in schema:
            if col.required:
                problems.append(f"{file}: column {col.name}: required column is missing")
            continue
        actual = schema[col.name]
        if actual == col.dtype:
            continue
        if not _accepted(actual, col):
            problems.append(
                f"{file}: column {col.name}: must have dtype {col.dtype}, found {actual}"
                + _dtype_hint(actual, col)
            )
            drop.append(col.name)
            continue
        if col.dtype.is_integer() and actual.is_integer():
            overflow = (
                pl.col(col.name).cast(col.dtype, strict=False).is_null()
                & pl.col(col.name).is_not_null()
            )
            found = _rows_message(
                frame.with_row_index(ROW),
                table,
                col.name,
                f"must fit dtype {col.dtype}",
                overflow,
                (col.name,),
            )
            if found:
                problems.append(found)
                drop.append(col.name)
                continue
        if isinstance(col.dtype, pl.Datetime):
            casts.append(
                pl.col(col.name).dt.convert_time_zone("UTC").dt.cast_time_unit(col.dtype.time_unit)
            )
        else:
            casts.append(pl.col(col.name).cast(col.dtype))
    if casts:
        frame = frame.with_columns(casts)
    return frame.drop(drop), problems


def _accepted(actual: pl.DataType, col: Column) -> bool:
    if col.nullable and actual == pl.Null:
        return True
    if col.dtype.is_integer():
        return actual.is_integer()
    if col.dtype.is_float():
        return actual in (pl.Float32, pl.Float64)
    if isinstance(col.dtype, pl.Datetime):
        return isinstance(actual, pl.Datetime) and actual.time_zone in UTC_NAMES
    return False


def _dtype_hint(actual: pl.DataType, col: Column) -> str:
    if isinstance(col.dtype, pl.Datetime) and isinstance(actual, pl.Datetime):
        if actual.time_zone is None:
            return (
                " (timestamps must carry time zone UTC: if they are UTC already, use "
                "pl.col(...).dt.replace_time_zone('UTC'), else convert them)"
            )
        return " (convert with pl.col(...).dt.convert_time_zone('UTC'))"
    if col.dtype == pl.String and actual.is_numeric():
        return " (ids and codes are strings: cast with pl.col(...).cast(pl.String))"
    return ""


def _read_manifest(directory: Path, problems: list[str]) -> tuple[datetime, str]:
    """Clock and source from dataset.json; a missing manifest means clock = now (UTC)."""
    path = directory / MANIFEST
    now = datetime.now(UTC)
    if not path.is_file():
        return now, "unknown"
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        problems.append(f"{MANIFEST}: not valid JSON ({exc})")
        return now, "unknown"
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST}: must be a JSON object with a clock")
        return now, "unknown"
    version = manifest.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        problems.append(
            f"{MANIFEST}: schema_version {version!r} is not {SCHEMA_VERSION}, the version this "
            "rowrank reads"
        )
    source = str(manifest.get("source", "unknown"))
    raw = manifest.get("clock")
    if raw is None:
        problems.append(
            f"{MANIFEST}: clock is missing; set it to the export time, e.g. "
            '"clock": "2024-06-01T00:00:00+00:00"'
        )
        return now, source
    try:
        clock = datetime.fromisoformat(str(raw))
    except ValueError:
        problems.append(
            f"{MANIFEST}: clock {raw!r} is not an ISO 8601 time like 2024-06-01T00:00:00+00:00"
        )
        return now, source
    if clock.tzinfo is None:
        problems.append(
            f"{MANIFEST}: clock {raw!r} has no time zone; write it in UTC with +00:00 or Z"
        )
    try:
        return to_utc(clock), source
    except OverflowError:
        problems.append(
            f"{MANIFEST}: clock {raw!r} is out of range: in UTC it falls outside the years 1-9999"
        )
        return now, source


def _empty_dataset() -> Dataset:
    return Dataset(
        titles=empty_table(TITLES),
        users=empty_table(USERS),
        plays=empty_table(PLAYS),
        impressions=None,
        clock=datetime.now(UTC),
    )


# ----- value rules -------------------------------------------------------------------------------


class _Checker:
    """Runs rules on one table and words the problems; skips rules on unusable columns.

    Rules run as polars queries on a lazy frame with each row's number in `ROW`, in the
    streaming engine: a table that does not fit in memory (impressions) is checked in a pass
    per rule, and only the rows that break a rule are ever collected."""

    def __init__(self, table: str, frame: pl.LazyFrame, problems: list[str]) -> None:
        self.table = table
        self.frame = frame.with_row_index(ROW)
        self.problems = problems
        expected = {c.name: c.dtype for c in SCHEMA[table]}
        self.usable = {
            name
            for name, dtype in frame.collect_schema().items()
            if expected.get(name, dtype) == dtype
        }

    def has(self, *columns: str) -> bool:
        return all(c in self.usable for c in columns)

    def rule(
        self,
        column: str,
        rule: str,
        bad: pl.Expr,
        frame: pl.LazyFrame | None = None,
        show: Sequence[str] = (),
    ) -> None:
        """Report rows where `bad` is true (null counts as fine: nulls have their own rule).
        `frame`, when given, is `self.frame` with helper columns (`__...`) added."""
        frame = self.frame if frame is None else frame
        names = bad.meta.root_names()
        if not all(r in frame.collect_schema() for r in names):
            return
        # Helper columns (`__...`) come from another table; the rest must be usable here.
        roots = [r for r in names if not r.startswith("__")]
        if not self.has(*roots):
            return
        found = _rows_message(frame, self.table, column, rule, bad, (*roots, *show))
        if found:
            self.problems.append(found)


def _rows_message(
    frame: pl.LazyFrame,
    table: str,
    column: str,
    rule: str,
    bad: pl.Expr,
    columns: Sequence[str] = (),
) -> str:
    """The problem of the rows of `frame` (numbered in `ROW`) where `bad` holds; "" if none."""
    hits = frame.filter(bad.fill_null(False))
    first = pl.col(ROW).bottom_k(MAX_EXAMPLES).implode().alias("rows")
    got = hits.select(pl.len().alias("n"), first).collect(engine="streaming")
    n = int(got["n"][0])
    if n == 0:
        return ""
    rows = sorted(int(r) for r in got["rows"][0])
    schema = frame.collect_schema()
    shown = list(dict.fromkeys([*KEY_COLUMNS[table], *columns]))
    shown = [c for c in shown if c in schema]
    picked = frame.filter(pl.col(ROW).is_in(rows)).sort(ROW).select(shown).collect()
    try:
        sample = picked.to_dicts()
    except (OverflowError, ValueError):
        # A time outside Python's years 1-9999 (a unit mix-up, usually): polars' text of it.
        sample = picked.with_columns(pl.col(pl.Datetime).dt.to_string()).to_dicts()
    examples = ", ".join(
        f"row {r} (" + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) + ")"
        for r, values in zip(rows, sample, strict=True)
    )
    more = ", ..." if n > len(rows) else ""
    verb = "row breaks" if n == 1 else "rows break"
    return f"{table}.parquet: column {column}: {rule}; {n:,} {verb} it, e.g. {examples}{more}"


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _one_of(values: Sequence[object]) -> str:
    return "must be one of " + ", ".join(str(v) for v in values)


def _lookup(
    frame: pl.LazyFrame, key: str, other: pl.DataFrame, value: str, alias: str
) -> pl.LazyFrame:
    """`frame` with `other[value]` looked up by `key` as column `alias`."""
    if key not in frame.collect_schema() or key not in other.columns or value not in other.columns:
        return frame
    table = other.select(key, pl.col(value).alias(alias)).unique(key, keep="first")
    return frame.join(table.lazy(), on=key, how="left", maintain_order="left")


def _duplicated_slots(
    frame: pl.LazyFrame, slot: Sequence[str], rows_per_pass: int = SLOT_ROWS_PER_PASS
) -> pl.Series:
    """The numbers (`ROW`) of rows whose `slot` columns another row shares. A 64-bit hash of
    each row's slot finds the candidates in streaming passes over fixed-width values, each pass
    grouping the rows whose hash falls in its share (rows with equal slots share a pass), so no
    pass holds more than about `rows_per_pass` hashes; the exact comparison, which copies every
    row's string key, runs on the candidates alone."""
    h = pl.lit(0, dtype=pl.UInt64)
    for seed, name in enumerate(slot):
        h = h ^ pl.col(name).hash(seed)
    hashed = frame.with_columns(h.alias("__slot"))
    n = int(frame.select(pl.len()).collect(engine="streaming").item())
    passes = max(1, -(-n // rows_per_pass))
    found = []
    for k in range(passes):
        part = hashed.filter(pl.col("__slot") % passes == k)
        shared = part.group_by("__slot").agg(pl.len()).filter(pl.col("len") > 1).select("__slot")
        maybe = part.join(shared, on="__slot", how="semi").select(ROW, *slot)
        rows = maybe.collect(engine="streaming")
        found.append(rows.filter(pl.struct(list(slot)).is_duplicated())[ROW])
    return pl.concat(found).sort()


def _pages_where(frame: pl.LazyFrame, bad: pl.Expr) -> pl.Series:
    """The page ids (null included) of the pages whose rows make the aggregate `bad` true."""
    pages = frame.group_by(Col.PAGE_ID).agg(bad.alias("__bad")).filter(pl.col("__bad"))
    return pages.select(Col.PAGE_ID).collect(engine="streaming")[Col.PAGE_ID]


def validate_dataset(ds: Dataset) -> list[str]:
    """Every value rule of docs/data.md; returns all problems (empty list: the data is clean).

    Expects frames as `read_tables` / `conform_dataset` return them.
    """
    problems: list[str] = []
    clock = to_utc(ds.clock)
    clock_lit = pl.lit(clock).dt.cast_time_unit("us")
    after_clock = f"must not be later than the dataset clock {clock.isoformat()}"
    for table, frame in _lazy_tables(ds).items():
        check = _Checker(table, frame, problems)
        for col in SCHEMA[table]:
            if not col.nullable:
                check.rule(col.name, "must not be null", pl.col(col.name).is_null())
            if col.dtype.is_float():
                check.rule(
                    col.name,
                    "must be a finite number (not NaN or infinite)",
                    ~pl.col(col.name).is_finite(),
                )
            if col.dtype == pl.List(pl.String):
                check.rule(
                    col.name,
                    "lists must not contain nulls",
                    pl.col(col.name).list.eval(pl.element().is_null()).list.any(),
                )

    titles_ok = _Checker(TITLES, ds.titles.lazy(), []).has(Col.TITLE_ID)
    users_ok = _Checker(USERS, ds.users.lazy(), []).has(Col.USER_ID)
    title_ids = ds.titles[Col.TITLE_ID].implode() if titles_ok else None
    user_ids = ds.users[Col.USER_ID].implode() if users_ok else None

    # titles
    t = _Checker(TITLES, ds.titles.lazy(), problems)
    t.rule(Col.TITLE_ID, "must be unique", pl.col(Col.TITLE_ID).is_duplicated())
    t.rule(Col.NAME, "must not be empty", pl.col(Col.NAME).str.strip_chars().str.len_chars() == 0)
    t.rule(Col.KIND, _one_of(TITLE_KINDS), ~pl.col(Col.KIND).is_in(TITLE_KINDS))
    t.rule(Col.MATURITY, _one_of(MATURITY_LEVELS), ~pl.col(Col.MATURITY).is_in(MATURITY_LEVELS))
    max_year = clock.year + RELEASE_YEAR_SLACK
    t.rule(
        Col.RELEASE_YEAR,
        f"must be within [{MIN_RELEASE_YEAR}, {max_year}] (clock year + {RELEASE_YEAR_SLACK})",
        ~pl.col(Col.RELEASE_YEAR).is_between(MIN_RELEASE_YEAR, max_year),
    )
    t.rule(Col.DURATION_MIN, "must be greater than 0", pl.col(Col.DURATION_MIN) <= 0)
    t.rule(
        Col.COUNTRIES,
        "must hold two-letter upper-case ISO 3166 codes like US, FR (empty list = everywhere)",
        pl.col(Col.COUNTRIES).list.eval(~pl.element().str.contains(COUNTRY_CODE)).list.any(),
    )
    t.rule(Col.ADDED_AT, after_clock, pl.col(Col.ADDED_AT) > clock_lit)
    if t.has(Col.SERIES_ID):
        missing_series = pl.col(Col.EPISODE).is_not_null() & pl.col(Col.SERIES_ID).is_null()
    else:
        missing_series = pl.col(Col.EPISODE).is_not_null()
    t.rule(Col.EPISODE, "an episode needs a series_id", missing_series, show=(Col.SERIES_ID,))
    t.rule(Col.EPISODE, "must be at least 1", pl.col(Col.EPISODE) < 1)

    # users
    u = _Checker(USERS, ds.users.lazy(), problems)
    u.rule(Col.USER_ID, "must be unique", pl.col(Col.USER_ID).is_duplicated())
    u.rule(
        Col.COUNTRY,
        "must be a two-letter upper-case ISO 3166 code like US, FR, or null",
        ~pl.col(Col.COUNTRY).str.contains(COUNTRY_CODE),
    )
    u.rule(
        Col.MATURITY_MAX, _one_of(MATURITY_LEVELS), ~pl.col(Col.MATURITY_MAX).is_in(MATURITY_LEVELS)
    )
    u.rule(Col.CREATED_AT, after_clock, pl.col(Col.CREATED_AT) > clock_lit)

    # plays
    p = _Checker(PLAYS, ds.plays.lazy(), problems)
    _event_rules(p, ds, title_ids, user_ids, clock_lit, after_clock)
    p.rule(Col.SECONDS_WATCHED, "must not be negative", pl.col(Col.SECONDS_WATCHED) < 0)
    # NaN has its own rule above; report it once.
    p.rule(
        Col.PROGRESS,
        "must be within [0, 1]",
        ~pl.col(Col.PROGRESS).is_between(0.0, 1.0) & pl.col(Col.PROGRESS).is_not_nan(),
    )

    # impressions
    if ds.impressions is not None:
        i = _Checker(IMPRESSIONS, ds.impressions, problems)
        _event_rules(i, ds, title_ids, user_ids, clock_lit, after_clock)
        i.rule(Col.ROW_INDEX, "must not be negative", pl.col(Col.ROW_INDEX) < 0)
        i.rule(Col.POSITION, "must not be negative", pl.col(Col.POSITION) < 0)
        slot = [Col.PAGE_ID, Col.ROW_INDEX, Col.POSITION]
        if i.has(*slot):
            i.rule(
                Col.POSITION,
                "each (page_id, row_index, position) slot must hold one title",
                pl.col(ROW).is_in(_duplicated_slots(i.frame, slot).implode()),
                show=slot,
            )
        # Nulls are reported by the null rule, not here. A page is shown on one device, known
        # or not: null next to "tv" is a mismatch too.
        per_page = (
            (Col.USER_ID, "user", pl.col(Col.USER_ID).drop_nulls().n_unique() > 1),
            (Col.TS, "ts", pl.col(Col.TS).drop_nulls().n_unique() > 1),
            (Col.DEVICE, "device", pl.col(Col.DEVICE).n_unique() > 1),
        )
        for name, what, bad in per_page:
            if i.has(name, Col.PAGE_ID):
                pages = _pages_where(i.frame, bad).implode()
                i.rule(
                    name,
                    f"all rows of one page_id must share one {what}",
                    pl.col(Col.PAGE_ID).is_in(pages, nulls_equal=True),
                    show=(name,),
                )
    return problems


def _event_rules(
    check: _Checker,
    ds: Dataset,
    title_ids: pl.Series | None,
    user_ids: pl.Series | None,
    clock_lit: pl.Expr,
    after_clock: str,
) -> None:
    """Rules shared by plays and impressions: known ids, device, times."""
    if user_ids is not None:
        check.rule(
            Col.USER_ID,
            "must name a user in users.parquet",
            ~pl.col(Col.USER_ID).is_in(user_ids) & pl.col(Col.USER_ID).is_not_null(),
        )
    if title_ids is not None:
        check.rule(
            Col.TITLE_ID,
            "must name a title in titles.parquet",
            ~pl.col(Col.TITLE_ID).is_in(title_ids) & pl.col(Col.TITLE_ID).is_not_null(),
        )
    check.rule(Col.DEVICE, _one_of(DEVICES) + " or null", ~pl.col(Col.DEVICE).is_in(list(DEVICES)))
    check.rule(Col.TS, after_clock, pl.col(Col.TS) > clock_lit)
    if not check.has(Col.TS):
        return
    # An event before its title was added or its user was created cannot have happened, and an
    # "as of" cut would drop the title or user while keeping the event.
    if _Checker(TITLES, ds.titles.lazy(), []).has(Col.TITLE_ID, Col.ADDED_AT):
        frame = _lookup(check.frame, Col.TITLE_ID, ds.titles, Col.ADDED_AT, "__added_at")
        check.rule(
            Col.TS,
            "must not be earlier than the title's added_at in titles.parquet",
            pl.col(Col.TS) < pl.col("__added_at"),
            frame=frame,
            show=(Col.TS, "__added_at"),
        )
    if _Checker(USERS, ds.users.lazy(), []).has(Col.USER_ID, Col.CREATED_AT):
        frame = _lookup(check.frame, Col.USER_ID, ds.users, Col.CREATED_AT, "__created_at")
        check.rule(
            Col.TS,
            "must not be earlier than the user's created_at in users.parquet",
            pl.col(Col.TS) < pl.col("__created_at"),
            frame=frame,
            show=(Col.TS, "__created_at"),
        )


# ----- entry points ------------------------------------------------------------------------------


def validate_directory(directory: Path) -> tuple[Dataset | None, list[str]]:
    """Structure and value problems of a dataset directory (`rowrank validate`).

    The dataset is None only when the directory itself does not exist.
    """
    directory = Path(directory)
    ds, problems = read_tables(directory)
    if not directory.is_dir():
        return None, problems
    return ds, problems + validate_dataset(ds)


def summarize(ds: Dataset) -> str:
    """A short human summary of a clean dataset: sizes, time span, devices, genres, kinds."""
    titles, users, plays = ds.titles, ds.users, ds.plays
    n_imp = "none" if ds.impressions is None else f"{_height(ds.impressions):,}"
    lines = [
        f"dataset {ds.source}, clock {to_utc(ds.clock).isoformat()}",
        f"titles {titles.height:,}, users {users.height:,}, plays {plays.height:,}, "
        f"impressions {n_imp}",
    ]
    if plays.height:
        first, last = plays[Col.TS].min(), plays[Col.TS].max()
        assert isinstance(first, datetime) and isinstance(last, datetime)
        lines.append(
            f"plays from {first:%Y-%m-%d} to {last:%Y-%m-%d} ({(last - first).days:,} days), "
            f"{plays.height / max(users.height, 1):,.1f} per user"
        )
        devices = plays[Col.DEVICE].fill_null("unknown").value_counts(sort=True, name="n").rows()
        lines.append("devices: " + ", ".join(f"{d} {n / plays.height:.1%}" for d, n in devices))
    if titles.height:
        genres = titles[Col.GENRES].explode().drop_nulls().value_counts(sort=True, name="n").head(8)
        if genres.height:
            lines.append(
                "top genres (titles): " + ", ".join(f"{g} {n:,}" for g, n in genres.rows())
            )
        kinds = titles[Col.KIND].value_counts(sort=True, name="n").rows()
        lines.append("kinds: " + ", ".join(f"{k} {n:,}" for k, n in kinds))
    note = country_note(ds)
    if note:
        lines.append(note)
    return "\n".join(lines)


def _height(frame: pl.LazyFrame) -> int:
    return int(frame.select(pl.len()).collect(engine="streaming").item())


def country_note(ds: Dataset) -> str:
    """A note when titles are licensed per country but some users have no country: not a
    problem of the data, but those members see only the titles licensed everywhere, in
    training as in serving, unless a request names a country or [serving] default_country does."""
    licensed = ds.titles.filter(pl.col(Col.COUNTRIES).list.len() > 0).height
    without = ds.users.filter(pl.col(Col.COUNTRY).is_null() | (pl.col(Col.COUNTRY) == "")).height
    if not licensed or not without:
        return ""
    everywhere = ds.titles.height - licensed
    return (
        f"note: {licensed:,} titles are licensed per country ({everywhere:,} everywhere) but "
        f"{without:,} of {ds.users.height:,} users have no country: their pages need a "
        "country (a request's, or [serving] default_country) and training sees only the "
        "titles licensed everywhere for them; give users a country (import table --users)"
    )
