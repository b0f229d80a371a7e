"""`rowrank demo`, first version: import the bundled MovieLens-format fixture, validate it and
print its summary. Needs no network and no downloaded data."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from engine.movielens import import_movielens
from engine.validate import summarize, validate_directory

# engine/ sits beside fixtures/ in the repository (the package is installed editable).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEMO_SOURCE = FIXTURES / "movielens" / "ml-latest"


def run_demo(out: Path | None = None) -> int:
    """Import the fixture into `out` (or a temporary directory), validate, print a summary.

    Returns the process exit code: 0 when the imported dataset is clean.
    """
    if not DEMO_SOURCE.is_dir():
        print(
            f"error: the demo data {DEMO_SOURCE} is missing; run from a rowrank checkout",
            file=sys.stderr,
        )
        return 1
    if out is not None:
        return _run(DEMO_SOURCE, Path(out))
    with tempfile.TemporaryDirectory(prefix="rowrank-demo-") as tmp:
        return _run(DEMO_SOURCE, Path(tmp) / "dataset")


def _run(src: Path, out: Path) -> int:
    ds = import_movielens(src, out)
    print(
        f"imported {ds.source}: {ds.plays.height:,} plays, {ds.users.height:,} users, "
        f"{ds.titles.height:,} titles -> {out}"
    )
    checked, problems = validate_directory(out)
    if problems or checked is None:
        for p in problems:
            print(f"- {p}", file=sys.stderr)
        return 1
    print(summarize(checked))
    return 0
