"""How much of the page's N2DCG the row order leaves on the table, on MovieLens validation.

For each member of the per-member validation split (held-out plays inside the test split's
training data; the test split is never read), three pages of the same engine:
  page       the page as served;
  reordered  the same rows with the same titles, reordered by the hits each row holds (its
             discounted hits as if it were the first row): the best order of these rows;
  greedy     row after row, the candidate row (after the business filters, in its ranker's
             order, dedupe applied) with the most discounted hits at that row position.
Both oracles read the held-out plays, so they are ceilings, not rankers: how far a better row
model could take the page with the rows it has. Beside them, one order that reads nothing after
the request:
  top_picks  the served rows below the pinned first one, reordered by how many of the titles
             Top Picks' learned model ranks highest for the member (its first --top titles) each
             row shows: a test of that model's scores as a row signal.
Then, for each row of the served page, the kinds of row found there and the mean N2DCG share
they earned.

    PYTHONPATH=. .venv/bin/python bench/bench_row_order_ceiling.py [--overlay FILE] [--work W]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.dataset import load_dataset
from engine.evaluation.metrics import discounts_2d, n2dcg, n2dcg_by_row, page_grid
from engine.evaluation.realdata import make_realdata_split, top_picks_ranker
from engine.evaluation.realdata_run import config, imported, trained
from engine.pipeline import propose_rows
from rankers.top_picks import candidates_and_features

ML_LATEST_SMALL = "/work/shared/data/ml-latest-small"


def greedy_rows(
    pool: list[np.ndarray], truth: np.ndarray, disc: np.ndarray, width: int
) -> list[np.ndarray]:
    """Row by row, the pool row whose first `width` titles not shown above hit most."""
    left = list(pool)
    shown: set[int] = set()
    page: list[np.ndarray] = []
    for p in range(disc.shape[0]):
        best, best_gain, best_titles = -1, -1.0, np.empty(0, dtype=np.int64)
        for j, row in enumerate(left):
            titles = np.array([t for t in row.tolist() if t not in shown][:width], dtype=np.int64)
            gain = float(np.isin(titles, truth) @ disc[p, : len(titles)]) if len(titles) else -1
            if gain > best_gain:
                best, best_gain, best_titles = j, gain, titles
        if best < 0:
            break
        left.pop(best)
        shown.update(best_titles.tolist())
        page.append(best_titles)
    return page


def learned_top(eng: Any, user: int, at_us: int, k: int) -> np.ndarray:
    """The member's first `k` titles by Top Picks' learned model at `at_us` (its candidates)."""
    r: Any = eng.rankers.get(top_picks_ranker(eng) or "")
    if getattr(r, "type_name", "") != "top_picks":
        raise SystemExit("the config has no ranker of type top_picks: nothing to order rows by")
    cand, X = candidates_and_features(r.generators_, eng.history, user, at_us, r.config)
    s = r.forest_.raw(X) if r.forest_ is not None else -X[:, 1]
    return cand[np.argsort(-s, kind="stable")[:k]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=ML_LATEST_SMALL, help="a MovieLens release")
    p.add_argument("--work", default="bench/results/realdata", help="as bench_realdata.py's")
    p.add_argument("--overlay", help="TOML layered over the built-in engine config")
    p.add_argument("--top", type=int, default=100, help="Top Picks titles a row is matched with")
    args = p.parse_args(argv)
    args.tune_budget, args.seed, args.retrain = 0, 0, False
    work = Path(args.work)
    data = imported(Path(args.data), work)
    split = make_realdata_split(load_dataset(data), "member", validation=True)
    eng = trained(split, data, config(args.overlay), work, args)
    h, layout = eng.history, eng.layout("web")
    disc = discounts_2d(layout.rows, layout.titles_per_row)
    index = {t: i for i, t in enumerate(h.title_ids.tolist())}
    got: dict[str, list[float]] = {"page": [], "reordered": [], "greedy": [], "top_picks": []}
    kinds: dict[int, Counter[str]] = defaultdict(Counter)
    share: dict[tuple[int, str], list[float]] = defaultdict(list)
    for i, (u, at) in enumerate(zip(split.users.tolist(), split.at, strict=True)):
        truth = split.truth[i]
        ctx = eng.context(str(h.user_ids[u]), "web", at)
        page = eng.page_for(ctx)
        shown = [np.array([index[x.title_id] for x in r.items], dtype=np.int64) for r in page.rows]
        hits = [float(np.isin(s, truth) @ disc[0, : len(s)]) for s in shown]
        order = np.argsort(-np.array(hits), kind="stable")
        liked = learned_top(eng, int(u), ctx.at_us, args.top)
        matches = [float(np.isin(s, liked).sum()) for s in shown[1:]]
        by_tp = [0, *(1 + np.argsort(-np.array(matches), kind="stable"))]
        rows, _ = eng.filter(propose_rows(eng.rankers, ctx, h).rows, ctx)
        pool = [r.titles.astype(np.int64) for r in rows]
        by_row = n2dcg_by_row(page_grid(shown), truth, layout)
        for at_row, r in enumerate(page.rows):
            kinds[at_row][r.kind] += 1
            share[(at_row, r.kind)].append(float(by_row[at_row]))
        got["page"].append(float(by_row.sum()))
        got["reordered"].append(n2dcg(page_grid([shown[j] for j in order]), truth, layout))
        got["top_picks"].append(n2dcg(page_grid([shown[j] for j in by_tp]), truth, layout))
        got["greedy"].append(
            n2dcg(page_grid(greedy_rows(pool, truth, disc, layout.titles_per_row)), truth, layout)
        )
    base = float(np.mean(got["page"]))
    print(split.describe())
    for name, v in got.items():
        print(f"  {name:10s} N2DCG {np.mean(v):.4f}  ({np.mean(v) / base:.3f}x the page)")
    print("page row: kind pages (mean N2DCG share), most frequent first")
    for at_row in sorted(kinds):
        cells = (
            f"{k} {n} ({np.mean(share[(at_row, k)]):.4f})" for k, n in kinds[at_row].most_common()
        )
        print(f"  {at_row + 1:2d}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
