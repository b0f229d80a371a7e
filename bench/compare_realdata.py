"""Two runs of the real-data protocol on the same split, paired by member: the page's N2DCG of
B over A with a bootstrap interval over members (the spread between two variants is far
smaller than either's interval against a baseline, since both see the same members).

    .venv/bin/python bench/compare_realdata.py A.json B.json

A and B are the JSON reports `bench/bench_realdata.py` writes under --work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

from engine.evaluation.metrics import bootstrap_ratio_ci


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    runs = [orjson.loads(p.read_bytes()) for p in (args.a, args.b)]
    for p, r in zip((args.a, args.b), runs, strict=True):
        if "page_by_member" not in r:
            sys.exit(f"{p}: no per-member page scores (written since bench_realdata gained them)")
    a, b = (r["page_by_member"] for r in runs)
    if a["users"] != b["users"] or runs[0]["split"] != runs[1]["split"]:
        sys.exit("the two runs scored different splits or members: nothing to pair")
    na, nb = np.array(a["n2dcg"]), np.array(b["n2dcg"])
    ci = bootstrap_ratio_ci(nb, na, np.random.default_rng(0))
    print(f"split {runs[0]['split']}, {len(na)} members")
    print(f"A {args.a}: page N2DCG {na.mean():.4f}")
    print(f"B {args.b}: page N2DCG {nb.mean():.4f}")
    print(f"B / A: {ci.value:.3f} [{ci.lo:.3f}, {ci.hi:.3f}] (95%, paired over members)")
    higher, lower = int((nb > na).sum()), int((nb < na).sum())
    print(f"members B higher / lower / equal: {higher} / {lower} / {len(na) - higher - lower}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
