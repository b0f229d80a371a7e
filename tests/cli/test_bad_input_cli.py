"""The bad-input matrix of the `rowrank` command: import, validate, train, page, precompute.

One test per cell (command x kind of bad input), run in-process through `engine.cli.main`
(a subprocess where the process itself may die). Every cell checks three things:
- the exit code: 2 for bad input, 1 for data problems (`DataError`: the rules `rowrank
  validate` applies, whichever command found them), 0 where the input is not bad at all
  (an unknown member gets a cold-start page);
- a one-line `error:` message naming the bad value or file, no traceback;
- nothing that existed is changed: the dataset, model or output directory (and its parent, for
  temporary siblings) has the same snapshot before and after (docs/reliability.md).

Cells that do not apply to a command (no device in MovieLens, no config for `page`) are not
listed; docs/reliability.md shows the whole matrix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest import run_rowrank
from damage import (
    copy_model,
    copy_world,
    edit_config,
    edit_table,
    first_ranker,
    set_cell,
    set_version,
    snapshot,
    truncate,
)

import engine
from engine.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from engine.serving.precompute import run_precompute

AT = "2030-01-07T20:00:00+00:00"
# Parses as ISO 8601 but has no UTC equivalent (UTC would be in the year 10000, or year 0).
OVERFLOW_TIMES = ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00")
H = "userId,movieId,rating,timestamp\n"
GOOD = H + "1,1,4.0,1000000000\n"
RunCli = Callable[..., tuple[int, str, str]]  # the `run_cli` fixture (tests/conftest.py)


def assert_error(err: str, words: list[str]) -> None:
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


# ----- import -----------------------------------------------------------------------------------

# (cell, fixture, {file: new content (None: delete)}, words the message must hold)
IMPORT_CELLS: list[tuple[str, str, dict[str, str | bytes | None], list[str]]] = [
    (
        "unknown_title",
        "ml-latest",
        {"ratings.csv": GOOD + "1,999999,4.0,1000000001\n"},
        ["ratings.csv: line 3", "movie id 999999 is not in movies.csv"],
    ),
    (
        "unknown_user",
        "ml-1m",
        {"ratings.dat": "1::1::5::975000000\n77::1::4::975000001\n"},
        ["ratings.dat: line 2", "user id 77 is not in users.dat"],
    ),
    (
        "malformed_time",
        "ml-latest",
        {"ratings.csv": GOOD + "1,2,4.0,yesterday\n"},
        ["line 3", "timestamp 'yesterday' is not an integer"],
    ),
    (
        "out_of_range_time",
        "ml-latest",
        {"ratings.csv": GOOD + "1,2,4.0,99999999999999\n"},
        ["line 3", "timestamp 99999999999999 is out of range"],
    ),
    (
        "negative_time",
        "ml-latest",
        {"ratings.csv": GOOD + "1,2,4.0,-5\n"},
        ["line 3", "timestamp -5 is out of range"],
    ),
    (
        "corrupt_source",
        "ml-latest",
        {"ratings.csv": bytes(range(256)) * 8},
        ["ratings.csv: line 1", "expected the header"],
    ),
    (
        "wrong_dtype",
        "ml-latest",
        {"ratings.csv": GOOD + "1,2,five,1000000001\n"},
        ["line 3", "rating 'five' is not a number"],
    ),
    (
        "missing_column",
        "ml-latest",
        {"ratings.csv": "userId,movieId,rating\n1,1,4.0\n"},
        ["line 1", "expected the header userId,movieId,rating,timestamp"],
    ),
    ("missing_file", "ml-latest", {"movies.csv": None}, ["movies.csv: file is missing"]),
    ("empty", "ml-latest", {"ratings.csv": H}, ["ratings.csv: holds no ratings"]),
]


@pytest.fixture
def dataset_dir(movielens_files: Path, tmp_path: Path, run_cli: RunCli) -> Path:
    """An existing dataset directory (a good import), the target of the broken imports."""
    out = tmp_path / "data" / "ml"
    assert (
        run_cli("import", "movielens", str(movielens_files / "ml-latest"), str(out))[0] == EXIT_OK
    )
    return out


@pytest.mark.parametrize(
    ("fixture", "files", "words"),
    [c[1:] for c in IMPORT_CELLS],
    ids=[c[0] for c in IMPORT_CELLS],
)
def test_import(
    fixture: str,
    files: dict[str, str | bytes | None],
    words: list[str],
    dataset_dir: Path,
    movielens_files: Path,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    src = tmp_path / "src"
    shutil.copytree(movielens_files / fixture, src)
    for name, content in files.items():
        if content is None:
            (src / name).unlink()
        elif isinstance(content, bytes):
            (src / name).write_bytes(content)
        else:
            (src / name).write_text(content)
    before = snapshot(dataset_dir.parent)
    code, out, err = run_cli("import", "movielens", str(src), str(dataset_dir))
    assert code == EXIT_USAGE and out == ""
    assert_error(err, words)
    assert snapshot(dataset_dir.parent) == before  # the old dataset, no temporary leftovers


def test_import_replaces_a_dataset_without_keeping_its_other_tables(
    tiny_world: Any, movielens_files: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    """A dataset directory holding impressions (a simulated world) imported over: the result is
    the MovieLens dataset alone, not MovieLens plus the old world's impressions."""
    data = copy_world(tiny_world.path, tmp_path / "data")
    assert (data / "impressions.parquet").is_file()
    code, _, err = run_cli("import", "movielens", str(movielens_files / "ml-latest"), str(data))
    assert code == EXIT_OK, err
    assert not (data / "impressions.parquet").exists()
    assert run_cli("validate", str(data))[0] == EXIT_OK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary sibling left


@pytest.mark.parametrize("kind", ["not_a_dataset", "a_file"])
def test_import_refuses_to_replace_what_is_not_a_dataset(
    kind: str, movielens_files: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    if kind == "a_file":
        target = tmp_path / "notes.txt"
        target.write_text("keep me")
    else:
        target = tmp_path / "home"
        target.mkdir()
        (target / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = run_cli("import", "movielens", str(movielens_files / "ml-latest"), str(target))
    assert code == EXIT_USAGE
    assert_error(err, [str(target)])
    assert snapshot(tmp_path) == before


# ----- data cells shared by validate and train --------------------------------------------------


def _plays(change: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], object]:
    return lambda d: edit_table(d, "plays", change)


def _cut(name: str) -> Callable[[Path], object]:
    def cut(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return cut


def _empty(d: Path) -> None:
    for table in ("titles", "users", "plays", "impressions"):
        edit_table(d, table, lambda f: f.head(0))


def _clock(value: str) -> Callable[[Path], object]:
    def write(d: Path) -> None:
        doc = orjson.loads((d / "dataset.json").read_bytes())
        doc["clock"] = value
        (d / "dataset.json").write_bytes(orjson.dumps(doc))

    return write


FAR_FUTURE_US = 600_000_000_000_000_000  # year 20983: fits Datetime(us), not Python's datetime


def _far_future_play(frame: pl.DataFrame) -> pl.DataFrame:
    far = pl.lit(FAR_FUTURE_US, pl.Int64).cast(pl.Datetime("us", "UTC"))
    row = pl.int_range(pl.len()) == 2
    return frame.with_columns(pl.when(row).then(far).otherwise(pl.col("ts")).alias("ts"))


# (cell, mutation of a copy of tiny_world, words the message must hold)
DATA_CELLS: list[tuple[str, Callable[[Path], object], list[str]]] = [
    (
        "unknown_user",
        _plays(lambda f: set_cell(f, "user_id", 3, "u_nope")),
        ["plays.parquet: column user_id: must name a user", "u_nope"],
    ),
    (
        "unknown_title",
        _plays(lambda f: set_cell(f, "title_id", 3, "t_nope")),
        ["plays.parquet: column title_id: must name a title", "t_nope"],
    ),
    (
        "unknown_device",
        _plays(lambda f: set_cell(f, "device", 3, "toaster")),
        ["plays.parquet: column device: must be one of tv, mobile, tablet, web", "toaster"],
    ),
    (
        "malformed_time",
        _clock("not a time"),
        ["dataset.json: clock 'not a time' is not an ISO 8601 time"],
    ),
    (
        "out_of_range_time",
        _plays(_far_future_play),
        ["plays.parquet: column ts: must not be later than the dataset clock", "+20983"],
    ),
    (
        "out_of_range_clock",
        _clock(OVERFLOW_TIMES[0]),
        ["dataset.json: clock", "out of range"],
    ),
    (
        "corrupt_parquet",
        _cut("plays.parquet"),
        ["plays.parquet: cannot be read as Parquet"],
    ),
    (
        "wrong_dtype",
        _plays(lambda f: f.with_columns(pl.col("progress").cast(pl.String))),
        ["plays.parquet: column progress: must have dtype Float32, found String"],
    ),
    (
        "missing_column",
        _plays(lambda f: f.drop("ts")),
        ["plays.parquet: column ts: required column is missing"],
    ),
]


@pytest.fixture
def world_copy(tiny_world: Any, tmp_path: Path) -> Path:
    return copy_world(tiny_world.path, tmp_path / "data")


@pytest.mark.parametrize(
    ("mutate", "words"), [c[1:] for c in DATA_CELLS], ids=[c[0] for c in DATA_CELLS]
)
def test_validate(
    mutate: Callable[[Path], object],
    words: list[str],
    world_copy: Path,
    run_cli: RunCli,
) -> None:
    mutate(world_copy)
    before = snapshot(world_copy)
    code, out, err = run_cli("validate", str(world_copy))
    assert code == EXIT_FAILED and out == ""
    assert err.startswith("1 problem(s) in "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err
    assert snapshot(world_copy) == before


def test_validate_empty_dataset_is_valid_and_says_so(world_copy: Path, run_cli: RunCli) -> None:
    """Zero rows break no rule (an empty export is well-formed); the summary shows the zeros and
    `train` is the one that refuses it (test_train[empty])."""
    _empty(world_copy)
    code, out, _ = run_cli("validate", str(world_copy))
    assert code == EXIT_OK
    assert "titles 0, users 0, plays 0, impressions 0" in out


# ----- train --------------------------------------------------------------------------------------


@pytest.fixture
def old_model(tiny_model: Path, tmp_path: Path) -> Path:
    """An existing model directory that a failed `train` must leave exactly as it was."""
    return copy_model(tiny_model, tmp_path / "models" / "current")


TRAIN_DATA_CELLS = [*DATA_CELLS, ("empty", _empty, ["no plays", "to train on"])]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [c[1:] for c in TRAIN_DATA_CELLS],
    ids=[c[0] for c in TRAIN_DATA_CELLS],
)
def test_train_bad_data(
    mutate: Callable[[Path], object],
    words: list[str],
    world_copy: Path,
    old_model: Path,
    run_cli: RunCli,
) -> None:
    mutate(world_copy)
    before = snapshot(old_model.parent)
    code, out, err = run_cli("train", str(world_copy), str(old_model))
    assert code == EXIT_FAILED and out == ""
    assert_error(err, words)
    assert snapshot(old_model.parent) == before
    assert engine.load(old_model).model_version  # still loads


CONFIGS: list[tuple[str, str, list[str]]] = [
    (
        "unknown_config_key",
        '[rankers.top_n]\ntype = "top_n"\ncolour = "red"\n',
        ["[rankers.top_n] (type top_n): unknown key 'colour'", "allowed keys: type"],
    ),
    (
        "config_wrong_type",
        '[rankers.trending_24h]\ntype = "trending"\nhalf_life_hours = "soon"\n',
        ["[rankers.trending_24h]", "key 'half_life_hours'", "'soon'"],
    ),
    (
        "unknown_config_section",
        '[rankers.top_n]\ntype = "top_n"\n[extras]\nx = 1\n',
        ["unknown section(s) extras", "allowed: rankers, assembly, layouts, page"],
    ),
    (
        "unknown_page_key",
        '[rankers.top_n]\ntype = "top_n"\n[page]\nwindowz = 3\n',
        ["[page] unknown key 'windowz'"],
    ),
    (
        "page_key_wrong_type",
        '[rankers.top_n]\ntype = "top_n"\n[page]\nwindows = "three"\n',
        ["[page] key 'windows'", "integer"],
    ),
    ("unknown_ranker_type", '[rankers.x]\ntype = "nope"\n', ["unknown ranker type 'nope'"]),
    ("not_toml", "[rankers.top_n\n", ["is not valid TOML"]),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_train_bad_config(
    text: str,
    words: list[str],
    tiny_world: Any,
    old_model: Path,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(text)
    before = snapshot(old_model.parent)
    code, out, err = run_cli("train", str(tiny_world.path), str(old_model), "--config", str(config))
    assert code == EXIT_USAGE and out == ""
    assert_error(err, words)
    assert snapshot(old_model.parent) == before


@pytest.mark.parametrize(
    ("until", "words"),
    [
        ("last week", ["malformed time 'last week'", "ISO 8601"]),
        (OVERFLOW_TIMES[0], [OVERFLOW_TIMES[0], "out of range"]),
        ("2999-01-01T00:00:00", ["--until 2999-01-01", "after the dataset's clock"]),
    ],
    ids=["malformed_time", "out_of_range_time", "after_the_clock"],
)
def test_train_bad_until(
    until: str,
    words: list[str],
    tiny_world: Any,
    old_model: Path,
    run_cli: RunCli,
) -> None:
    before = snapshot(old_model.parent)
    code, _, err = run_cli("train", str(tiny_world.path), str(old_model), "--until", until)
    assert code == EXIT_USAGE
    assert_error(err, words)
    assert snapshot(old_model.parent) == before


def test_train_into_a_file_is_refused_before_fitting(
    tiny_world: Any, tmp_path: Path, run_cli: RunCli
) -> None:
    target = tmp_path / "model.txt"
    target.write_text("not a model directory")
    before = snapshot(tmp_path)
    code, _, err = run_cli("train", str(tiny_world.path), str(target))
    assert code == EXIT_USAGE
    assert_error(err, [str(target), "not a directory"])
    assert snapshot(tmp_path) == before


# ----- page ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def member(tiny_model: Path) -> str:
    return str(engine.load(tiny_model).history.user_ids[0])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--device", "toaster"], ["unknown device 'toaster'", "tv, mobile, tablet, web"]),
        (["--at", "yesterday"], ["malformed time 'yesterday'", "ISO 8601"]),
        (["--at", "2026-13-45T00:00"], ["malformed time '2026-13-45T00:00'"]),
        (["--at", OVERFLOW_TIMES[0]], [OVERFLOW_TIMES[0], "out of range"]),
        (["--at", OVERFLOW_TIMES[1]], [OVERFLOW_TIMES[1], "out of range"]),
        (["--country", "usa"], ["country 'usa'", "two-letter upper-case"]),
    ],
    ids=[
        "unknown_device",
        "malformed_time",
        "invalid_date",
        "out_of_range_time",
        "out_of_range_time_west",
        "bad_country",
    ],
)
def test_page_bad_request(
    args: list[str],
    words: list[str],
    tiny_model: Path,
    member: str,
    run_cli: RunCli,
) -> None:
    before = snapshot(tiny_model)
    code, out, err = run_cli("page", str(tiny_model), "--user", member, *args)
    assert code == EXIT_USAGE and out == ""
    assert_error(err, words)
    assert snapshot(tiny_model) == before


def test_page_unknown_user_is_a_cold_start_page(
    tiny_model: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    """Not an error: a page, with the request's country or the config's default_country.
    Without either, only titles licensed everywhere could be shown, and every simulated title
    has a country list: that empty page would look like an answer, so it is exit 2 instead."""
    argv = ["page", str(tiny_model), "--user", "nobody-knows-me", "--at", AT]
    code, out, err = run_cli(*argv, "--country", "US")
    assert code == EXIT_OK and err.startswith("warning: ")  # AT is years past the data
    page = orjson.loads(out)
    assert page["user_id"] == "nobody-knows-me" and page["rows"]
    before = snapshot(tiny_model)
    code, out, err = run_cli(*argv)
    assert code == EXIT_USAGE and out == ""
    assert_error(err, ["a country is needed", "'nobody-knows-me'", "--country", "default_country"])
    assert len(err.strip().splitlines()) == 1
    assert snapshot(tiny_model) == before
    model = copy_model(tiny_model, tmp_path / "model")
    edit_config(model, lambda doc: doc.setdefault("serving", {}).update(default_country="US"))
    code, out, _ = run_cli("page", str(model), "--user", "nobody-knows-me", "--at", AT)
    assert code == EXIT_OK
    defaulted = orjson.loads(out)
    assert defaulted["context"]["country"] == "US"
    assert defaulted["rows"] == page["rows"]


def _ranker_npz(model: Path) -> None:
    truncate(model, f"rankers/{first_ranker(model, 'top_picks')}/state.npz", fix_checksum=True)


# (cell, damage to a copy of tiny_model, words of the message)
MODEL_CELLS: list[tuple[str, Callable[[Path], object], list[str]]] = [
    (
        "other_version",
        lambda m: set_version(m, "0.0.1"),
        ["written by rowrank 0.0.1", f"this is rowrank {engine.__version__}", "retrain"],
    ),
    (
        "truncated_model_file",
        lambda m: truncate(m, "title_model.txt"),
        ["title_model.txt does not match its sha256 in manifest.json"],
    ),
    (
        "unknown_config_key",
        lambda m: edit_config(m, lambda c: c["rankers"]["top_picks"].update(colour="red")),
        ["config.json", "unknown key 'colour'"],
    ),
    (
        "config_wrong_type",
        lambda m: edit_config(
            m, lambda c: c["rankers"][first_ranker(m, "trending")].update(half_life_hours="soon")
        ),
        ["config.json", "key 'half_life_hours'", "'soon'"],
    ),
    (
        "corrupt_history_npz",
        lambda m: truncate(m, "history/history.npz", fix_checksum=True),
        ["cannot read the history in", "history"],
    ),
    (
        "corrupt_features_npz",
        lambda m: truncate(m, "features/features.npz", fix_checksum=True),
        ["cannot read the feature store in"],
    ),
    (
        "truncated_model_text_matching_checksum",
        lambda m: truncate(m, "title_model.txt", fix_checksum=True),
        ["cannot read", "title_model.txt", "the file is cut"],
    ),
    (
        "missing_manifest",
        lambda m: (m / "manifest.json").unlink(),
        ["not a rowrank model directory (no manifest.json)"],
    ),
    (
        "garbage_manifest",
        lambda m: (m / "manifest.json").write_bytes(b"\x00garbage"),
        ["cannot read", "manifest.json"],
    ),
    (
        "corrupt_ranker_npz",
        _ranker_npz,
        ["cannot read", "state.npz"],
    ),
]


def _damaged(tiny_model: Path, tmp_path: Path, damage: Callable[[Path], object]) -> Path:
    model = copy_model(tiny_model, tmp_path / "models" / "m")
    damage(model)
    return model


@pytest.mark.parametrize(
    ("damage", "words"), [c[1:] for c in MODEL_CELLS], ids=[c[0] for c in MODEL_CELLS]
)
def test_page_bad_model(
    damage: Callable[[Path], object],
    words: list[str],
    tiny_model: Path,
    member: str,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    model = _damaged(tiny_model, tmp_path, damage)
    before = snapshot(model)
    code, out, err = run_cli("page", str(model), "--user", member, "--at", AT)
    assert code == EXIT_USAGE and out == ""
    assert_error(err, words)
    assert snapshot(model) == before


def test_page_cut_model_text_exits_2_in_a_real_process(
    tiny_model: Path, member: str, tmp_path: Path
) -> None:
    """The checksum catches a cut file (test_page_bad_model[truncated_model_file]); with the
    manifest rewritten to match, the model reader itself must refuse it, before LightGBM 4.7
    parses it: that aborts or segfaults the process (lightgbm-org/LightGBM#3733). Checked in a
    subprocess, since a regression kills the process rather than raising."""
    model = _damaged(
        tiny_model, tmp_path, lambda m: truncate(m, "row_model.txt", fix_checksum=True)
    )
    done = run_rowrank("page", model, "--user", member, "--at", AT, timeout=120)
    assert done.returncode == EXIT_USAGE, (done.returncode, done.stderr[-500:])
    assert b"row_model.txt" in done.stderr and b"Traceback" not in done.stderr


# ----- precompute ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users_file(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    users = [str(u) for u in engine.load(tiny_model).history.user_ids[:4]]
    f = tmp_path_factory.mktemp("pc_users") / "users.txt"
    f.write_text("\n".join(users) + "\n")
    return f


@pytest.fixture(scope="module")
def pages_out(tiny_model: Path, users_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished precompute: the existing output that a refused rerun must not touch (each
    test checks it is unchanged, so one is shared)."""
    out = tmp_path_factory.mktemp("pc_out") / "pages"
    result = run_precompute(
        tiny_model,
        out,
        users_file=users_file,
        devices=["tv"],
        times=[AT],
        workers=1,
        shard_size=2,
        progress=False,
    )
    assert result.exit_code == 0
    return out


PRECOMPUTE_CELLS: list[tuple[str, list[str], list[str]]] = [
    ("unknown_device", ["--device", "toaster"], ["unknown device 'toaster'"]),
    ("malformed_time", ["--at", "tonight"], ["malformed time 'tonight'"]),
    ("out_of_range_time", ["--at", OVERFLOW_TIMES[0]], ["out of range"]),
    ("bad_shard_size", ["--shard-size", "0"], ["--shard-size must be at least 1"]),
]


@pytest.mark.parametrize(
    ("args", "words"),
    [c[1:] for c in PRECOMPUTE_CELLS],
    ids=[c[0] for c in PRECOMPUTE_CELLS],
)
def test_precompute_bad_request(
    args: list[str],
    words: list[str],
    tiny_model: Path,
    users_file: Path,
    pages_out: Path,
    run_cli: RunCli,
) -> None:
    before = snapshot(pages_out)
    argv = ["precompute", str(tiny_model), str(pages_out), "--users", str(users_file)]
    code, _, err = run_cli(*argv, "--workers", "1", "--at", AT, *args)
    assert code == EXIT_USAGE
    assert_error(err, words)
    assert snapshot(pages_out) == before


# With 2 workers the parent reads only the manifest and the History; the workers' engines load
# meanwhile, and their error is raised before OUT_DIR is touched (a config that passes the
# manifest's checksums but not validation is caught only by that load).
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("damage", "words"),
    [c[1:] for c in MODEL_CELLS[:4]],
    ids=[c[0] for c in MODEL_CELLS[:4]],
)
def test_precompute_bad_model(
    workers: str,
    damage: Callable[[Path], object],
    words: list[str],
    tiny_model: Path,
    users_file: Path,
    pages_out: Path,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    model = _damaged(tiny_model, tmp_path, damage)
    before = snapshot(pages_out)
    argv = ["precompute", str(model), str(pages_out), "--users", str(users_file)]
    code, _, err = run_cli(*argv, "--workers", workers, "--device", "tv", "--at", AT)
    assert code == EXIT_USAGE
    assert_error(err, words)
    assert snapshot(pages_out) == before


def test_precompute_empty_user_list_writes_nothing(
    tiny_model: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    empty = tmp_path / "users.txt"
    empty.write_text("")
    out = tmp_path / "pages"
    code, _, err = run_cli(
        "precompute", str(tiny_model), str(out), "--users", str(empty), "--workers", "1"
    )
    assert code == EXIT_FAILED
    assert "error: no users to precompute" in err
    assert not out.exists()


def test_precompute_unknown_user_without_a_country_fails_saying_so(
    tiny_model: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    """An unknown member needs a country (precompute takes none): the job fails naming it,
    rather than writing an empty page; with [serving] default_country it is a page."""
    users = tmp_path / "users.txt"
    users.write_text("nobody-knows-me\n")
    out = tmp_path / "pages"
    argv = ["precompute", str(tiny_model), str(out), "--users", str(users), "--workers", "1"]
    code, _, err = run_cli(*argv, "--device", "tv", "--at", AT)
    assert code == EXIT_FAILED
    assert "a country is needed" in err and "default_country" in err
    model = copy_model(tiny_model, tmp_path / "model")
    edit_config(model, lambda doc: doc.setdefault("serving", {}).update(default_country="US"))
    argv = ["precompute", str(model), str(out), "--users", str(users), "--workers", "1"]
    code, _, err = run_cli(*argv, "--device", "tv", "--at", AT)
    assert code == EXIT_OK, err
    assert "1 listed user(s) unknown to the model" in err
    (line,) = (out / "shard-00000.jsonl").read_bytes().splitlines()
    page = orjson.loads(line)
    assert page["user_id"] == "nobody-knows-me" and page["rows"]
    assert page["context"]["country"] == "US"
