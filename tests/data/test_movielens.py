"""engine.data.movielens: each MovieLens layout converts to the documented dataset; broken input
names the file and line."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engine.data.columns import SCHEMA, TITLES, USERS, Col
from engine.data.dataset import Dataset
from engine.data.movielens import detect_format, import_movielens
from engine.data.validate import validate_directory
from engine.errors import ImportFormatError

ROOT = Path(__file__).resolve().parents[2]


def real_movielens_dir() -> Path:
    """ml-latest-small: $ROWRANK_MOVIELENS_DIR, else shared/data beside the checkout."""
    env = os.environ.get("ROWRANK_MOVIELENS_DIR")
    if env:
        return Path(env)
    return ROOT.parent / "shared" / "data" / "ml-latest-small"


def convert(files: Path, name: str, out: Path) -> Dataset:
    """Import a fixture and check the written directory passes `rowrank validate`."""
    ds = import_movielens(files / name, out)
    read, problems = validate_directory(out)
    assert problems == []
    assert read is not None
    for table, frame in ds.tables().items():
        assert read.tables()[table].equals(frame)
    return ds


def title(ds: Dataset, title_id: str) -> dict[str, object]:
    rows = ds.titles.filter(pl.col(Col.TITLE_ID) == title_id)
    assert rows.height == 1
    return rows.row(0, named=True)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("ml-100k", "ml-100k"), ("ml-1m", "ml-1m"), ("ml-10m", "ml-10m"), ("ml-latest", "ml-latest")],
)
def test_detects_the_format_from_the_files(movielens_files: Path, name: str, fmt: str) -> None:
    assert detect_format(movielens_files / name) == fmt


def test_ml_latest(movielens_files: Path, tmp_path: Path) -> None:
    ds = convert(movielens_files, "ml-latest", tmp_path)
    assert (ds.plays.height, ds.users.height, ds.titles.height) == (12, 4, 8)
    assert ds.source == "MovieLens ml-latest"
    # Every rating is a finished play of unknown length on an unknown device.
    assert ds.plays[Col.PROGRESS].unique().to_list() == [1.0]
    assert ds.plays[Col.SECONDS_WATCHED].unique().to_list() == [0.0]
    assert ds.plays[Col.DEVICE].null_count() == ds.plays.height
    assert ds.plays.row(0, named=True) == {
        Col.USER_ID: "1",
        Col.TITLE_ID: "1",
        Col.TS: at(1000000000),
        Col.DEVICE: None,
        Col.SECONDS_WATCHED: 0.0,
        Col.PROGRESS: 1.0,
        Col.RATING: 3.0,
    }
    assert ds.plays[Col.RATING].to_list()[5] == 0.5
    assert ds.clock == at(1400000900)  # the last rating

    winter = title(ds, "421")
    assert winter[Col.NAME] == "Long Winter, The"  # quoted CSV field, year removed
    assert winter[Col.RELEASE_YEAR] == 1994
    assert winter[Col.GENRES] == ["Drama", "War"]
    assert winter[Col.TAGS] == ["snow", "Jane Doe"]  # most applied first
    assert winter[Col.KIND] == "movie" and winter[Col.MATURITY] == 0
    assert winter[Col.COUNTRIES] == [] and winter[Col.DURATION_MIN] is None
    assert winter[Col.ADDED_AT] == at(999999000)  # its first rating

    ledger = title(ds, "200001")
    assert ledger[Col.NAME] == "Night Ledger: Yoru nôto"
    assert ledger[Col.RELEASE_YEAR] == 2006  # "(2006–2007)"
    assert ledger[Col.GENRES] == []  # "(no genres listed)"
    assert title(ds, "50505")[Col.RELEASE_YEAR] is None  # "Station 5" has no year
    # Never rated, only tagged: added when first tagged.
    visitors = title(ds, "2207")
    assert visitors[Col.ADDED_AT] == at(1100000300)
    assert visitors[Col.TAGS] == ["eerie, quiet"]
    assert title(ds, "2")[Col.TAGS] == []

    users = ds.users.sort(Col.USER_ID)
    assert users[Col.USER_ID].to_list() == ["1", "2", "3", "4"]
    assert users[Col.CREATED_AT][1] == at(1400000000)  # user 2's first rating
    assert users[Col.COUNTRY].null_count() == 4
    assert users[Col.MATURITY_MAX].to_list() == [18] * 4


def test_ml_100k(movielens_files: Path, tmp_path: Path) -> None:
    ds = convert(movielens_files, "ml-100k", tmp_path)
    assert (ds.plays.height, ds.users.height, ds.titles.height) == (12, 4, 7)
    harbor = title(ds, "60")
    assert harbor[Col.NAME] == "Star Harbor"
    assert harbor[Col.RELEASE_YEAR] == 1977
    assert harbor[Col.GENRES] == ["Action", "Sci-Fi", "War"]
    assert title(ds, "1")[Col.GENRES] == ["Animation", "Fantasy"]
    assert title(ds, "1400")[Col.NAME] == "Lumière, La"  # latin-1 decoded
    # The title's year wins over the (later) US release date; without one, the date's year.
    assert title(ds, "1650")[Col.RELEASE_YEAR] == 1991
    assert title(ds, "990")[Col.RELEASE_YEAR] == 1997
    unknown = title(ds, "12")
    assert unknown[Col.RELEASE_YEAR] is None and unknown[Col.GENRES] == []
    assert Col.TAGS not in ds.titles.columns
    # u.user columns are kept beside the schema's.
    first = ds.users.row(0, named=True)
    assert first == {
        Col.USER_ID: "1",
        Col.COUNTRY: None,
        Col.MATURITY_MAX: 18,
        Col.CREATED_AT: at(870000000),
        "age": 31,
        "gender": "M",
        "occupation": "technician",
        "zip_code": "10001",
    }
    assert ds.plays[Col.RATING].to_list()[:3] == [4.0, 2.0, 5.0]


def test_ml_1m(movielens_files: Path, tmp_path: Path) -> None:
    ds = convert(movielens_files, "ml-1m", tmp_path)
    assert (ds.plays.height, ds.users.height, ds.titles.height) == (8, 3, 4)
    assert title(ds, "77")[Col.NAME] == "Lumière, La"
    assert title(ds, "3901")[Col.RELEASE_YEAR] == 2000
    assert title(ds, "2")[Col.GENRES] == ["Adventure", "Children's", "Western"]
    assert ds.users.columns[4:] == ["gender", "age", "occupation", "zip_code"]
    assert ds.users.row(1, named=True)["age"] == 56
    assert ds.clock == at(975000000)


def test_ml_10m(movielens_files: Path, tmp_path: Path) -> None:
    ds = convert(movielens_files, "ml-10m", tmp_path)
    assert (ds.plays.height, ds.users.height, ds.titles.height) == (7, 3, 5)
    assert ds.users.columns == [c.name for c in SCHEMA[USERS]]  # no users.dat
    assert ds.plays[Col.RATING].to_list()[1] == 3.5
    emile = title(ds, "5100")
    assert emile[Col.RELEASE_YEAR] == 2001
    assert emile[Col.TAGS] == ["charming!", "Lyon"]
    daisy = title(ds, "8800")
    assert daisy[Col.GENRES] == []
    # Rated exactly at the last rating time: added then, which is the clock.
    assert daisy[Col.ADDED_AT] == ds.clock


def test_import_is_byte_stable(movielens_files: Path, tmp_path: Path) -> None:
    import_movielens(movielens_files / "ml-latest", tmp_path / "a")
    import_movielens(movielens_files / "ml-latest", tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


# ----- broken input ------------------------------------------------------------------------------


def test_missing_movies_file(movielens_files: Path) -> None:
    with pytest.raises(ImportFormatError, match=r"missing-movies/movies\.csv: file is missing"):
        import_movielens(movielens_files / "broken" / "missing-movies", Path("/nonexistent/out"))


def test_bad_line_names_file_and_line(movielens_files: Path) -> None:
    with pytest.raises(ImportFormatError) as info:
        import_movielens(movielens_files / "broken" / "bad-line", Path("/nonexistent/out"))
    assert str(info.value).endswith(
        "bad-line/ratings.csv: line 4: movieId 'abc' is not an integer: '2,abc,4.0,1000000200'"
    )


def test_ragged_line_names_file_and_line(movielens_files: Path) -> None:
    with pytest.raises(ImportFormatError) as info:
        import_movielens(movielens_files / "broken" / "ragged-dat", Path("/nonexistent/out"))
    assert str(info.value).endswith(
        "ragged-dat/ratings.dat: line 3: expected 4 fields, found 5: '1::1::3::975000200::extra'"
    )


def broken_copy(files: Path, tmp_path: Path, name: str, file: str, lines: dict[int, str]) -> Path:
    """A copy of a fixture with some lines (numbered from 1) replaced; "" deletes nothing but
    leaves an empty line."""
    src = tmp_path / name
    shutil.copytree(files / name, src)
    path = src / file
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").split("\n")
    for number, line in lines.items():
        text[number - 1] = line
    path.write_bytes("\n".join(text).encode("utf-8", errors="surrogateescape"))
    return src


@pytest.mark.parametrize(
    ("name", "file", "lines", "expected"),
    [
        (
            "ml-latest",
            "ratings.csv",
            {3: "1,58,4.5"},
            "ratings.csv: line 3: timestamp is missing: '1,58,4.5'",
        ),
        ("ml-latest", "ratings.csv", {5: ""}, "ratings.csv: line 5: empty line: ''"),
        (
            "ml-latest",
            "ratings.csv",
            {1: "user,movie,rating,timestamp"},
            "ratings.csv: line 1: expected the header userId,movieId,rating,timestamp",
        ),
        (
            "ml-latest",
            "ratings.csv",
            {7: "3,999,3.0,1300000100"},
            "ratings.csv: line 7: movie id 999 is not in movies.csv (1 such line)",
        ),
        (
            "ml-latest",
            "movies.csv",
            {4: "1,Paper Lantern again (1995),Comedy"},
            "movies.csv: line 4: movie id 1 appears twice",
        ),
        (
            "ml-latest",
            "tags.csv",
            {2: "2,421,snow,soon"},
            "tags.csv: line 2: timestamp 'soon' is not an integer",
        ),
        (
            "ml-latest",
            "ratings.csv",
            {2: "1,1,four,1000000000"},
            "ratings.csv: line 2: rating 'four' is not a number",
        ),
        ("ml-1m", "users.dat", {2: "2::M::old::16::20002"}, "users.dat: line 2: age 'old'"),
        (
            "ml-1m",
            "ratings.dat",
            {4: "9::3901::3::973000100"},
            "ratings.dat: line 4: user id 9 is not in users.dat",
        ),
        (
            "ml-100k",
            "u.data",
            {6: "3\t60\t1"},
            "u.data: line 6: timestamp is missing: '3\\t60\\t1'",
        ),
        (
            "ml-100k",
            "u.item",
            {2: "2|Copper Valley (1995)|soon||url|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0"},
            "u.item: line 2: bad date",
        ),
        (
            "ml-100k",
            "u.item",
            {2: "2|Copper Valley (1995)|01-Jan-1995||url|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|2|0|0"},
            "u.item: line 2: genre flags must be 0 or 1",
        ),
    ],
)
def test_malformed_lines(
    movielens_files: Path,
    tmp_path: Path,
    name: str,
    file: str,
    lines: dict[int, str],
    expected: str,
) -> None:
    src = broken_copy(movielens_files, tmp_path, name, file, lines)
    with pytest.raises(ImportFormatError) as info:
        import_movielens(src, tmp_path / "out")
    assert str(info.value).startswith(str(src / file))
    assert expected in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_missing_users_file_of_ml_100k(movielens_files: Path, tmp_path: Path) -> None:
    src = tmp_path / "ml-100k"
    shutil.copytree(movielens_files / "ml-100k", src)
    (src / "u.user").unlink()
    with pytest.raises(ImportFormatError, match=r"u\.user: file is missing"):
        import_movielens(src, tmp_path / "out")


def test_no_movielens_files(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="no MovieLens ratings file found"):
        import_movielens(tmp_path, tmp_path / "out")
    with pytest.raises(ImportFormatError, match="no such directory"):
        import_movielens(tmp_path / "nowhere", tmp_path / "out")


def test_ratings_without_rows(movielens_files: Path, tmp_path: Path) -> None:
    src = tmp_path / "ml-latest"
    shutil.copytree(movielens_files / "ml-latest", src)
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(ImportFormatError, match="holds no ratings"):
        import_movielens(src, tmp_path / "out")


# ----- the real thing ----------------------------------------------------------------------------


def test_real_ml_latest_small(tmp_path: Path) -> None:
    src = real_movielens_dir()
    if not (src / "ratings.csv").is_file():
        pytest.skip(
            f"MovieLens ml-latest-small not found at {src} (set ROWRANK_MOVIELENS_DIR to "
            "an unzipped copy from https://grouplens.org/datasets/movielens/)"
        )
    ds = import_movielens(src, tmp_path)
    read, problems = validate_directory(tmp_path)
    assert problems == []
    assert read is not None
    assert read.plays.height == 100_836
    assert read.users.height == 610
    assert read.titles.height == 9_742
    assert read.clock == at(1537799250)
    assert title(read, "1")[Col.NAME] == "Toy Story"
    assert ds.titles.filter(pl.col(Col.RELEASE_YEAR).is_null()).height < 20
    # Titles never rated take their first tag time; none may be later than the clock.
    assert read.titles[Col.ADDED_AT].max() <= read.clock  # type: ignore[operator]
    assert TITLES in read.tables()
