"""`rowrank import`, `rowrank validate`, `rowrank demo` and the help texts, run in-process."""

from __future__ import annotations

import re
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import polars as pl
import pytest

from engine.cli import (
    COMMANDS,
    DEMO_DIR,
    EXAMPLE_DATA,
    EXAMPLE_MODEL,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    main,
)
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


def test_demo_keeps_its_files_and_every_printed_command_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--quick`: the tiny world and small models (the full demo takes about a minute).
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "homepages of member" in printed
    assert printed.count("visible (") == 4  # two devices x two times of day
    demo = Path(DEMO_DIR)
    assert (demo / "world" / "plays.parquet").is_file()
    assert (demo / "model" / "manifest.json").is_file()
    assert f"files in {DEMO_DIR} (kept" in printed
    commands = [line.strip() for line in printed.split("Next:\n", 1)[1].splitlines()]
    commands = [c.split("   #")[0] for c in commands if c.startswith("rowrank ")]
    assert len(commands) == 4 and commands[-1].startswith(f"rowrank serve {demo / 'model'}")
    for command in commands[:-1]:  # serving is tested in tests/serving
        assert main(shlex.split(command)[1:]) == EXIT_OK, command
        out = capsys.readouterr().out
        assert out.strip(), command
    member = re.search(r"--user (\S+)", commands[0])
    assert member is not None and member[1] in printed.split("homepages of member ")[1]
    assert main(["validate", str(demo / "world")]) == EXIT_OK
    capsys.readouterr()

    # A second run reuses the world and the model: no simulation, no training.
    model_files = sorted(p.name for p in (demo / "model").iterdir())
    assert main(["demo", "--quick"]) == EXIT_OK
    again = capsys.readouterr().out
    assert f"reusing the world in {demo / 'world'}" in again
    assert f"reusing the model in {demo / 'model'}" in again
    pages = again.split("homepages of member")[1].split("\ndone in")[0]
    assert pages == printed.split("homepages of member")[1].split("\ndone in")[0]
    assert sorted(p.name for p in (demo / "model").iterdir()) == model_files

    # Another demo's settings, or a directory that is not a demo's, are never overwritten.
    assert main(["demo"]) == EXIT_USAGE
    assert "holds another demo world" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", "mine"]) == EXIT_USAGE
    assert "is not a rowrank demo directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"rowrank {version('rowrank')}\n"


def test_help_examples_use_the_paths_the_readme_creates() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    readme = " ".join(readme.split())  # commands wrapped across lines read as one
    assert f"rowrank simulate {EXAMPLE_DATA} " in readme
    assert f"rowrank train {EXAMPLE_DATA} {EXAMPLE_MODEL}" in readme
    for name, _, example, *_ in COMMANDS:
        # Every data or model directory an example names is one the README creates.
        for word in example.split():
            if word.startswith(("models/", "data/")):
                assert f" {word}" in readme, (name, example)
        assert "models/demo" not in example


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["import", "movielens", "--help"], ["import", "table", "--help"]]
    + [[name, "--help"] for name, *_ in COMMANDS],
)
def test_help_shows_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "Example: rowrank" in capsys.readouterr().out


def test_make_test_says_why_tests_were_skipped() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    (pytest_line,) = [line for line in recipe.splitlines() if "/pytest" in line]
    assert "-rs" in pytest_line.split("#")[0].split()


def test_demo_says_how_to_run_rowrank_when_it_is_not_on_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine.cli.demo import _rowrank_hint

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing named rowrank on it
    hint = _rowrank_hint()
    script = Path(sys.executable).parent / "rowrank"
    assert script.exists()  # the test runs in the project's virtualenv
    assert "is not on your PATH" in hint and "bin/activate" in hint and "bin/rowrank" in hint
    monkeypatch.setenv("PATH", str(script.parent))
    assert _rowrank_hint() == ""
