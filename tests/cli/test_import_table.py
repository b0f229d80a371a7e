"""The README's quickstart for a team's own data, end to end on a small generated CSV:
plays + titles -> `rowrank import table` -> validate -> train -> a page for a real member."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from engine.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from engine.data.dataset import load_dataset

RunCli = Callable[..., tuple[int, str, str]]  # the `run_cli` fixture (tests/conftest.py)
GENRES = ("Comedy", "Drama", "Thriller", "Kids", "Documentary")
START = datetime(2025, 3, 1, tzinfo=UTC)
# The tiny model's page settings (tests/conftest.py TINY_PAGE), as a user's layered config.
QUICK_CONFIG = """[page]
windows = 3
window_days = 5.0
max_pages_per_window = 1500
title_trees = 40
title_leaves = 15
row_trees = 30
row_leaves = 7
min_data_in_leaf = 20
train_threads = 1
"""


def write_tables(out: Path, users: int = 150, titles: int = 80, days: int = 35) -> None:
    """A small catalog and its plays as a team might export them: CSV, ISO times, genres
    "|"-separated, members who prefer a genre and titles whose popularity falls off."""
    rng = np.random.default_rng(7)
    genre = rng.integers(0, len(GENRES), titles)
    pl.DataFrame(
        {
            "title_id": [f"m{i}" for i in range(titles)],
            "name": [f"Film number {i}" for i in range(titles)],
            "genres": [
                GENRES[k] + (f"|{GENRES[(k + 1) % len(GENRES)]}" if i % 3 == 0 else "")
                for i, k in enumerate(genre)
            ],
            "release_year": [2000 + i % 25 for i in range(titles)],
            "duration_min": [90 + i % 40 for i in range(titles)],
        }
    ).write_csv(out / "titles.csv")
    taste = rng.integers(0, len(GENRES), users)
    popularity = 1.0 / np.arange(1, titles + 1) ** 0.8
    rows = []
    for u in range(users):
        weight = popularity * np.where(genre == taste[u], 4.0, 1.0)
        picks = rng.choice(
            titles,
            size=min(titles, int(rng.integers(5, 30))),
            replace=False,
            p=weight / weight.sum(),
        )
        for t in picks:
            ts = START + timedelta(seconds=int(rng.integers(0, days * 86_400)))
            device = ("tv", "mobile", "web")[int(rng.integers(0, 3))]
            progress = round(float(rng.uniform(0.05, 1.0)), 3)
            rows.append((f"user{u}", f"m{t}", f"{ts:%Y-%m-%dT%H:%M:%SZ}", device, progress))
    pl.DataFrame(
        rows, schema=["user_id", "title_id", "ts", "device", "progress"], orient="row"
    ).write_csv(out / "plays.csv")


def test_own_data_quickstart(tmp_path: Path, run_cli: RunCli) -> None:
    write_tables(tmp_path)
    data, model = tmp_path / "data", tmp_path / "model"
    code, out, err = run_cli(
        "import", "table", tmp_path / "plays.csv", tmp_path / "titles.csv", data
    )
    assert code == EXIT_OK, err
    assert "users" in out and str(data) in out
    code, out, err = run_cli("validate", data)
    assert code == EXIT_OK, err
    ds = load_dataset(data)
    plays = pl.read_csv(tmp_path / "plays.csv")
    assert ds.plays.height == plays.height and ds.users.height == plays["user_id"].n_unique()
    # "|"-separated genres become lists: every third title has two.
    assert [len(g) for g in ds.titles["genres"].to_list()[:3]] == [2, 1, 1]
    config = tmp_path / "quick.toml"
    config.write_text(QUICK_CONFIG, encoding="utf-8")
    # --tune-budget 0: the config's keys as given (tuning is tested in tests/training).
    code, out, err = run_cli("train", data, model, "--config", config, "--tune-budget", "0")
    assert code == EXIT_OK, err
    code, out, _ = run_cli("users", model, "--limit", "3")
    member = out.splitlines()[0]
    assert member in set(plays["user_id"])
    at = (ds.clock + timedelta(hours=20)).isoformat()
    code, out, err = run_cli("page", model, "--user", member, "--at", at)
    assert code == EXIT_OK and err == ""
    page = orjson.loads(out)
    assert page["user_id"] == member and len(page["rows"]) >= 3
    assert page["context"]["country"] is None  # no countries anywhere: none is needed
    code, table, _ = run_cli("page", model, "--user", member, "--at", at, "--format", "table")
    assert code == EXIT_OK and len(table.splitlines()) == 1 + len(page["rows"])


def test_parquet_gives_the_same_dataset_as_csv(tmp_path: Path, run_cli: RunCli) -> None:
    write_tables(tmp_path, users=20, titles=15, days=5)
    for name in ("plays", "titles"):
        frame = pl.read_csv(tmp_path / f"{name}.csv", infer_schema=False)
        if name == "titles":
            frame = frame.with_columns(pl.col("genres").str.split("|"))
        frame.write_parquet(tmp_path / f"{name}.parquet")
    for suffix in ("csv", "parquet"):
        code, _, err = run_cli(
            "import",
            "table",
            tmp_path / f"plays.{suffix}",
            tmp_path / f"titles.{suffix}",
            tmp_path / suffix,
        )
        assert code == EXIT_OK, err
    a, b = load_dataset(tmp_path / "csv"), load_dataset(tmp_path / "parquet")
    for table in ("plays", "titles", "users"):
        assert getattr(a, table).equals(getattr(b, table)), table
    assert a.clock == b.clock


def test_users_file_sets_countries_and_unix_seconds_are_times(
    tmp_path: Path, run_cli: RunCli
) -> None:
    write_tables(tmp_path, users=10, titles=10, days=3)
    plays = pl.read_csv(tmp_path / "plays.csv").with_columns(
        pl.col("ts").str.to_datetime(time_zone="UTC").dt.epoch("s").alias("ts")
    )
    plays.write_csv(tmp_path / "plays_unix.csv")
    users = plays.select(pl.col("user_id").unique().sort()).with_columns(
        pl.lit("DE").alias("country"), pl.lit(13).alias("maturity_max")
    )
    users.write_csv(tmp_path / "users.csv")
    argv = ["import", "table", tmp_path / "plays_unix.csv", tmp_path / "titles.csv", tmp_path / "d"]
    code, _, err = run_cli(*argv, "--users", tmp_path / "users.csv")
    assert code == EXIT_OK and err == ""
    ds = load_dataset(tmp_path / "d")
    assert set(ds.users["country"]) == {"DE"} and set(ds.users["maturity_max"]) == {13}
    first = datetime.fromtimestamp(int(plays["ts"].min()), UTC)  # type: ignore[arg-type]
    assert ds.plays["ts"].min() == first


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda p, t: (p.drop("ts"), t), ["plays.csv", "no column 'ts'", "required: user_id"]),
        (lambda p, t: (p.rename({"device": "devise"}), t), ["unknown column 'devise'"]),
        (
            lambda p, t: (p.with_columns(pl.lit("m999").alias("title_id")), t),
            ["title_id that is not in", "'m999'"],
        ),
        (
            lambda p, t: (p.with_columns(pl.lit("yesterday").alias("ts")), t),
            ["ts 'yesterday' is neither ISO 8601"],
        ),
        (
            lambda p, t: (p.with_columns(pl.lit("lots").alias("progress")), t),
            ["plays.csv", "does not fit its column"],
        ),
    ],
)
def test_bad_tables_are_one_line_errors(
    tmp_path: Path,
    run_cli: RunCli,
    change: Callable[..., tuple[pl.DataFrame, pl.DataFrame]],
    words: list[str],
) -> None:
    write_tables(tmp_path, users=10, titles=10, days=3)
    plays, titles = change(
        pl.read_csv(tmp_path / "plays.csv", infer_schema=False),
        pl.read_csv(tmp_path / "titles.csv", infer_schema=False),
    )
    plays.write_csv(tmp_path / "plays.csv")
    titles.write_csv(tmp_path / "titles.csv")
    code, out, err = run_cli(
        "import", "table", tmp_path / "plays.csv", tmp_path / "titles.csv", tmp_path / "d"
    )
    assert code == EXIT_USAGE and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "d").exists()


def test_rule_breaking_values_are_data_problems(tmp_path: Path, run_cli: RunCli) -> None:
    write_tables(tmp_path, users=10, titles=10, days=3)
    plays = pl.read_csv(tmp_path / "plays.csv", infer_schema=False)
    plays.with_columns(pl.lit("1.5").alias("progress")).write_csv(tmp_path / "plays.csv")
    code, _, err = run_cli(
        "import", "table", tmp_path / "plays.csv", tmp_path / "titles.csv", tmp_path / "d"
    )
    assert code == EXIT_FAILED and "progress" in err
    assert not (tmp_path / "d").exists()


def test_optional_title_columns_are_kept(tmp_path: Path, run_cli: RunCli) -> None:
    write_tables(tmp_path, users=10, titles=10, days=3)
    titles = pl.read_csv(tmp_path / "titles.csv", infer_schema=False).with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("s1")).alias("series_id"),
        pl.when(pl.int_range(pl.len()) < 2).then(pl.int_range(pl.len()) + 1).alias("episode"),
        pl.lit("quiet| slow burn |").alias("tags"),
        pl.lit("US|DE").alias("countries"),
        pl.lit("series").alias("kind"),
    )
    titles.write_csv(tmp_path / "titles.csv")
    argv = ["import", "table", tmp_path / "plays.csv", tmp_path / "titles.csv", tmp_path / "d"]
    code, _, err = run_cli(*argv)
    assert code == EXIT_OK, err
    # Licensed per country, but no users file to give members theirs: said at once.
    assert err.startswith("note: 10 titles are licensed per country (0 everywhere) but 10 of")
    code, out, _ = run_cli("validate", tmp_path / "d")
    assert code == EXIT_OK and "users have no country" in out
    ds = load_dataset(tmp_path / "d")
    assert ds.titles["series_id"].to_list()[:3] == ["s1", "s1", None]
    assert ds.titles["episode"].to_list()[:3] == [1, 2, None]
    assert ds.titles["tags"][0].to_list() == ["quiet", "slow burn"]
    assert ds.titles["countries"][0].to_list() == ["US", "DE"]
    assert "cast" not in ds.titles.columns  # not given: left out, as the schema allows
