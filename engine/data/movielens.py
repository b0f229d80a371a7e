"""Import MovieLens ratings (GroupLens, https://grouplens.org/datasets/movielens/) into a
rowrank dataset. The mapping is documented in docs/data.md.

Formats, detected from the files present:
- ml-100k: u.data (tab), u.item (`|`, latin-1, 19 genre flags), u.user (`|`).
- ml-1m / ml-10m: ratings.dat, movies.dat (`::`), users.dat (ml-1m only), tags.dat (ml-10m).
- ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m: ratings.csv, movies.csv, optional tags.csv.

Every file is parsed by polars with a fixed schema; only when that fails do we look for the
first bad line (a slower path, run once, on error only) so the error names file and line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import polars as pl

from engine.data.columns import STR_LIST, TIMESTAMP, Col
from engine.data.dataset import Dataset, save_replacing
from engine.errors import DataError, ImportFormatError

DOWNLOAD = "https://grouplens.org/datasets/movielens/"
# ml-100k's u.item genre flags, in file order (the same list as its u.genre).
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
# "Title (1995)", also "Title (2006–2007)" for series in ml-latest; the first year is kept.
YEAR_SUFFIX = r"\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$"
# Users in MovieLens have no age rating limit and no country.
USER_MATURITY_MAX = 18
# Internal separator for `::` files: polars separators are one byte; 0x1F (unit separator) is
# never found in MovieLens text.
_UNIT_SEP = "\x1f"
# 9999-12-31T23:59:59Z, the last second Python's datetime holds.
MAX_TIMESTAMP_S = 253_402_300_799


@dataclass(frozen=True)
class _Spec:
    """One MovieLens file: separator, column names and dtypes, expected header (CSV only)."""

    file: str
    sep: str
    columns: tuple[tuple[str, pl.DataType], ...]
    header: tuple[str, ...] | None = None
    nullable: frozenset[str] = frozenset()
    # Text that may be latin-1 (older releases) rather than UTF-8.
    text: bool = False

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns]


_I64, _F64, _STR, _I16, _I8 = pl.Int64(), pl.Float64(), pl.String(), pl.Int16(), pl.Int8()
_RATING_COLS = (("user", _I64), ("movie", _I64), ("rating", _F64), ("timestamp", _I64))
_MOVIE_COLS = (("movie", _I64), ("title", _STR), ("genres", _STR))
_TAG_COLS = (("user", _I64), ("movie", _I64), ("tag", _STR), ("timestamp", _I64))

RATINGS_CSV = _Spec("ratings.csv", ",", _RATING_COLS, ("userId", "movieId", "rating", "timestamp"))
MOVIES_CSV = _Spec("movies.csv", ",", _MOVIE_COLS, ("movieId", "title", "genres"), text=True)
TAGS_CSV = _Spec(
    "tags.csv",
    ",",
    _TAG_COLS,
    ("userId", "movieId", "tag", "timestamp"),
    nullable=frozenset({"tag"}),
    text=True,
)
RATINGS_DAT = _Spec("ratings.dat", "::", _RATING_COLS)
MOVIES_DAT = _Spec("movies.dat", "::", _MOVIE_COLS, text=True)
TAGS_DAT = _Spec("tags.dat", "::", _TAG_COLS, nullable=frozenset({"tag"}), text=True)
USERS_DAT = _Spec(
    "users.dat",
    "::",
    (("user", _I64), ("gender", _STR), ("age", _I16), ("occupation", _I16), ("zip_code", _STR)),
)
U_DATA = _Spec("u.data", "\t", _RATING_COLS)
U_ITEM = _Spec(
    "u.item",
    "|",
    (
        ("movie", _I64),
        ("title", _STR),
        ("release_date", _STR),
        ("video_release_date", _STR),
        ("imdb_url", _STR),
        *((f"genre_{i}", _I8) for i in range(len(GENRES_100K))),
    ),
    nullable=frozenset({"release_date", "video_release_date", "imdb_url"}),
    text=True,
)
U_USER = _Spec(
    "u.user",
    "|",
    (("user", _I64), ("age", _I16), ("gender", _STR), ("occupation", _STR), ("zip_code", _STR)),
    text=True,
)

FORMATS: dict[str, tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-10m": ("ratings.dat", "movies.dat"),
    "ml-latest": ("ratings.csv", "movies.csv"),
}


def detect_format(src: Path) -> str:
    """Which MovieLens layout `src` holds: ml-100k, ml-1m, ml-10m or ml-latest."""
    if not src.is_dir():
        raise ImportFormatError(
            f"{src}: no such directory; download a MovieLens zip from {DOWNLOAD} and unzip it"
        )
    if (src / "u.data").exists():
        return "ml-100k"
    if (src / "ratings.dat").exists():
        # ml-10m dropped the users file; ml-1m has one.
        return "ml-1m" if (src / "users.dat").exists() else "ml-10m"
    if (src / "ratings.csv").exists():
        return "ml-latest"
    raise ImportFormatError(
        f"{src}: no MovieLens ratings file found; expected u.data (ml-100k), ratings.dat "
        f"(ml-1m, ml-10m) or ratings.csv (ml-latest, ml-latest-small, ml-25m). "
        f"Download from {DOWNLOAD}"
    )


# Per format: ratings, movies, users (if any) and tags (optional) files.
_LAYOUTS: dict[str, tuple[_Spec, _Spec, _Spec | None, _Spec | None]] = {
    "ml-100k": (U_DATA, U_ITEM, U_USER, None),
    "ml-1m": (RATINGS_DAT, MOVIES_DAT, USERS_DAT, TAGS_DAT),
    "ml-10m": (RATINGS_DAT, MOVIES_DAT, None, TAGS_DAT),
    "ml-latest": (RATINGS_CSV, MOVIES_CSV, None, TAGS_CSV),
}


def import_movielens(src: Path, out: Path) -> Dataset:
    """Convert the MovieLens directory `src` into a validated rowrank dataset written to `out`.

    Each rating becomes a play (device unknown, progress 1.0, seconds_watched 0.0 = unknown,
    rating kept). Raises ImportFormatError naming the file and line for missing files and
    malformed lines.
    """
    src = Path(src)
    fmt = detect_format(src)
    ratings_spec, movies_spec, users_spec, tags_spec = _LAYOUTS[fmt]
    ratings = _read(src, ratings_spec)
    if ratings.height == 0:
        raise ImportFormatError(f"{src / ratings_spec.file}: holds no ratings")
    _check_times(src, ratings_spec, ratings)
    movies = _movies_100k(src) if movies_spec is U_ITEM else _movies_titled(src, movies_spec)
    _check_known(src, ratings_spec, ratings, "movie", movies_spec, movies)
    users_extra = None
    if users_spec is not None:
        users_extra = _read(src, users_spec)
        _check_unique(src, users_spec, users_extra, "user")
        _check_known(src, ratings_spec, ratings, "user", users_spec, users_extra)
    tags = None
    if tags_spec is not None and (src / tags_spec.file).exists():
        tags = _tags(src, tags_spec, movies_spec, movies)

    name = src.resolve().name
    source = f"MovieLens {fmt}" + ("" if name == fmt else f" ({name})")
    ds = _assemble(ratings, movies, users_extra, tags, source)

    from engine.data.validate import validate_dataset

    # Never write a dataset `rowrank validate` would refuse.
    problems = validate_dataset(ds)
    if problems:
        raise DataError(problems)
    save_replacing(ds, Path(out))
    return ds


# ----- reading -----------------------------------------------------------------------------------


def _read(src: Path, spec: _Spec) -> pl.DataFrame:
    """Parse one file with polars and the spec's schema; ImportFormatError with the line on
    any malformed line."""
    path = src / spec.file
    if not path.is_file():
        raise ImportFormatError(
            f"{path}: file is missing; a MovieLens directory in this format needs "
            f"{', '.join(f for f in _needed_files(src))}"
        )
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    if spec.text:
        data = _as_utf8(data)
    sep = spec.sep
    if sep == "::":
        data, sep = data.replace(b"::", _UNIT_SEP.encode()), _UNIT_SEP
    if spec.header is not None:
        _check_header(path, data, spec)
        names = list(spec.header)
    else:
        names = spec.names
    options = {
        "separator": sep,
        "has_header": spec.header is not None,
        "quote_char": '"' if spec.header is not None else None,
        "encoding": "utf8-lossy",
        "raise_if_empty": False,
    }
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            schema={n: dtype for n, (_, dtype) in zip(names, spec.columns, strict=True)},
            **options,  # type: ignore[arg-type]
        )
        frame.columns = spec.names
        required = [n for n in spec.names if n not in spec.nullable]
        if frame.select(pl.any_horizontal(pl.col(required).is_null()).any()).item() is False:
            return frame
    except pl.exceptions.PolarsError:
        pass
    _raise_first_bad_line(path, data, spec, names, sep, options)


def _raise_first_bad_line(
    path: Path,
    data: bytes,
    spec: _Spec,
    names: list[str],
    sep: str,
    options: dict[str, object],
) -> NoReturn:
    """The error path: re-read everything as text, find the first bad line, raise."""
    first_line = 2 if spec.header is not None else 1
    try:
        raw = pl.read_csv(
            io.BytesIO(data),
            schema=dict.fromkeys(names, pl.String()),
            **options,  # type: ignore[arg-type]
        )
    except pl.exceptions.PolarsError as exc:
        # Polars refuses lines with too many fields; find the first one by hand.
        text = data.decode("utf-8", errors="replace").split("\n")
        for number, line in enumerate(text[first_line - 1 :], start=first_line):
            fields = _split(line, sep, spec.header is not None)
            if line and len(fields) != len(names):
                _fail(path, number, f"expected {len(names)} fields, found {len(fields)}", line)
        reason = str(exc).strip().splitlines()[0]
        raise ImportFormatError(f"{path}: cannot be parsed ({reason})") from exc
    raw.columns = spec.names
    bad_rows: list[tuple[int, str]] = []
    # Name columns as the file does (movieId, not movie) when it has a header.
    for (name, dtype), label in zip(spec.columns, names, strict=True):
        col = raw[name]
        if name not in spec.nullable:
            missing = col.is_null().arg_true()
            if missing.len():
                bad_rows.append((int(missing[0]), f"{label} is missing"))
        if dtype != pl.String:
            wrong = (col.cast(dtype, strict=False).is_null() & col.is_not_null()).arg_true()
            if wrong.len():
                row = int(wrong[0])
                kind = "an integer" if dtype.is_integer() else "a number"
                bad_rows.append((row, f"{label} {col[row]!r} is not {kind}"))
    if not bad_rows:
        raise ImportFormatError(f"{path}: cannot be parsed")  # pragma: no cover
    row, reason = min(bad_rows)
    if raw.row(row) == (None,) * len(names):
        reason = "empty line"
    _fail(path, row + first_line, reason, _line_at(data, row + first_line))


def _fail(path: Path, line_number: int, reason: str, line: str) -> NoReturn:
    shown = line.replace(_UNIT_SEP, "::")
    raise ImportFormatError(f"{path}: line {line_number}: {reason}: {shown!r}")


def _split(line: str, sep: str, quoted: bool) -> list[str]:
    if quoted:
        return next(csv.reader([line], delimiter=sep), [])
    return line.split(sep)


def _line_at(source: Path | bytes, number: int) -> str:
    """Line `number` (from 1) of a file or its bytes; only used to word an error."""
    data = _as_utf8(source.read_bytes()) if isinstance(source, Path) else source
    lines = data.split(b"\n", number)
    return lines[number - 1].decode("utf-8", errors="replace") if len(lines) >= number else ""


def _as_utf8(data: bytes) -> bytes:
    """MovieLens text files before ml-latest are latin-1; newer ones UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")
    return data


def _check_header(path: Path, data: bytes, spec: _Spec) -> None:
    assert spec.header is not None
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if tuple(_split(first, spec.sep, True)) != spec.header:
        _fail(path, 1, f"expected the header {','.join(spec.header)}", first)


def _needed_files(src: Path) -> tuple[str, ...]:
    try:
        return FORMATS[detect_format(src)]
    except ImportFormatError:  # pragma: no cover - detect_format already passed
        return ()


def _check_unique(src: Path, spec: _Spec, frame: pl.DataFrame, key: str) -> None:
    """Ids in a movies or users file must be unique; names the first repeat."""
    repeats = (~frame[key].is_first_distinct()).arg_true()
    if repeats.len():
        row = int(repeats[0])
        line = row + (2 if spec.header is not None else 1)
        path = src / spec.file
        _fail(path, line, f"{key} id {frame[key][row]} appears twice", _line_at(path, line))


def _check_known(
    src: Path,
    spec: _Spec,
    frame: pl.DataFrame,
    key: str,
    known_spec: _Spec,
    known: pl.DataFrame,
) -> None:
    """Every id in `frame[key]` must be in `known[key]` (e.g. each rated movie in movies)."""
    unknown = (~frame[key].is_in(known[key].implode())).arg_true()
    if unknown.len():
        row = int(unknown[0])
        line = row + (2 if spec.header is not None else 1)
        path = src / spec.file
        _fail(
            path,
            line,
            f"{key} id {frame[key][row]} is not in {known_spec.file} "
            f"({unknown.len():,} such line{'s' if unknown.len() > 1 else ''})",
            _line_at(path, line),
        )


def _check_times(src: Path, spec: _Spec, frame: pl.DataFrame) -> None:
    """Timestamps are seconds since 1970 (UTC); one before 1970 or past the year 9999 is a
    broken line, not a time (and would overflow every date type downstream)."""
    bad = (~frame["timestamp"].is_between(0, MAX_TIMESTAMP_S)).arg_true()
    if bad.len():
        row = int(bad[0])
        line = row + (2 if spec.header is not None else 1)
        path = src / spec.file
        _fail(
            path,
            line,
            f"timestamp {frame['timestamp'][row]} is out of range: seconds since "
            f"1970-01-01 UTC must be within [0, {MAX_TIMESTAMP_S}] (year 9999)",
            _line_at(path, line),
        )


# ----- movies and tags ---------------------------------------------------------------------------


def _movies_titled(src: Path, spec: _Spec) -> pl.DataFrame:
    """movies.csv / movies.dat: movie, name, release_year (from "Title (1995)"), genres list."""
    raw = _read(src, spec)
    _check_unique(src, spec, raw, "movie")
    genres = (
        pl.col("genres")
        .str.split("|")
        .list.eval(pl.element().filter((pl.element() != NO_GENRES) & (pl.element() != "")))
    )
    return raw.select("movie", *_name_and_year(pl.col("title")), genres.alias("genres"))


def _name_and_year(title: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """The title without its "(1995)" suffix, and that year (null when absent)."""
    stripped = title.str.replace(YEAR_SUFFIX, "").str.strip_chars()
    name = pl.when(stripped.str.len_chars() > 0).then(stripped).otherwise(title)
    year = title.str.extract(YEAR_SUFFIX, 1).cast(pl.Int32)
    return name.alias("name"), year.alias("release_year")


def _movies_100k(src: Path) -> pl.DataFrame:
    """u.item: the title's year, else the release date's ("01-Jan-1995"); genres from flags."""
    raw = _read(src, U_ITEM)
    _check_unique(src, U_ITEM, raw, "movie")
    flags = [f"genre_{i}" for i in range(len(GENRES_100K))]
    bad_flag = raw.select(pl.any_horizontal(~pl.col(flags).is_in([0, 1]))).to_series()
    date = pl.col("release_date").str.to_date("%d-%b-%Y", strict=False)
    bad_date = raw.select(date.is_null() & pl.col("release_date").is_not_null()).to_series()
    for mask, reason in ((bad_flag, "genre flags must be 0 or 1"), (bad_date, "bad date")):
        if mask.any():
            line = int(mask.arg_true()[0]) + 1
            _fail(src / U_ITEM.file, line, reason, _line_at(src / U_ITEM.file, line))
    name, title_year = _name_and_year(pl.col("title"))
    # "unknown" (flag 0) is no genre at all, like ml-latest's "(no genres listed)".
    genres = pl.concat_list(
        [
            pl.when(pl.col(f) == 1).then(pl.lit(g))
            for f, g in zip(flags[1:], GENRES_100K[1:], strict=True)
        ]
    ).list.drop_nulls()
    return raw.select(
        "movie",
        name,
        pl.coalesce(title_year, date.dt.year().cast(pl.Int32)).alias("release_year"),
        genres.alias("genres"),
    )


def _tags(src: Path, spec: _Spec, movies_spec: _Spec, movies: pl.DataFrame) -> pl.DataFrame:
    """Tag applications (movie, tag, ts), tags stripped, empty ones dropped."""
    raw = _read(src, spec)
    _check_times(src, spec, raw)
    _check_known(src, spec, raw, "movie", movies_spec, movies)
    return raw.select(
        "movie", pl.col("tag").str.strip_chars(), pl.col("timestamp").alias("ts")
    ).filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))


# ----- assembling the dataset --------------------------------------------------------------------


def _to_ts(seconds: pl.Expr) -> pl.Expr:
    return pl.from_epoch(seconds, time_unit="s").dt.replace_time_zone("UTC").cast(TIMESTAMP)


def _assemble(
    ratings: pl.DataFrame,
    movies: pl.DataFrame,
    users_extra: pl.DataFrame | None,
    tags: pl.DataFrame | None,
    source: str,
) -> Dataset:
    clock_s = int(ratings["timestamp"].max())  # type: ignore[arg-type]
    clock = datetime.fromtimestamp(clock_s, tz=UTC)

    plays = ratings.select(
        pl.col("user").cast(pl.String).alias(Col.USER_ID),
        pl.col("movie").cast(pl.String).alias(Col.TITLE_ID),
        _to_ts(pl.col("timestamp")).alias(Col.TS),
        pl.lit(None, dtype=pl.String).alias(Col.DEVICE),
        # A rating says the movie was watched; how long it runs is unknown.
        pl.lit(0.0, dtype=pl.Float32).alias(Col.SECONDS_WATCHED),
        pl.lit(1.0, dtype=pl.Float32).alias(Col.PROGRESS),
        pl.col("rating").cast(pl.Float32).alias(Col.RATING),
    )

    # A title is "added" at its first rating (or tag): MovieLens has no catalog dates, and this
    # keeps an "as of" cut from showing a title before anyone could have seen it.
    events = [ratings.select("movie", pl.col("timestamp").alias("ts"))]
    if tags is not None:
        events.append(tags.select("movie", "ts"))
    first_seen = pl.concat(events).group_by("movie").agg(pl.col("ts").min().alias("first"))
    titles = movies.join(first_seen, on="movie", how="left", maintain_order="left")
    columns = [
        pl.col("movie").cast(pl.String).alias(Col.TITLE_ID),
        pl.col("name").alias(Col.NAME),
        pl.lit("movie").alias(Col.KIND),
        pl.col("genres").cast(STR_LIST).alias(Col.GENRES),
        pl.col("release_year").cast(pl.Int32).alias(Col.RELEASE_YEAR),
        pl.lit(None, dtype=pl.Float32).alias(Col.DURATION_MIN),
        pl.lit(0, dtype=pl.Int8).alias(Col.MATURITY),
        pl.lit([], dtype=STR_LIST).alias(Col.COUNTRIES),
        # Tags may postdate the last rating (the clock): cap so nothing is after the clock.
        _to_ts(pl.min_horizontal(pl.col("first").fill_null(clock_s), pl.lit(clock_s))).alias(
            Col.ADDED_AT
        ),
    ]
    if tags is not None:
        # Distinct tags, most applied first. A snapshot of all time: see docs/data.md.
        per_title = (
            tags.group_by("movie", "tag")
            .agg(pl.len().alias("n"))
            .sort(["movie", "n", "tag"], descending=[False, True, False])
            .group_by("movie", maintain_order=True)
            .agg(pl.col("tag").alias(Col.TAGS))
        )
        titles = titles.join(per_title, on="movie", how="left", maintain_order="left")
        columns.append(pl.col(Col.TAGS).fill_null(pl.lit([], dtype=STR_LIST)))
    titles = titles.select(columns)

    first_rating = ratings.group_by("user").agg(pl.col("timestamp").min().alias("first"))
    if users_extra is None:
        users = first_rating.sort("user")
        extra: list[str] = []
    else:
        users = users_extra.join(first_rating, on="user", how="left", maintain_order="left")
        extra = [c for c in users_extra.columns if c != "user"]
    users = users.select(
        pl.col("user").cast(pl.String).alias(Col.USER_ID),
        pl.lit(None, dtype=pl.String).alias(Col.COUNTRY),
        pl.lit(USER_MATURITY_MAX, dtype=pl.Int8).alias(Col.MATURITY_MAX),
        # A user "joins" at their first rating; one who never rated, at the clock.
        _to_ts(pl.col("first").fill_null(clock_s)).alias(Col.CREATED_AT),
        *extra,
    )
    return Dataset(
        titles=titles, users=users, plays=plays, impressions=None, clock=clock, source=source
    )
