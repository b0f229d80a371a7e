"""The `rowrank` command. Each subcommand is a thin shell over a module function; imports are
lazy so `rowrank --help` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import DataError, RowrankError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cmd_import(args: argparse.Namespace) -> int:
    from engine.movielens import import_movielens

    ds = import_movielens(Path(args.src), Path(args.out))
    print(
        f"imported {ds.source}: {ds.plays.height:,} plays, {ds.users.height:,} users, "
        f"{ds.titles.height:,} titles -> {args.out}"
    )
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from engine.validate import summarize, validate_directory

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
    from engine.demo import run_demo

    return run_demo(out=Path(args.out) if args.out else None)


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
        "Run the main job end to end on the built-in default data.",
        "rowrank demo",
        _demo_args,
        _cmd_demo,
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


if __name__ == "__main__":
    sys.exit(main())
