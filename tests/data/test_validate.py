"""engine.data.validate: every rule gets bad data and an assertion on its message."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
import polars as pl
import pytest

from engine.data.columns import IMPRESSIONS, PLAYS, SCHEMA, TITLES, USERS, Col
from engine.data.dataset import MANIFEST, Dataset, load_dataset, save_dataset
from engine.data.validate import (
    ROW,
    _duplicated_slots,
    conform_dataset,
    read_tables,
    summarize,
    validate_dataset,
    validate_directory,
)
from engine.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def _load_make_tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_tiny", ROOT / "fixtures" / "datasets" / "make_tiny.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny = _load_make_tiny()
CLOCK: datetime = make_tiny.CLOCK


@pytest.fixture
def ds() -> Dataset:
    return make_tiny.build_tiny(seed=0)


def edit(ds: Dataset, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> Dataset:
    """A copy of `ds` with one table changed."""
    frames = ds.tables()
    frames[table] = change(frames[table])
    return replace(
        ds,
        titles=frames[TITLES],
        users=frames[USERS],
        plays=frames[PLAYS],
        impressions=frames[IMPRESSIONS].lazy() if IMPRESSIONS in frames else None,
    )


def set_rows(column: str, rows: list[int], value: object) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Set `column` to `value` on the given rows (keeping the column's dtype)."""

    def change(frame: pl.DataFrame) -> pl.DataFrame:
        hit = pl.int_range(pl.len()).is_in(rows)
        dtype = frame.schema[column]
        return frame.with_columns(
            pl.when(hit).then(pl.lit(value, dtype=dtype)).otherwise(pl.col(column)).alias(column)
        )

    return change


def one(problems: list[str], prefix: str) -> str:
    """The single problem starting with `prefix` (and nothing else reported)."""
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix), problems[0]
    return problems[0]


# ----- the clean dataset -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_tiny_dataset_is_clean(seed: int) -> None:
    assert validate_dataset(make_tiny.build_tiny(seed=seed)) == []


def test_committed_tiny_fixture_matches_its_generator() -> None:
    read, problems = read_tables(make_tiny.TINY_DIR)
    assert problems == []
    built = make_tiny.build_tiny()
    assert read.clock == built.clock
    assert read.source == built.source
    for name, frame in built.tables().items():
        assert read.tables()[name].equals(frame), f"fixtures/datasets/tiny/{name}.parquet drifted"
    assert validate_dataset(read) == []


def test_round_trip_keeps_every_table(ds: Dataset, tmp_path: Path) -> None:
    save_dataset(ds, tmp_path)
    back = load_dataset(tmp_path)
    for name, frame in ds.tables().items():
        assert back.tables()[name].equals(frame)
    assert back.clock == CLOCK


def test_summarize_reports_counts_span_devices_genres_kinds(ds: Dataset) -> None:
    text = summarize(ds)
    assert "titles 10, users 6, plays 48, impressions 72" in text
    assert f"to {max(ds.plays[Col.TS].to_list()):%Y-%m-%d}" in text
    assert "devices: " in text and "unknown" in text
    assert "top genres (titles): Drama 4, Comedy 3" in text
    assert "kinds: movie 5, series 5" in text


# ----- value rules: the message names file, column, rule and rows ------------------------------


def test_progress_outside_unit_interval(ds: Dataset) -> None:
    bad = edit(ds, PLAYS, set_rows(Col.PROGRESS, [3, 17], 1.4))
    message = one(validate_dataset(bad), "plays.parquet: column progress: must be within [0, 1]")
    row = ds.plays.row(3, named=True)
    assert "; 2 rows break it, e.g. row 3 (" in message
    assert f"user_id={row[Col.USER_ID]}, title_id={row[Col.TITLE_ID]}, progress=1.4)" in message
    assert "row 17 (" in message
    assert not message.endswith("...")


def test_at_most_five_examples_then_ellipsis(ds: Dataset) -> None:
    bad = edit(ds, PLAYS, set_rows(Col.PROGRESS, list(range(9)), -0.5))
    message = one(validate_dataset(bad), "plays.parquet: column progress")
    assert "9 rows break it" in message
    assert message.count("row ") == 5  # five examples ("9 rows" does not match)
    assert "row 4 (" in message and "row 5 (" not in message
    assert message.endswith(", ...")


@pytest.mark.parametrize(
    ("table", "column", "value", "rule"),
    [
        (PLAYS, Col.TITLE_ID, "nope", "must name a title in titles.parquet"),
        (PLAYS, Col.USER_ID, "ghost", "must name a user in users.parquet"),
        (IMPRESSIONS, Col.TITLE_ID, "nope", "must name a title in titles.parquet"),
        (IMPRESSIONS, Col.USER_ID, "ghost", "must name a user in users.parquet"),
    ],
)
def test_unknown_ids(ds: Dataset, table: str, column: str, value: str, rule: str) -> None:
    frames = ds.tables()
    # Impressions of one page share a user: change a whole page so only the id rule fires.
    if table == IMPRESSIONS and column == Col.USER_ID:
        first_page = frames[table][Col.PAGE_ID][0]
        rows = frames[table][Col.PAGE_ID].eq(first_page).arg_true().to_list()
    else:
        rows = [2]
    bad = edit(ds, table, set_rows(column, rows, value))
    message = one(validate_dataset(bad), f"{table}.parquet: column {column}: {rule}")
    assert f"{column}={value}" in message
    assert f"{len(rows)} row" in message


@pytest.mark.parametrize("table", [PLAYS, IMPRESSIONS])
def test_unknown_device(ds: Dataset, table: str) -> None:
    frame = ds.tables()[table]
    rows = [0] if table == PLAYS else frame[Col.PAGE_ID].eq(frame[Col.PAGE_ID][0]).arg_true()
    bad = edit(ds, table, set_rows(Col.DEVICE, list(rows), "toaster"))
    message = one(
        validate_dataset(bad),
        f"{table}.parquet: column device: must be one of tv, mobile, tablet, web or null",
    )
    assert "device=toaster" in message


def test_null_device_is_allowed(ds: Dataset) -> None:
    bad = edit(ds, PLAYS, set_rows(Col.DEVICE, [0, 1, 2], None))
    assert validate_dataset(bad) == []


def test_unknown_kind(ds: Dataset) -> None:
    bad = edit(ds, TITLES, set_rows(Col.KIND, [1], "podcast"))
    message = one(
        validate_dataset(bad), "titles.parquet: column kind: must be one of movie, series"
    )
    assert "row 1 (title_id=m2, kind=podcast)" in message


@pytest.mark.parametrize(("table", "column"), [(TITLES, Col.TITLE_ID), (USERS, Col.USER_ID)])
def test_duplicate_ids(ds: Dataset, table: str, column: str) -> None:
    frame = ds.tables()[table]
    bad = edit(ds, table, lambda f: pl.concat([f, f.slice(0, 1)]))
    message = one(validate_dataset(bad), f"{table}.parquet: column {column}: must be unique")
    first = frame[column][0]
    assert f"2 rows break it, e.g. row 0 ({column}={first}), row {frame.height} " in message


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (table, col.name)
        for table, cols in SCHEMA.items()
        for col in cols
        if col.required and not col.nullable
    ],
)
def test_nulls_in_non_nullable_columns(ds: Dataset, table: str, column: str) -> None:
    # Null the first row; pick a row that breaks no other rule once nulled.
    bad = edit(ds, table, set_rows(column, [0], None))
    problems = validate_dataset(bad)
    assert (
        f"{table}.parquet: column {column}: must not be null; 1 row breaks it, e.g. row 0 ("
        in (problems[0])
    ), problems
    # A null id also leaves rows of other tables pointing nowhere; nothing else may fire.
    assert all("must not be null" in p or "must name a" in p for p in problems), problems


def test_nullable_columns_accept_nulls(ds: Dataset) -> None:
    for table, cols in SCHEMA.items():
        for col in cols:
            if (
                col.nullable
                and col.name in ds.tables()[table].columns
                and col.name != Col.SERIES_ID
            ):
                ds = edit(ds, table, set_rows(col.name, [0], None))
    # A page has one device: null it on every row of the first page.
    imp = ds.tables()[IMPRESSIONS]
    page = imp[Col.PAGE_ID].eq(imp[Col.PAGE_ID][0]).arg_true().to_list()
    ds = edit(ds, IMPRESSIONS, set_rows(Col.DEVICE, page, None))
    assert validate_dataset(ds) == []


def test_negative_seconds_watched(ds: Dataset) -> None:
    bad = edit(ds, PLAYS, set_rows(Col.SECONDS_WATCHED, [5], -30.0))
    message = one(
        validate_dataset(bad), "plays.parquet: column seconds_watched: must not be negative"
    )
    assert "seconds_watched=-30)" in message


@pytest.mark.parametrize(("table", "column"), [(TITLES, Col.MATURITY), (USERS, Col.MATURITY_MAX)])
def test_maturity_outside_allowed_set(ds: Dataset, table: str, column: str) -> None:
    bad = edit(ds, table, set_rows(column, [0], 12))
    message = one(
        validate_dataset(bad), f"{table}.parquet: column {column}: must be one of 0, 7, 13, 16, 18"
    )
    assert f"{column}=12" in message


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (PLAYS, Col.TS),
        (IMPRESSIONS, Col.TS),
        (TITLES, Col.ADDED_AT),
        (USERS, Col.CREATED_AT),
    ],
)
def test_timestamps_after_the_clock(ds: Dataset, table: str, column: str) -> None:
    late = CLOCK + timedelta(days=1)
    frame = ds.tables()[table]
    # A page's rows share a ts; a title or user added late also makes its events early.
    rows = [0] if table != IMPRESSIONS else frame[Col.PAGE_ID].eq(frame[Col.PAGE_ID][0])
    rows = rows if isinstance(rows, list) else rows.arg_true().to_list()
    bad = edit(ds, table, set_rows(column, rows, late))
    problems = validate_dataset(bad)
    rule = f"{table}.parquet: column {column}: must not be later than the dataset clock "
    assert problems[0].startswith(rule + CLOCK.isoformat()), problems
    assert f"{column}={late.isoformat()}" in problems[0]
    assert all("must not be earlier than" in p for p in problems[1:]), problems


def test_episode_without_series_id(ds: Dataset) -> None:
    row = ds.titles[Col.EPISODE].is_not_null().arg_true()[0]
    bad = edit(ds, TITLES, set_rows(Col.SERIES_ID, [row], None))
    message = one(
        validate_dataset(bad), "titles.parquet: column episode: an episode needs a series_id"
    )
    assert "series_id=null" in message


def test_episode_without_series_id_column(ds: Dataset) -> None:
    bad = edit(ds, TITLES, lambda f: f.drop(Col.SERIES_ID))
    message = one(validate_dataset(bad), "titles.parquet: column episode: an episode needs")
    assert f"{ds.titles[Col.EPISODE].is_not_null().sum()} rows break it" in message


def test_episode_below_one(ds: Dataset) -> None:
    row = ds.titles[Col.EPISODE].is_not_null().arg_true()[0]
    bad = edit(ds, TITLES, set_rows(Col.EPISODE, [row], 0))
    one(validate_dataset(bad), "titles.parquet: column episode: must be at least 1")


@pytest.mark.parametrize(
    ("table", "column", "value", "rule"),
    [
        (TITLES, Col.RELEASE_YEAR, 1066, "must be within [1870, 2029]"),
        (TITLES, Col.DURATION_MIN, 0.0, "must be greater than 0"),
        (TITLES, Col.DURATION_MIN, float("nan"), "must be a finite number"),
        (PLAYS, Col.PROGRESS, float("nan"), "must be a finite number"),
        (PLAYS, Col.SECONDS_WATCHED, float("inf"), "must be a finite number"),
        (PLAYS, Col.RATING, float("nan"), "must be a finite number"),
        (TITLES, Col.NAME, "  ", "must not be empty"),
        (USERS, Col.COUNTRY, "usa", "must be a two-letter upper-case ISO 3166 code"),
        (IMPRESSIONS, Col.ROW_INDEX, -1, "must not be negative"),
    ],
)
def test_value_rules(ds: Dataset, table: str, column: str, value: object, rule: str) -> None:
    bad = edit(ds, table, set_rows(column, [0], value))
    message = one(validate_dataset(bad), f"{table}.parquet: column {column}: {rule}")
    assert "1 row breaks it, e.g. row 0 (" in message


def test_country_codes_in_title_lists(ds: Dataset) -> None:
    bad = edit(ds, TITLES, set_rows(Col.COUNTRIES, [0], ["US", "France"]))
    message = one(validate_dataset(bad), "titles.parquet: column countries: must hold two-letter")
    assert "countries=[US, France]" in message


def test_null_inside_genre_list(ds: Dataset) -> None:
    bad = edit(ds, TITLES, set_rows(Col.GENRES, [2], ["Drama", None]))
    message = one(validate_dataset(bad), "titles.parquet: column genres: lists must not contain")
    assert "genres=[Drama, null]" in message


@pytest.mark.parametrize(
    ("table", "other", "column", "rule"),
    [
        (TITLES, Col.ADDED_AT, Col.TITLE_ID, "the title's added_at"),
        (USERS, Col.CREATED_AT, Col.USER_ID, "the user's created_at"),
    ],
)
def test_play_before_its_title_or_user_existed(
    ds: Dataset, table: str, other: str, column: str, rule: str
) -> None:
    play = ds.plays.row(0, named=True)
    owner = ds.tables()[table][column].eq(play[column]).arg_true()[0]
    # Move the title / user to just after this play (still before the clock).
    bad = edit(ds, table, set_rows(other, [owner], play[Col.TS] + timedelta(seconds=1)))
    problems = validate_dataset(bad)
    plays_problem = [p for p in problems if p.startswith("plays.parquet")]
    assert len(plays_problem) == 1, problems
    assert f"column ts: must not be earlier than {rule}" in plays_problem[0]
    assert "row 0 (" in plays_problem[0]
    assert f"ts={play[Col.TS].isoformat()}" in plays_problem[0]  # row 0's own values


def test_impression_slot_holds_one_title(ds: Dataset) -> None:
    bad = edit(ds, IMPRESSIONS, set_rows(Col.POSITION, [1], 0))
    message = one(
        validate_dataset(bad),
        "impressions.parquet: column position: each (page_id, row_index, position) slot",
    )
    assert "2 rows break it, e.g. row 0 (" in message


@pytest.mark.parametrize("seed", range(5))
def test_duplicated_slots_equal_the_exact_comparison(seed: int) -> None:
    """The hashed pre-filter finds exactly the rows an exact comparison of the slots finds,
    nulls included, on frames where most slots collide."""
    rng = np.random.default_rng(seed)
    n = 400
    frame = pl.DataFrame(
        {
            Col.PAGE_ID: [None if x == 0 else f"p{x}" for x in rng.integers(0, 6, n)],
            Col.ROW_INDEX: rng.integers(0, 4, n),
            Col.POSITION: rng.integers(0, 8, n),
        }
    )
    slot = [Col.PAGE_ID, Col.ROW_INDEX, Col.POSITION]
    want = frame.select(pl.struct(slot).is_duplicated()).to_series().arg_true()
    got = _duplicated_slots(frame.lazy().with_row_index(ROW), slot)
    assert 0 < len(want) < n and got.to_list() == want.to_list()
    unique = frame.unique(slot, keep="first", maintain_order=True)
    assert _duplicated_slots(unique.lazy().with_row_index(ROW), slot).is_empty()
    # In several passes (each grouping a share of the hashes) the rows found are the same.
    in_passes = _duplicated_slots(frame.lazy().with_row_index(ROW), slot, rows_per_pass=70)
    assert in_passes.to_list() == want.to_list()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (Col.USER_ID, "u2"),
        (Col.TS, CLOCK - timedelta(hours=2)),
        (Col.DEVICE, "web"),
    ],
)
def test_page_rows_share_user_ts_device(ds: Dataset, column: str, value: object) -> None:
    imp = ds.tables()[IMPRESSIONS]
    page = imp[Col.PAGE_ID][0]
    # Change the page's last row to something its other rows do not have.
    row = imp[Col.PAGE_ID].eq(page).arg_true()[-1]
    if imp[column][0] == value:
        value = "u3" if column == Col.USER_ID else "tv"
    bad = edit(ds, IMPRESSIONS, set_rows(column, [row], value))
    problems = [p for p in validate_dataset(bad) if "all rows of one page_id must share" in p]
    assert len(problems) == 1
    assert problems[0].startswith(f"impressions.parquet: column {column}: ")
    assert f"page_id={page}" in problems[0]


def test_every_problem_at_once(ds: Dataset) -> None:
    bad = edit(ds, PLAYS, set_rows(Col.PROGRESS, [0], 2.0))
    bad = edit(bad, PLAYS, set_rows(Col.SECONDS_WATCHED, [1], -1.0))
    bad = edit(bad, TITLES, set_rows(Col.KIND, [0], "short"))
    bad = edit(bad, USERS, set_rows(Col.MATURITY_MAX, [0], 21))
    problems = validate_dataset(bad)
    assert len(problems) == 4
    assert {p.split(":")[0] + ":" + p.split(":")[1] for p in problems} == {
        "plays.parquet: column progress",
        "plays.parquet: column seconds_watched",
        "titles.parquet: column kind",
        "users.parquet: column maturity_max",
    }


def test_validation_is_vectorised_on_a_large_table(ds: Dataset) -> None:
    # 240k plays: the rules are whole-column polars expressions, so this stays well under a
    # second; a per-row Python loop would take many seconds (timed in bench/bench_data.py).
    big = edit(ds, PLAYS, lambda f: pl.concat([f] * 5_000).rechunk())
    bad = edit(big, PLAYS, set_rows(Col.PROGRESS, [200_001], 7.0))
    message = one(validate_dataset(bad), "plays.parquet: column progress")
    assert "row 200001 (" in message


# ----- structure: files, columns, dtypes, manifest -----------------------------------------------


@pytest.fixture
def saved(ds: Dataset, tmp_path: Path) -> Path:
    save_dataset(ds, tmp_path)
    return tmp_path


def rewrite(directory: Path, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    path = directory / f"{table}.parquet"
    change(pl.read_parquet(path)).write_parquet(path)


@pytest.mark.parametrize("table", [TITLES, USERS, PLAYS])
def test_missing_required_file(saved: Path, table: str) -> None:
    (saved / f"{table}.parquet").unlink()
    ds, problems = read_tables(saved)
    one(problems, f"{table}.parquet: file is missing")
    assert ds.tables()[table].height == 0
    # The other tables are still checked: with titles or users gone, plays point nowhere.
    rest = validate_dataset(ds)
    if table == PLAYS:
        assert rest == []
    else:
        column = Col.TITLE_ID if table == TITLES else Col.USER_ID
        assert any(p.startswith(f"plays.parquet: column {column}: must name a") for p in rest)


def test_missing_impressions_is_fine(saved: Path) -> None:
    (saved / "impressions.parquet").unlink()
    ds, problems = validate_directory(saved)
    assert problems == []
    assert ds is not None and ds.impressions is None


def test_unreadable_parquet(saved: Path) -> None:
    (saved / "plays.parquet").write_bytes(b"PAR1 this is not parquet")
    ds, problems = validate_directory(saved)
    one(problems, "plays.parquet: cannot be read as Parquet (")
    assert ds is not None and ds.plays.height == 0


def test_impressions_with_a_damaged_page_are_reported_when_read(saved: Path) -> None:
    """Impressions are read as a scan: a file whose footer is intact but whose data is damaged
    is still reported by `read_tables`, not left to fail in the middle of a later step."""
    path = saved / "impressions.parquet"
    data = bytearray(path.read_bytes())
    data[100:400] = bytes(b ^ 0x55 for b in data[100:400])
    path.write_bytes(bytes(data))
    ds, problems = validate_directory(saved)
    one(problems, "impressions.parquet: cannot be read as Parquet (")
    assert ds is not None and ds.impressions is not None
    assert ds.impressions.collect().height == 0


def test_missing_required_column(saved: Path) -> None:
    rewrite(saved, PLAYS, lambda f: f.drop(Col.PROGRESS))
    _, problems = validate_directory(saved)
    one(problems, "plays.parquet: column progress: required column is missing")


@pytest.mark.parametrize(
    ("table", "column", "change", "expected"),
    [
        (
            PLAYS,
            Col.TITLE_ID,
            pl.col(Col.TITLE_ID).str.slice(1).cast(pl.Int64, strict=False),
            "must have dtype String, found Int64 (ids and codes are strings",
        ),
        (
            PLAYS,
            Col.TS,
            pl.col(Col.TS).dt.replace_time_zone(None),
            "found Datetime(time_unit='us', time_zone=None) (timestamps must carry time zone UTC",
        ),
        (
            USERS,
            Col.CREATED_AT,
            pl.col(Col.CREATED_AT).dt.convert_time_zone("Europe/Paris"),
            "convert with pl.col(...).dt.convert_time_zone('UTC')",
        ),
        (PLAYS, Col.PROGRESS, pl.col(Col.PROGRESS).cast(pl.String), "found String"),
        (TITLES, Col.MATURITY, pl.col(Col.MATURITY).cast(pl.Float64), "must have dtype Int8"),
        (IMPRESSIONS, Col.PLAYED, pl.col(Col.PLAYED).cast(pl.Int8), "must have dtype Boolean"),
    ],
)
def test_wrong_dtype_is_a_problem_not_a_cast(
    saved: Path, table: str, column: str, change: pl.Expr, expected: str
) -> None:
    rewrite(saved, table, lambda f: f.with_columns(change))
    ds, problems = validate_directory(saved)
    message = one(problems, f"{table}.parquet: column {column}: must have dtype")
    assert expected in message
    # The column is dropped rather than passed on, and its rules are skipped without a crash.
    assert ds is not None and column not in ds.tables()[table].columns


def test_accepted_dtype_variants_are_normalised(ds: Dataset, saved: Path) -> None:
    rewrite(
        saved,
        PLAYS,
        lambda f: f.with_columns(
            pl.col(Col.PROGRESS).cast(pl.Float64),
            pl.col(Col.TS).dt.cast_time_unit("ns"),
        ),
    )
    rewrite(
        saved,
        TITLES,
        lambda f: f.with_columns(
            pl.col(Col.MATURITY).cast(pl.UInt64),
            pl.col(Col.ADDED_AT).dt.cast_time_unit("ms").dt.convert_time_zone("Etc/UTC"),
            pl.lit(None).alias(Col.DURATION_MIN),  # dtype Null, allowed in a nullable column
        ),
    )
    read, problems = validate_directory(saved)
    assert problems == []
    assert read is not None
    for table, cols in SCHEMA.items():
        frame = read.tables()[table]
        for col in cols:
            if col.name in frame.columns:
                assert frame.schema[col.name] == col.dtype, (table, col.name)
    assert read.plays.equals(ds.plays)


def test_integer_that_does_not_fit(saved: Path) -> None:
    rewrite(saved, TITLES, lambda f: f.with_columns(pl.col(Col.MATURITY).cast(pl.Int64) * 100))
    _, problems = validate_directory(saved)
    message = one(problems, "titles.parquet: column maturity: must fit dtype Int8")
    assert "maturity=1600" in message


def test_extra_columns_are_kept(saved: Path) -> None:
    rewrite(saved, USERS, lambda f: f.with_columns(pl.lit("gold").alias("plan")))
    ds, problems = validate_directory(saved)
    assert problems == []
    assert ds is not None and ds.users["plan"].to_list() == ["gold"] * ds.users.height


def test_missing_manifest_means_clock_now(saved: Path) -> None:
    (saved / MANIFEST).unlink()
    before = datetime.now(UTC)
    ds, problems = validate_directory(saved)
    assert problems == []
    assert ds is not None and before <= ds.clock <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (b"{not json", "dataset.json: not valid JSON"),
        (b"[1, 2]", "dataset.json: must be a JSON object"),
        (orjson.dumps({"schema_version": 1}), "dataset.json: clock is missing"),
        (orjson.dumps({"clock": "yesterday"}), "dataset.json: clock 'yesterday' is not an ISO"),
        (orjson.dumps({"clock": "2024-06-01T00:00:00"}), "dataset.json: clock '2024-06-01T00"),
        (
            orjson.dumps({"clock": "2024-06-01T00:00:00+00:00", "schema_version": 9}),
            "dataset.json: schema_version 9 is not 1",
        ),
    ],
)
def test_bad_manifest(saved: Path, manifest: bytes, expected: str) -> None:
    (saved / MANIFEST).write_bytes(manifest)
    _, problems = read_tables(saved)
    one(problems, expected)


def test_clock_from_manifest_in_another_zone_is_converted(saved: Path) -> None:
    (saved / MANIFEST).write_bytes(orjson.dumps({"clock": "2024-06-01T02:00:00+02:00"}))
    ds, problems = validate_directory(saved)
    assert problems == []
    assert ds is not None and ds.clock == CLOCK and ds.clock.tzinfo is not None


def test_missing_directory(tmp_path: Path) -> None:
    ds, problems = validate_directory(tmp_path / "nowhere")
    assert ds is None
    one(problems, f"{tmp_path / 'nowhere'}: no such dataset directory")


def test_load_dataset_raises_with_every_problem(saved: Path) -> None:
    rewrite(saved, PLAYS, lambda f: f.with_columns(pl.lit(-1.0, pl.Float32).alias(Col.PROGRESS)))
    (saved / "users.parquet").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(saved)
    assert any(p.startswith("users.parquet: file is missing") for p in info.value.problems)
    assert any(p.startswith("plays.parquet: column progress") for p in info.value.problems)
    assert any(p.startswith("plays.parquet: column user_id") for p in info.value.problems)


def test_conform_dataset_for_frames_built_in_code(ds: Dataset) -> None:
    loose = edit(ds, PLAYS, lambda f: f.with_columns(pl.col(Col.SECONDS_WATCHED).cast(pl.Float64)))
    loose = edit(loose, USERS, lambda f: f.drop(Col.COUNTRY))
    fixed, problems = conform_dataset(loose)
    one(problems, "users.parquet: column country: required column is missing")
    assert fixed.plays.schema[Col.SECONDS_WATCHED] == pl.Float32
    # The value rules still run on what is there, and skip the missing column.
    assert validate_dataset(fixed) == []
