"""Continue Watching: does the resume model predict which started title a member resumes next
better than "most recent first"?

Protocol, per time cut T (the last `--cuts` windows of `--window-days` before the data's clock):
fit on History.from_dataset(ds, T) (nothing at or after T); a test member is one who, in
[T, T + window), plays a title that was on their Continue Watching row as of T. The request is
their first session after T (its time and device); the target is the first such title they play.
Each variant proposes its row through the ranker's own `propose` (same candidates, so only the
order differs) and we score the target's position: hit@1, hit@3, MRR (0 when absent). "random"
is the expected hit@1 / MRR of a random order of the same candidates.

    .venv/bin/python bench/bench_continue_watching.py                # simulates the default world
    .venv/bin/python bench/bench_continue_watching.py --data DIR     # any rowrank dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from engine.data.columns import DEVICES
from engine.data.dataset import Dataset, load_dataset
from engine.data.history import US_PER_DAY, History, to_us
from engine.request.context import RequestContext
from rankers.continue_watching import FEATURES, ContinueWatchingConfig, ContinueWatchingRanker

HAND_SET = np.array([0.0, -0.6, 0.8, -0.5, -0.2, 0.3, 0.2, 0.2, -0.3])
assert len(HAND_SET) == len(FEATURES)


def _variants(history: History) -> dict[str, ContinueWatchingRanker]:
    t0 = time.perf_counter()
    logistic = ContinueWatchingRanker("cw", ContinueWatchingConfig(model="logistic")).fit(history)
    fit_s = time.perf_counter() - t0
    print(f"  logistic fit: {fit_s:.2f} s on {logistic.fitted_on_:,} training candidates")
    print("  weights: " + ", ".join(f"{w:+.2f}" for w in logistic.weights_))
    # A hand-set mix of every feature (the signs the fits agree on), for comparison.
    hand = ContinueWatchingRanker("cw", ContinueWatchingConfig(model="logistic")).fit(history)
    hand.weights_ = HAND_SET.copy()
    recency = ContinueWatchingRanker("cw", ContinueWatchingConfig(model="recency")).fit(history)
    return {"logistic": logistic, "hand-set weights": hand, "recency": recency}


def evaluate_cut(ds: Dataset, cut: datetime, window_days: float) -> dict[str, list[float]]:
    history = History.from_dataset(ds, cut)
    full = History.from_dataset(ds)  # only to read what happened in [cut, cut + window)
    t, end = to_us(cut), to_us(cut) + int(window_days * US_PER_DAY)
    variants = _variants(history)
    out: dict[str, list[float]] = {f"{k} {m}": [] for k in variants for m in ("hit1", "hit3", "rr")}
    out.update({"random hit1": [], "random rr": [], "candidates": []})
    recency = variants["recency"]
    for u in range(full.n_users):
        uid = str(full.user_ids[u])
        s = full.user_plays(u)
        ts = full.play_ts[s]
        in_window = (ts >= t) & (ts < end)
        if not in_window.any():
            continue
        first = int(np.flatnonzero(in_window)[0])
        at = datetime.fromtimestamp(ts[first] / 1e6, UTC)
        dev = int(full.play_device[s][first])
        device = DEVICES[dev] if dev >= 0 else "tv"
        q = RequestContext(uid, device, at)
        base = recency.propose(q, history)
        if not base:
            continue
        cand_ids = history.title_ids[base[0].titles]
        later = full.title_ids[full.play_title[s][in_window]]
        hit = np.isin(later, cand_ids)
        if not hit.any():
            continue
        target = history.title_index(str(later[int(np.flatnonzero(hit)[0])]))
        n = len(cand_ids)
        out["candidates"].append(n)
        out["random hit1"].append(1.0 / n)
        out["random rr"].append(float(np.mean(1.0 / np.arange(1, n + 1))))
        for name, ranker in variants.items():
            rows = base if name == "recency" else ranker.propose(q, history)
            pos = np.flatnonzero(rows[0].titles == target) if rows else np.empty(0)
            rank = int(pos[0]) + 1 if len(pos) else 0
            out[f"{name} hit1"].append(float(rank == 1))
            out[f"{name} hit3"].append(float(0 < rank <= 3))
            out[f"{name} rr"].append(1.0 / rank if rank else 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help="dataset directory (default: simulate one)")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--titles", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window-days", type=float, default=7.0)
    ap.add_argument("--cuts", type=int, default=2)
    args = ap.parse_args()
    if args.data is None:
        from engine.sim.simulate import simulate

        tmp = Path(tempfile.mkdtemp(prefix="bench_cw_"))
        print(f"simulating {args.users} users, {args.titles} titles, {args.days} days -> {tmp}")
        simulate(tmp, users=args.users, titles=args.titles, days=args.days, seed=args.seed)
        args.data = tmp
    ds = load_dataset(args.data, validate=False)
    print(f"dataset {args.data}: {ds.plays.height:,} plays, {ds.users.height:,} members")
    total: dict[str, list[float]] = {}
    for k in range(args.cuts, 0, -1):
        cut = ds.clock - timedelta(days=args.window_days * k)
        print(f"cut {cut.isoformat()} (window {args.window_days:g} days)")
        res = evaluate_cut(ds, cut, args.window_days)
        for key, vals in res.items():
            total.setdefault(key, []).extend(vals)
        n = len(res["candidates"])
        print(f"  test members: {n:,}, mean candidates {np.mean(res['candidates']):.2f}")
    n = len(total["candidates"])
    multi = np.array(total["candidates"]) >= 2
    print(f"\nall cuts: {n:,} test members ({int(multi.sum()):,} with >= 2 candidates)")
    print(f"{'variant':<18}{'hit@1':>8}{'hit@3':>8}{'MRR':>8}   (>=2 candidates: hit@1, MRR)")
    for name in ("logistic", "hand-set weights", "recency"):
        h1, h3, rr = (np.array(total[f"{name} {m}"]) for m in ("hit1", "hit3", "rr"))
        print(
            f"{name:<18}{h1.mean():8.3f}{h3.mean():8.3f}{rr.mean():8.3f}"
            f"   {h1[multi].mean():.3f}, {rr[multi].mean():.3f}"
        )
    h1, rr = np.array(total["random hit1"]), np.array(total["random rr"])
    print(
        f"{'random order':<18}{h1.mean():8.3f}{'':>8}{rr.mean():8.3f}"
        f"   {h1[multi].mean():.3f}, {rr[multi].mean():.3f}"
    )

    # Paired bootstrap over test members: is the model's gain over recency real?
    rng = np.random.default_rng(0)
    for m in ("hit1", "rr"):
        diff = np.array(total[f"logistic {m}"]) - np.array(total[f"recency {m}"])
        boots = [diff[rng.integers(0, n, n)].mean() for _ in range(2000)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        print(f"logistic - recency {m}: {diff.mean():+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})")


if __name__ == "__main__":
    main()
