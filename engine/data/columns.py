"""Column names, allowed values and the Parquet schema of a dataset: the one place they live."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# Devices the engine knows; the order is the integer code used inside arrays (-1 = unknown).
DEVICES: tuple[str, ...] = ("tv", "mobile", "tablet", "web")
TITLE_KINDS: tuple[str, ...] = ("movie", "series")
# Age ratings (minimum viewer age): titles.maturity and users.maturity_max take these values.
MATURITY_LEVELS: tuple[int, ...] = (0, 7, 13, 16, 18)
TIMESTAMP = pl.Datetime("us", "UTC")
# Countries (titles.countries, users.country, a request's country): ISO 3166 alpha-2 codes.
COUNTRY_CODE = r"^[A-Z]{2}$"

# Table names = Parquet file stems inside a dataset directory.
TITLES, USERS, PLAYS, IMPRESSIONS = "titles", "users", "plays", "impressions"
REQUIRED_TABLES: tuple[str, ...] = (TITLES, USERS, PLAYS)
OPTIONAL_TABLES: tuple[str, ...] = (IMPRESSIONS,)


class Col:
    """Polars column names, shared by every table that has them."""

    TITLE_ID = "title_id"
    USER_ID = "user_id"
    NAME = "name"
    KIND = "kind"
    GENRES = "genres"
    RELEASE_YEAR = "release_year"
    DURATION_MIN = "duration_min"
    MATURITY = "maturity"
    COUNTRIES = "countries"
    ADDED_AT = "added_at"
    SERIES_ID = "series_id"
    EPISODE = "episode"
    CAST = "cast"
    DIRECTORS = "directors"
    TAGS = "tags"
    COUNTRY = "country"
    MATURITY_MAX = "maturity_max"
    CREATED_AT = "created_at"
    TS = "ts"
    DEVICE = "device"
    SECONDS_WATCHED = "seconds_watched"
    PROGRESS = "progress"
    RATING = "rating"
    PAGE_ID = "page_id"
    ROW_INDEX = "row_index"
    ROW_KIND = "row_kind"
    ROW_ID = "row_id"
    POSITION = "position"
    PLAYED = "played"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    required: bool = True
    nullable: bool = False


STR_LIST = pl.List(pl.String)

SCHEMA: dict[str, tuple[Column, ...]] = {
    TITLES: (
        Column(Col.TITLE_ID, pl.String()),
        Column(Col.NAME, pl.String()),
        Column(Col.KIND, pl.String()),
        Column(Col.GENRES, STR_LIST),
        Column(Col.RELEASE_YEAR, pl.Int32(), nullable=True),
        Column(Col.DURATION_MIN, pl.Float32(), nullable=True),
        Column(Col.MATURITY, pl.Int8()),
        Column(Col.COUNTRIES, STR_LIST),
        Column(Col.ADDED_AT, TIMESTAMP),
        Column(Col.SERIES_ID, pl.String(), required=False, nullable=True),
        Column(Col.EPISODE, pl.Int32(), required=False, nullable=True),
        Column(Col.CAST, STR_LIST, required=False, nullable=True),
        Column(Col.DIRECTORS, STR_LIST, required=False, nullable=True),
        Column(Col.TAGS, STR_LIST, required=False, nullable=True),
    ),
    USERS: (
        Column(Col.USER_ID, pl.String()),
        Column(Col.COUNTRY, pl.String(), nullable=True),
        Column(Col.MATURITY_MAX, pl.Int8()),
        Column(Col.CREATED_AT, TIMESTAMP),
    ),
    PLAYS: (
        Column(Col.USER_ID, pl.String()),
        Column(Col.TITLE_ID, pl.String()),
        Column(Col.TS, TIMESTAMP),
        Column(Col.DEVICE, pl.String(), nullable=True),
        Column(Col.SECONDS_WATCHED, pl.Float32()),
        Column(Col.PROGRESS, pl.Float32()),
        Column(Col.RATING, pl.Float32(), required=False, nullable=True),
    ),
    IMPRESSIONS: (
        Column(Col.PAGE_ID, pl.String()),
        Column(Col.USER_ID, pl.String()),
        Column(Col.TS, TIMESTAMP),
        Column(Col.DEVICE, pl.String(), nullable=True),
        Column(Col.ROW_INDEX, pl.Int16()),
        Column(Col.ROW_KIND, pl.String()),
        Column(Col.ROW_ID, pl.String()),
        Column(Col.POSITION, pl.Int16()),
        Column(Col.TITLE_ID, pl.String()),
        Column(Col.PLAYED, pl.Boolean()),
    ),
}


def empty_table(table: str) -> pl.DataFrame:
    """An empty frame with the table's required columns and dtypes."""
    return pl.DataFrame(schema={c.name: c.dtype for c in SCHEMA[table] if c.required})
