"""What a loaded model holds in memory, by part: prints it for each model directory given.

    .venv/bin/python bench/bench_model_memory.py MODEL_DIR [MODEL_DIR ...] [--top 8]

Each model is loaded by `engine.load` in a fresh interpreter (as a precompute or serve worker
loads it), which then reports its resident set after the load and the numpy arrays reachable
from the Engine, grouped by owner: the History (titles; members and their plays), the feature
store, each ranker. Python dicts with more than 10,000 entries (the History's id -> index maps)
are counted at an estimated 150 bytes an entry. Comparing models of 100,000 and 1,000,000
members shows which parts grow with the members: what a worker would stop holding if it
loaded only its shard's members (issue 24).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DICT_ENTRY_BYTES = 150  # a str key, an int value and the table slot, roughly


def _arrays(obj: Any, name: str, seen: set[int], out: list[tuple[str, int]], depth: int) -> None:
    """Every numpy array (and large dict) reachable from `obj`, with its dotted path."""
    import numpy as np

    if id(obj) in seen or depth > 5:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        out.append((name, int(obj.nbytes)))
        return
    if isinstance(obj, dict):
        if len(obj) > 10_000:
            out.append((name, len(obj) * DICT_ENTRY_BYTES))
            return
        items: Any = obj.items()
    elif isinstance(obj, list | tuple) and len(obj) < 100:
        items = enumerate(obj)
    elif hasattr(obj, "__dict__"):
        items = vars(obj).items()
    elif hasattr(obj, "__dataclass_fields__"):
        items = ((k, getattr(obj, k)) for k in obj.__dataclass_fields__)
    else:
        return
    for k, v in items:
        _arrays(v, f"{name}.{k}", seen, out, depth + 1)


def _group(path: str) -> str:
    """The part of the model an array belongs to."""
    parts = path.split(".")
    if parts[1] == "history":
        field = parts[2]
        return (
            "history: titles"
            if not field.startswith(("user", "play", "_user"))
            else ("history: members and plays")
        )
    if parts[1] == "store":
        return "feature store: " + (
            "members" if parts[2].startswith(("user", "shown", "ut_")) else "titles"
        )
    if parts[1] == "rankers" and len(parts) > 2:
        return f"ranker {parts[2]}"
    return parts[1]


def measure(model_dir: str, top: int) -> dict[str, Any]:
    """In this interpreter: load the model and report (run by main in a fresh process)."""
    import psutil

    import engine

    before = psutil.Process().memory_info().rss
    eng = engine.load(Path(model_dir))
    rss = psutil.Process().memory_info().rss
    found: list[tuple[str, int]] = []
    _arrays(eng, "eng", set(), found, 0)
    groups: dict[str, int] = defaultdict(int)
    for path, nbytes in found:
        groups[_group(path)] += nbytes
    return {
        "members": eng.history.n_users,
        "plays": len(eng.history.play_user),
        "titles": eng.history.n_titles,
        "rss_mb": rss / 2**20,
        "load_mb": (rss - before) / 2**20,
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "largest": sorted(found, key=lambda kv: -kv[1])[:top],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--top", type=int, default=8, help="largest arrays listed per model")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child's side
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.top)))
        return
    for model in args.models:
        cmd = [sys.executable, __file__, "--one", model, "--top", str(args.top), model]
        got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"{model}: {got['members']:,} members, {got['plays']:,} plays, {got['titles']:,} "
            f"titles; resident after engine.load {got['rss_mb']:,.0f} MB "
            f"({got['load_mb']:,.0f} MB more than before it, the imports it does included)"
        )
        for group, nbytes in got["groups"].items():
            print(f"  {group:<32} {nbytes / 2**20:9,.1f} MB")
        print("  largest arrays:")
        for path, nbytes in got["largest"]:
            print(f"    {path:<52} {nbytes / 2**20:9,.1f} MB")


if __name__ == "__main__":
    main()
