"""rowrank against library baselines on real data (docs/realdata.md): `rowrank bench --realdata`
with this machine's MovieLens ml-latest-small as the default --data.

    .venv/bin/python bench/bench_realdata.py [--split member|global|both] [--validation]
        [--tune-budget SECONDS] [--overlay FILE] [--members N] [--seed N] [--retrain]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.evaluation.realdata_run import main as run_protocol

ML_LATEST_SMALL = "/work/shared/data/ml-latest-small"


def main(argv: list[str] | None = None) -> int:
    return run_protocol(argv, data=ML_LATEST_SMALL)


if __name__ == "__main__":
    sys.exit(main())
