"""The `rowrank` command. Each subcommand is a thin shell over a module function; imports are
lazy so `rowrank --help` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

from engine.errors import BadRequestError, DataError, RowrankError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# `rowrank train`'s default tuning budget: on the default world the whole training stays
# within 3 minutes on 2 cores (docs/rankers.md, "Keys chosen on your data").
TUNE_BUDGET_S = 60.0
DEMO_DIR = "rowrank-demo"  # `rowrank demo` keeps its world and model here
# The paths the README's quickstart creates, so every --help example can be run as it reads.
EXAMPLE_DATA, EXAMPLE_MODEL = "data/sim", "models/sim"


def _cmd_import(args: argparse.Namespace) -> int:
    if args.format == "table":
        from engine.data.table import import_table

        users = Path(args.users) if args.users else None
        ds = import_table(Path(args.plays), Path(args.titles), Path(args.out), users)
    else:
        from engine.data.movielens import import_movielens

        ds = import_movielens(Path(args.src), Path(args.out))
    print(
        f"imported {ds.source}: {ds.plays.height:,} plays, {ds.users.height:,} users, "
        f"{ds.titles.height:,} titles -> {args.out}"
    )
    from engine.data.validate import country_note

    note = country_note(ds)
    if note:
        print(note, file=sys.stderr)
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from engine.data.validate import summarize, validate_directory

    ds, problems = validate_directory(Path(args.data_dir))
    if problems:
        print(f"{len(problems)} problem(s) in {args.data_dir}:", file=sys.stderr)
        for p in problems:
            print(f"- {p}", file=sys.stderr)
        return EXIT_FAILED
    assert ds is not None
    print(summarize(ds))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.cli.demo import run_demo

    return run_demo(out=Path(args.out), quick=args.quick)


def _cmd_config(args: argparse.Namespace) -> int:
    from engine.config import DEFAULT_CONFIG, load_config

    layers = f"built-in {DEFAULT_CONFIG}" + (f" + {args.config}" if args.config else "")
    print(f"# the effective engine config: {layers}")
    sys.stdout.write(load_config(args.config).to_toml())
    return EXIT_OK


def _cmd_users(args: argparse.Namespace) -> int:
    from engine.data.history import History
    from engine.training.model_dir import HISTORY_DIR, read_manifest

    model_dir = Path(args.model_dir)
    read_manifest(model_dir)  # a missing or damaged model directory, said as such
    ids = History.load(model_dir / HISTORY_DIR).user_ids
    shown = ids if args.limit is None else ids[: args.limit]
    sys.stdout.write("".join(f"{u}\n" for u in shown.tolist()))
    return EXIT_OK


Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]


def _import_args(p: argparse.ArgumentParser) -> None:
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    ml = formats.add_parser(
        "movielens",
        help="the public MovieLens files (ml-100k, ml-1m/10m, ml-latest*, ml-20m/25m/32m)",
        epilog="Example: rowrank import movielens ~/ml-latest-small data/ml",
    )
    ml.add_argument("src", help="directory with the MovieLens files")
    ml.add_argument("out", help="dataset directory to write (Parquet + dataset.json)")
    table = formats.add_parser(
        "table",
        help="your own plays and titles, CSV or Parquet (columns: engine/data/table.py)",
        description="Plays need user_id, title_id, ts (ISO 8601 or Unix seconds); titles need "
        "title_id, name; every other column is optional (docs/data.md).",
        epilog="Example: rowrank import table plays.csv titles.csv data/mine",
    )
    table.add_argument("plays", help="plays file: user_id, title_id, ts [, device, progress, ...]")
    table.add_argument("titles", help="titles file: title_id, name [, genres, countries, ...]")
    table.add_argument("out", help="dataset directory to write (Parquet + dataset.json)")
    table.add_argument("--users", help="users file: user_id [, country, maturity_max, created_at]")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="dataset directory")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default=DEMO_DIR,
        help=f"where the demo keeps its world and model (default ./{DEMO_DIR}; a second run "
        "reuses them)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny world and small models (seconds)")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print the effective config as TOML")
    p.add_argument("--config", help="engine config TOML layered over the built-in one")


def _users_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model directory written by `rowrank train`")
    p.add_argument("--limit", type=_count, help="print at most N ids")


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return n


def _serve_args(p: argparse.ArgumentParser) -> None:
    # Defined here, not in engine.serving.http, so `rowrank --help` does not import starlette.
    p.add_argument("model_dir", help="model directory written by `rowrank train`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--log-impressions", metavar="DIR", help="log served pages as impressions")
    p.add_argument(
        "--log-scope",
        choices=["visible", "page"],
        default="visible",
        help="impressions: what the device shows (default) or the whole page",
    )
    p.add_argument(
        "--models-root",
        help="reloads may load only below this directory (default: the parent of MODEL_DIR)",
    )
    p.add_argument(
        "--state",
        metavar="DIR|URL",
        help="the play-event log POST /v1/events writes and pages read: a directory, or "
        "redis://HOST:PORT/DB shared by several servers (default MODEL_DIR/events)",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="dataset directory (rowrank simulate / import)")
    p.add_argument("model_dir", help="model directory to write (replaced if it is one)")
    p.add_argument("--config", help="engine config TOML layered over the built-in one")
    p.add_argument("--until", help="cut-off, ISO 8601 (default: the dataset's clock)")
    p.add_argument(
        "--tune-budget",
        type=float,
        default=TUNE_BUDGET_S,
        metavar="SECONDS",
        help="time to choose ranker keys on validation data cut from the training data "
        f"(default {TUNE_BUDGET_S:.0f}; 0 keeps the config's ranker keys; the page keys, "
        "like the guards, are chosen on the held-out window either way)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation members (default 0)")
    p.add_argument(
        "--events",
        metavar="DIR|URL",
        help="a play-event log (rowrank serve --state): its plays after the dataset's clock "
        "are trained on too, and the model's cut-off moves past the newest",
    )
    p.add_argument(
        "--impressions",
        metavar="DIR",
        help="a rowrank serve --log-impressions directory: the pages served after the "
        "dataset's clock, labelled by the plays of --events that followed them",
    )
    p.add_argument(
        "--engine",
        choices=("local", "dask"),
        default="local",
        help="dask: build the training windows as Dask tasks (default local)",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="--engine dask: local cluster workers (default 2)"
    )
    p.add_argument("--scheduler", help="--engine dask: scheduler address (default: local)")
    p.add_argument(
        "--lightgbm",
        choices=("local", "dask"),
        default="local",
        help="dask (with --engine dask): fit the two page models with LightGBM's distributed "
        "training on the cluster's workers; local fits them in this process (default)",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from engine.training.train import main_train

    if Path(args.model_dir).exists() and not Path(args.model_dir).is_dir():
        # Checked before minutes of fitting (engine.training.train would fail only when writing).
        raise BadRequestError(f"{args.model_dir} exists and is not a directory: choose a model dir")
    if args.tune_budget < 0:
        raise BadRequestError(f"--tune-budget {args.tune_budget:g}: seconds, 0 or more")
    if args.workers < 1:
        raise BadRequestError(f"--workers must be at least 1, got {args.workers}")
    return main_train(
        args.data_dir,
        args.model_dir,
        args.config,
        args.until,
        args.tune_budget,
        args.seed,
        args.events,
        args.impressions,
        engine=args.engine,
        workers=args.workers,
        scheduler=args.scheduler,
        lightgbm=args.lightgbm,
    )


def _page_args(p: argparse.ArgumentParser) -> None:
    # No argparse `choices` for the device: a bad value is a one-line error with exit 2.
    p.add_argument("model_dir", help="model directory written by `rowrank train`")
    p.add_argument("--user", required=True, help="user id (unknown ids get a cold-start page)")
    p.add_argument("--device", default="tv", help="tv, mobile, tablet or web (default tv)")
    p.add_argument("--at", help="request time, ISO 8601 (default: now)")
    p.add_argument(
        "--country",
        help="country code (default: the member's, else the config's [serving] default_country)",
    )
    p.add_argument(
        "--format",
        choices=["json", "pretty", "table"],
        default="json",
        help="json: the page's bytes (default); pretty: indented JSON; table: a row a line",
    )
    p.add_argument(
        "--state",
        metavar="DIR|URL",
        help="the play-event log to read the member's live plays from, as `rowrank serve "
        "--state` (default: MODEL_DIR/events when `rowrank events ingest` or a server wrote one)",
    )


def _event_log_of(model_dir: Path) -> str | None:
    """The model's default event log (MODEL_DIR/events) when there is one; None otherwise, so
    that asking for a page never creates a log."""
    from engine.events.ingest import events_dir_of
    from engine.events.log import LOG_FILE

    state = events_dir_of(model_dir, None)
    return state if (Path(state) / LOG_FILE).is_file() else None


def _cmd_page(args: argparse.Namespace) -> int:
    import orjson

    import engine
    from engine.request.context import parse_country, parse_device, parse_time

    device = parse_device(args.device)  # validate the request before loading anything
    at = parse_time(args.at) if args.at is not None else None
    if args.country is not None:
        parse_country(args.country)
    eng = engine.load(Path(args.model_dir))
    state = args.state or _event_log_of(Path(args.model_dir))
    if state is not None:
        # The same page a server of this model gives: the member's snapshot plus live plays.
        from engine.events.state import LiveState

        eng.live = LiveState(state)
    page = eng.page(args.user, device, at, args.country)
    if args.format == "table":
        from engine.cli.show import page_table

        sys.stdout.write(page_table(page))
    elif args.format == "pretty":
        sys.stdout.buffer.write(orjson.dumps(page.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.buffer.write(page.to_json() + b"\n")
    for warning in page.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


# (name, one-line help, example, add arguments, run)
COMMANDS: list[Command] = [
    (
        "import",
        "Convert MovieLens files, or your own plays and titles (CSV/Parquet), into a dataset.",
        "rowrank import movielens ~/ml-latest-small data/ml",
        _import_args,
        _cmd_import,
    ),
    (
        "validate",
        "Check a dataset against the schema; print every problem, or a summary.",
        f"rowrank validate {EXAMPLE_DATA}",
        _validate_args,
        _cmd_validate,
    ),
    (
        "demo",
        "Simulate a world, train the engine, print one member's pages in four contexts.",
        f"rowrank demo   (keeps ./{DEMO_DIR}/world and ./{DEMO_DIR}/model)",
        _demo_args,
        _cmd_demo,
    ),
    (
        "simulate",
        "Generate a simulated streaming world: a dataset plus its ground truth.",
        f"rowrank simulate {EXAMPLE_DATA} --users 300 --titles 200 --days 20",
        lambda p: import_module("engine.sim.simulate").add_arguments(p),
        lambda args: import_module("engine.sim.simulate").cli(args),
    ),
    (
        "train",
        "Fit the rankers and the page model on a dataset; write a model directory.",
        f"rowrank train {EXAMPLE_DATA} {EXAMPLE_MODEL}",
        _train_args,
        _cmd_train,
    ),
    (
        "page",
        "Print one member's homepage as JSON (the bytes engine.load(d).page(...) gives).",
        f"rowrank page {EXAMPLE_MODEL} --user u000042 --device mobile --at 2025-01-26T21:00:00",
        _page_args,
        _cmd_page,
    ),
    (
        "precompute",
        "Precompute every user's pages into sharded files (local cores or Dask); resumable.",
        f"rowrank precompute {EXAMPLE_MODEL} out/pages --device tv --device mobile --workers 2",
        lambda p: import_module("engine.serving.precompute").add_arguments(p),
        lambda args: import_module("engine.serving.precompute").cli(args),
    ),
    (
        "bench",
        "Train and compare engine variants offline and in a simulated A/B test; write reports.",
        "rowrank bench bench/variants/simulated.toml",
        lambda p: import_module("engine.evaluation.benchmark").add_arguments(p),
        lambda args: import_module("engine.evaluation.benchmark").cli(args),
    ),
    (
        "serve",
        "Serve pages over HTTP: JSON API, HTML preview, /metrics, model hot swap.",
        f"rowrank serve {EXAMPLE_MODEL} --port 8000 --workers 2",
        _serve_args,
        lambda args: import_module("engine.serving.runner").run_cli(args),
    ),
    (
        "events",
        "Play events after the model's cut-off: `events ingest` appends a file to the log.",
        f"rowrank events ingest {EXAMPLE_MODEL} plays.jsonl",
        lambda p: import_module("engine.events.ingest").add_arguments(p),
        lambda args: import_module("engine.events.ingest").cli(args),
    ),
    (
        "users",
        "List the member ids a model knows, one a line.",
        f"rowrank users {EXAMPLE_MODEL} --limit 5",
        _users_args,
        _cmd_users,
    ),
    (
        "config",
        "Print the effective engine config (the built-in one, with --config FILE over it).",
        "rowrank config show --config engine.toml",
        _config_args,
        _cmd_config,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rowrank",
        description="Homepage row ranking: rankers propose rows, a page model orders them.",
        epilog="Example: rowrank demo",
    )
    parser.add_argument("--version", action="version", version=f"rowrank {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line, example, add_args, run in COMMANDS:
        p = sub.add_parser(
            name, help=help_line, description=help_line, epilog=f"Example: {example}"
        )
        add_args(p)
        p.set_defaults(run=run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rowrank")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RowrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
