"""The `rowrank` command. Each subcommand is a thin shell over a module function; imports are
lazy so `rowrank --help` stays fast."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

from engine.errors import BadRequestError, DataError, RowrankError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cmd_import(args: argparse.Namespace) -> int:
    from engine.data.movielens import import_movielens

    ds = import_movielens(Path(args.src), Path(args.out))
    print(
        f"imported {ds.source}: {ds.plays.height:,} plays, {ds.users.height:,} users, "
        f"{ds.titles.height:,} titles -> {args.out}"
    )
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

    return run_demo(out=Path(args.out) if args.out else None, quick=args.quick)


Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["movielens"], help="source format")
    p.add_argument(
        "src", help="directory with the MovieLens files (ml-100k, ml-1m/10m, ml-latest*)"
    )
    p.add_argument("out", help="dataset directory to write (Parquet + dataset.json)")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="dataset directory")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="keep the demo's files here instead of a temporary directory")
    p.add_argument("--quick", action="store_true", help="a tiny world and small models (seconds)")


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


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="dataset directory (rowrank simulate / import)")
    p.add_argument("model_dir", help="model directory to write (replaced if it is one)")
    p.add_argument("--config", help="engine config TOML (default: the built-in one)")
    p.add_argument("--until", help="cut-off, ISO 8601 (default: the dataset's clock)")


def _cmd_train(args: argparse.Namespace) -> int:
    from engine.training.train import main_train

    if Path(args.model_dir).exists() and not Path(args.model_dir).is_dir():
        # Checked before minutes of fitting (engine.training.train would fail only when writing).
        raise BadRequestError(f"{args.model_dir} exists and is not a directory: choose a model dir")
    return main_train(args.data_dir, args.model_dir, args.config, args.until)


def _page_args(p: argparse.ArgumentParser) -> None:
    # No argparse `choices` for the device: a bad value is a one-line error with exit 2.
    p.add_argument("model_dir", help="model directory written by `rowrank train`")
    p.add_argument("--user", required=True, help="user id (unknown ids get a cold-start page)")
    p.add_argument("--device", default="tv", help="tv, mobile, tablet or web (default tv)")
    p.add_argument("--at", help="request time, ISO 8601 (default: now)")
    p.add_argument("--country", help="country code (default: the member's)")


def _cmd_page(args: argparse.Namespace) -> int:
    import engine
    from engine.request.context import parse_device, parse_time

    device = parse_device(args.device)  # validate the request before loading anything
    at = parse_time(args.at) if args.at is not None else None
    if args.country is not None and not re.fullmatch(r"[A-Z]{2}", args.country):
        # The same rule and words as the HTTP API (engine.serving.params.COUNTRY_RE).
        raise BadRequestError(
            f"country {args.country!r} is not a two-letter upper-case ISO 3166 code (e.g. US, DE)"
        )
    page = engine.load(Path(args.model_dir)).page(args.user, device, at, args.country)
    sys.stdout.buffer.write(page.to_json() + b"\n")
    if not page.rows and page.context.country is None and page.trace.get("cold_start"):
        # A valid answer, but an empty one for a reason the JSON cannot say.
        print(
            f"note: {args.user!r} is not in the model and no --country was given, so only titles "
            "licensed in every country may be shown and none is; pass --country",
            file=sys.stderr,
        )
    return EXIT_OK


# (name, one-line help, example, add arguments, run)
COMMANDS: list[Command] = [
    (
        "import",
        "Convert public data (MovieLens 100k/1m/10m/latest) into a rowrank dataset.",
        "rowrank import movielens ~/ml-latest-small data/ml",
        _import_args,
        _cmd_import,
    ),
    (
        "validate",
        "Check a dataset against the schema; print every problem, or a summary.",
        "rowrank validate data/ml",
        _validate_args,
        _cmd_validate,
    ),
    (
        "demo",
        "Simulate a world, train the engine, print one member's pages in four contexts.",
        "rowrank demo",
        _demo_args,
        _cmd_demo,
    ),
    (
        "simulate",
        "Generate a simulated streaming world: a dataset plus its ground truth.",
        "rowrank simulate data/sim --users 5000 --titles 2000 --days 60 --seed 0",
        lambda p: import_module("engine.sim.simulate").add_arguments(p),
        lambda args: import_module("engine.sim.simulate").cli(args),
    ),
    (
        "train",
        "Fit the rankers and the page model on a dataset; write a model directory.",
        "rowrank train data/sim models/demo",
        _train_args,
        _cmd_train,
    ),
    (
        "page",
        "Print one member's homepage as JSON (the bytes engine.load(d).page(...) gives).",
        "rowrank page models/demo --user u000042 --device mobile --at 2025-03-06T22:00:00",
        _page_args,
        _cmd_page,
    ),
    (
        "precompute",
        "Precompute every user's pages into sharded files (local cores or Dask); resumable.",
        "rowrank precompute models/demo out/pages --device tv --device mobile --workers 2",
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
        "rowrank serve models/demo --port 8000 --workers 2",
        _serve_args,
        lambda args: import_module("engine.serving.runner").run_cli(args),
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rowrank",
        description="Homepage row ranking: rankers propose rows, a page model orders them.",
        epilog="Example: rowrank demo",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line, example, add_args, run in COMMANDS:
        p = sub.add_parser(
            name, help=help_line, description=help_line, epilog=f"Example: {example}"
        )
        add_args(p)
        p.set_defaults(run=run)
    return parser


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
