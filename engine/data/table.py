"""`rowrank import table PLAYS TITLES OUT [--users USERS]`: a team's own tables as a dataset.

Each file is CSV or Parquet (by its suffix). Only the columns that say what happened are
required; the others take a documented default (docs/data.md describes every column):

    plays   user_id, title_id, ts        ts: ISO 8601 (UTC when it has no offset) or Unix seconds
            [device, seconds_watched, progress, rating]   progress defaults to 1.0 (watched)
    titles  title_id, name
            [kind, genres, release_year, duration_min, maturity, countries, added_at,
             series_id, episode, cast, directors, tags]
            genres, countries, cast, directors, tags: lists in Parquet, "|"-separated in CSV
            ("Comedy|Drama");
            no countries = licensed everywhere; added_at defaults to the title's first play
    users   user_id [country, maturity_max, created_at]   (the file is optional: without it
            every member of the plays is a user, country unknown, created at their first play)

The dataset's clock is the last play. What is written is validated first, so `rowrank validate`
never refuses an import; a missing file or column is an ImportFormatError naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from engine.data.columns import MATURITY_LEVELS, STR_LIST, TIMESTAMP, Col
from engine.data.dataset import Dataset, save_replacing
from engine.errors import DataError, ImportFormatError

# A member without a maturity limit may see every title.
DEFAULT_MATURITY_MAX = MATURITY_LEVELS[-1]
LIST_SEPARATOR = "|"  # genres and countries inside one CSV cell

PLAYS_REQUIRED = (Col.USER_ID, Col.TITLE_ID, Col.TS)
PLAYS_OPTIONAL = (Col.DEVICE, Col.SECONDS_WATCHED, Col.PROGRESS, Col.RATING)
TITLES_REQUIRED = (Col.TITLE_ID, Col.NAME)
TITLES_OPTIONAL = (
    Col.KIND,
    Col.GENRES,
    Col.RELEASE_YEAR,
    Col.DURATION_MIN,
    Col.MATURITY,
    Col.COUNTRIES,
    Col.ADDED_AT,
    Col.SERIES_ID,
    Col.EPISODE,
    Col.CAST,
    Col.DIRECTORS,
    Col.TAGS,
)
# Optional title columns, kept only when the file has them (nullable in the schema); None marks
# a list column.
TITLES_IF_GIVEN: dict[str, type[pl.DataType] | None] = {
    Col.SERIES_ID: pl.String,
    Col.EPISODE: pl.Int32,
    Col.CAST: None,
    Col.DIRECTORS: None,
    Col.TAGS: None,
}
USERS_REQUIRED = (Col.USER_ID,)
USERS_OPTIONAL = (Col.COUNTRY, Col.MATURITY_MAX, Col.CREATED_AT)


def import_table(
    plays_path: Path, titles_path: Path, out: Path, users_path: Path | None = None
) -> Dataset:
    """Read the plays, titles (and users) files into a validated dataset written to `out`."""
    plays_raw = read_table(Path(plays_path), PLAYS_REQUIRED, PLAYS_OPTIONAL)
    titles_raw = read_table(Path(titles_path), TITLES_REQUIRED, TITLES_OPTIONAL)
    if plays_raw.height == 0:
        raise ImportFormatError(f"{plays_path}: holds no plays")
    plays = _converted(lambda: _plays(plays_raw, Path(plays_path)), Path(plays_path))
    clock = plays[Col.TS].max()
    assert isinstance(clock, datetime)
    unknown = plays.join(
        titles_raw.select(pl.col(Col.TITLE_ID).cast(pl.String)), on=Col.TITLE_ID, how="anti"
    )
    if unknown.height:
        raise ImportFormatError(
            f"{plays_path}: {unknown.height} play(s) name a title_id that is not in "
            f"{titles_path}, e.g. {unknown[Col.TITLE_ID][0]!r}"
        )
    first_play = plays.group_by(Col.TITLE_ID).agg(pl.col(Col.TS).min().alias("first"))
    titles = _converted(lambda: _titles(titles_raw, first_play, clock), Path(titles_path))
    users_raw = (
        read_table(Path(users_path), USERS_REQUIRED, USERS_OPTIONAL)
        if users_path is not None
        else plays.select(Col.USER_ID).unique(maintain_order=True)
    )
    joined = plays.group_by(Col.USER_ID).agg(pl.col(Col.TS).min().alias("first"))
    users = _converted(lambda: _users(users_raw, joined, clock), Path(users_path or plays_path))
    ds = Dataset(
        titles=titles,
        users=users,
        plays=plays,
        impressions=None,
        clock=clock.astimezone(UTC),
        source=f"table {Path(plays_path).name} + {Path(titles_path).name}",
    )
    from engine.data.validate import validate_dataset

    problems = validate_dataset(ds)  # never write a dataset `rowrank validate` would refuse
    if problems:
        raise DataError(problems)
    save_replacing(ds, Path(out))
    return ds


def read_table(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> pl.DataFrame:
    """A CSV or Parquet file's known columns (required ones checked, unknown ones refused)."""
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            # Every column as text: ids stay ids ("007" is not 7); each is parsed below.
            frame = pl.read_csv(path, infer_schema=False)
        else:
            raise ImportFormatError(f"{path}: use a .csv or .parquet file")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ImportFormatError(f"{path}: cannot be read: {exc}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ImportFormatError(
            f"{path}: no column {missing[0]!r}; required: {', '.join(required)}; "
            f"optional: {', '.join(optional)}"
        )
    extra = [c for c in frame.columns if c not in required + optional]
    if extra:
        raise ImportFormatError(
            f"{path}: unknown column {extra[0]!r}; allowed: {', '.join(required + optional)}"
        )
    return frame


def _converted(convert: Callable[[], pl.DataFrame], path: Path) -> pl.DataFrame:
    """`convert()`, a value that does not fit its column named as the file's problem."""
    try:
        return convert()
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportFormatError(f"{path}: a value does not fit its column: {first}") from None


def _plays(raw: pl.DataFrame, path: Path) -> pl.DataFrame:
    return raw.select(
        pl.col(Col.USER_ID).cast(pl.String),
        pl.col(Col.TITLE_ID).cast(pl.String),
        _timestamp(raw, Col.TS, path),
        _or(raw, Col.DEVICE, pl.String, None),
        _or(raw, Col.SECONDS_WATCHED, pl.Float32, 0.0),  # 0 = unknown
        _or(raw, Col.PROGRESS, pl.Float32, 1.0),  # a play without progress counts as watched
        _or(raw, Col.RATING, pl.Float32, None),
    )


def _titles(raw: pl.DataFrame, first_play: pl.DataFrame, clock: datetime) -> pl.DataFrame:
    frame = raw.with_columns(pl.col(Col.TITLE_ID).cast(pl.String)).join(
        first_play, on=Col.TITLE_ID, how="left", maintain_order="left"
    )
    added = (
        _timestamp(frame, Col.ADDED_AT, None)
        if Col.ADDED_AT in frame.columns
        else pl.col("first").fill_null(pl.lit(clock).dt.cast_time_unit("us")).alias(Col.ADDED_AT)
    )
    return frame.select(
        pl.col(Col.TITLE_ID),
        pl.col(Col.NAME).cast(pl.String),
        _or(frame, Col.KIND, pl.String, "movie"),
        _list(frame, Col.GENRES),
        _or(frame, Col.RELEASE_YEAR, pl.Int32, None),
        _or(frame, Col.DURATION_MIN, pl.Float32, None),
        _or(frame, Col.MATURITY, pl.Int8, 0),
        _list(frame, Col.COUNTRIES),
        added,
        *[
            _list(frame, c) if dtype is None else _or(frame, c, dtype, None)
            for c, dtype in TITLES_IF_GIVEN.items()
            if c in frame.columns
        ],
    )


def _users(raw: pl.DataFrame, joined: pl.DataFrame, clock: datetime) -> pl.DataFrame:
    frame = raw.with_columns(pl.col(Col.USER_ID).cast(pl.String)).join(
        joined, on=Col.USER_ID, how="left", maintain_order="left"
    )
    created = (
        _timestamp(frame, Col.CREATED_AT, None)
        if Col.CREATED_AT in frame.columns
        else pl.col("first").fill_null(pl.lit(clock).dt.cast_time_unit("us")).alias(Col.CREATED_AT)
    )
    return frame.select(
        pl.col(Col.USER_ID),
        _or(frame, Col.COUNTRY, pl.String, None),
        _or(frame, Col.MATURITY_MAX, pl.Int8, DEFAULT_MATURITY_MAX),
        created,
    )


def _or(frame: pl.DataFrame, name: str, dtype: type[pl.DataType], default: object) -> pl.Expr:
    """The column cast to `dtype` (strictly: a bad value is an error), else `default`."""
    if name not in frame.columns:
        return pl.lit(default, dtype=dtype).alias(name)
    col = pl.col(name).cast(dtype, strict=True)
    return (col if default is None else col.fill_null(default)).alias(name)


def _list(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A list column: as it is in Parquet, "|"-separated in CSV; absent or empty = []."""
    if name not in frame.columns:
        return pl.lit([], dtype=STR_LIST).alias(name)
    if frame.schema[name] == pl.String:
        col = pl.col(name).fill_null("").str.split(LIST_SEPARATOR)
        return (
            col.list.eval(pl.element().str.strip_chars())
            .list.eval(pl.element().filter(pl.element() != ""))
            .alias(name)
        )
    return pl.col(name).cast(STR_LIST).fill_null(pl.lit([], dtype=STR_LIST)).alias(name)


def _timestamp(frame: pl.DataFrame, name: str, path: Path | None) -> pl.Expr:
    """ISO 8601 text (UTC without an offset) or Unix seconds, as the schema's UTC timestamp."""
    dtype = frame.schema[name]
    where = f"{path}: " if path is not None else ""
    if dtype == pl.String:
        text = frame[name]
        if text.str.contains(r"^\s*-?\d+\s*$").all():
            return _from_epoch(pl.col(name).str.strip_chars().cast(pl.Int64)).alias(name)
        try:
            parsed = text.str.to_datetime(time_unit="us", time_zone="UTC")
        except pl.exceptions.PolarsError:  # e.g. offsets on some values only: one by one
            parsed = pl.Series(name, [_parse_iso(v, name, where) for v in text.to_list()])
        return pl.lit(parsed.cast(TIMESTAMP)).alias(name)
    if dtype.is_integer():
        return _from_epoch(pl.col(name)).alias(name)
    if isinstance(dtype, pl.Datetime):
        col = pl.col(name)
        col = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col
        return col.dt.convert_time_zone("UTC").cast(TIMESTAMP).alias(name)
    raise ImportFormatError(
        f"{where}{name} has type {dtype}; use ISO 8601 text, Unix seconds or a timestamp"
    )


def _from_epoch(seconds: pl.Expr) -> pl.Expr:
    return pl.from_epoch(seconds, time_unit="s").dt.replace_time_zone("UTC").cast(TIMESTAMP)


def _parse_iso(value: str | None, name: str, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ImportFormatError(
            f"{where}{name} {value!r} is neither ISO 8601 (2025-01-06T21:00:00+01:00) nor Unix "
            "seconds"
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
