"""Timings of the data layer: MovieLens import, `rowrank validate`, and validation at scale.

    .venv/bin/python bench/bench_data.py [--repeats 5] [--plays 1000000]
    .venv/bin/python bench/bench_data.py --dataset DIR

Prints medians (the machine is shared and noisy). With --dataset, only that dataset directory
(e.g. a `rowrank simulate` world) is read and validated once, with each step's time and the
process's peak memory after it (Linux: resident set high-water mark). The MovieLens part runs
when ml-latest-small is found ($ROWRANK_MOVIELENS_DIR or ../shared/data/ml-latest-small beside
the checkout).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from engine.data.columns import Col
from engine.data.movielens import import_movielens
from engine.data.validate import read_tables, validate_dataset, validate_directory

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def validate_at_scale(directory: Path) -> None:
    t0 = time.perf_counter()
    ds, problems = read_tables(directory)
    t1 = time.perf_counter()
    read_peak = peak_gb()
    problems += validate_dataset(ds)
    t2 = time.perf_counter()
    n_imp = 0 if ds.impressions is None else ds.impressions.select(pl.len()).collect().item()
    print(
        f"{directory}: {ds.plays.height:,} plays, {n_imp:,} impressions; "
        f"read {t1 - t0:.1f} s (peak {read_peak:.2f} GB), "
        f"validate {t2 - t1:.1f} s (peak {peak_gb():.2f} GB); {len(problems)} problem(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plays", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, help="only read and validate this directory")
    args = parser.parse_args()
    if args.dataset is not None:
        validate_at_scale(args.dataset)
        return

    src = Path(os.environ.get("ROWRANK_MOVIELENS_DIR", ROOT.parent / "shared/data/ml-latest-small"))
    if (src / "ratings.csv").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ml"
            t_import = median_seconds(lambda: import_movielens(src, out), args.repeats)
            t_validate = median_seconds(lambda: validate_directory(out), args.repeats)
            ds, problems = validate_directory(out)
            assert ds is not None and problems == [], problems
            print(
                f"ml-latest-small ({ds.plays.height:,} plays): import {t_import:.3f} s, "
                f"read + validate {t_validate:.3f} s (medians of {args.repeats})"
            )
    else:
        print(f"ml-latest-small not found at {src}: MovieLens timings skipped")

    # Validation at scale: the tiny dataset's plays resampled to --plays rows (seeded).
    spec = importlib.util.spec_from_file_location(
        "make_tiny", ROOT / "fixtures/datasets/make_tiny.py"
    )
    assert spec is not None and spec.loader is not None
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    tiny = make_tiny.build_tiny()
    rng = np.random.default_rng(args.seed)
    rows = rng.integers(0, tiny.plays.height, size=args.plays)
    big = replace(tiny, plays=tiny.plays[rows].rechunk())
    t_big = median_seconds(lambda: validate_dataset(big), args.repeats)
    assert validate_dataset(big) == []
    bad = replace(
        big,
        plays=big.plays.with_columns(
            pl.when(pl.int_range(pl.len()) % 1000 == 0)
            .then(pl.lit(2.0, pl.Float32))
            .otherwise(pl.col(Col.PROGRESS))
            .alias(Col.PROGRESS)
        ),
    )
    t_bad = median_seconds(lambda: validate_dataset(bad), args.repeats)
    print(
        f"validate_dataset on {args.plays:,} plays: clean {t_big:.3f} s, "
        f"with {len(validate_dataset(bad))} problem(s) on 0.1% of rows {t_bad:.3f} s "
        f"(medians of {args.repeats})"
    )


if __name__ == "__main__":
    main()
