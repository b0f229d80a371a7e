"""`rowrank import`, `rowrank validate`, `rowrank demo` and the help texts, run in-process."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from engine.cli import COMMANDS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from engine.data.columns import Col


def test_import_then_validate(
    movielens_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ml"
    assert main(["import", "movielens", str(movielens_files / "ml-latest"), str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "imported MovieLens ml-latest: 12 plays, 4 users, 8 titles" in printed

    assert main(["validate", str(out)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "titles 8, users 4, plays 12, impressions none" in captured.out
    assert "plays from 2001-09-09 to 2014-05-13" in captured.out
    assert "kinds: movie 8" in captured.out


def test_validate_bad_data_lists_every_problem(
    movielens_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ml"
    assert main(["import", "movielens", str(movielens_files / "ml-latest"), str(out)]) == EXIT_OK
    plays = pl.read_parquet(out / "plays.parquet")
    plays.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(pl.lit(1.5, pl.Float32))
        .otherwise(pl.col(Col.PROGRESS))
        .alias(Col.PROGRESS),
        pl.lit("fridge").alias(Col.DEVICE),
    ).write_parquet(out / "plays.parquet")
    (out / "users.parquet").unlink()
    capsys.readouterr()

    assert main(["validate", str(out)]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"4 problem(s) in {out}:"
    assert len(lines) == 5
    assert lines[1].startswith("- users.parquet: file is missing")
    body = "\n".join(lines[1:])
    assert "- plays.parquet: column user_id: must name a user in users.parquet; 12 rows" in body
    assert "- plays.parquet: column device: must be one of tv, mobile, tablet, web or null" in body
    assert (
        "- plays.parquet: column progress: must be within [0, 1]; 1 row breaks it, e.g. row 2"
        in (body)
    )


def test_validate_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == EXIT_FAILED
    assert "no such dataset directory" in capsys.readouterr().err


def test_import_broken_source_names_file_and_line(
    movielens_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = movielens_files / "broken" / "bad-line"
    assert main(["import", "movielens", str(src), str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / 'ratings.csv'}: line 4: movieId 'abc' is not an integer")


def test_demo_runs_offline_and_keeps_files_with_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--quick`: the tiny world and small models (the full demo takes about a minute).
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "homepages of member" in printed
    assert printed.count("visible (") == 4  # two devices x two times of day
    assert (tmp_path / "demo" / "world" / "plays.parquet").is_file()
    assert (tmp_path / "demo" / "model" / "manifest.json").is_file()
    assert main(["validate", str(tmp_path / "demo" / "world")]) == EXIT_OK


@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name, *_ in COMMANDS]])
def test_help_shows_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "Example: rowrank" in capsys.readouterr().out
