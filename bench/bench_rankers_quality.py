"""Offline quality of the collaborative-filtering rankers (PVR, Top-N, Because-you-watched) and
Trending, against MostPopular and a plain cosine item-kNN, under the temporal protocol of
bench/protocol.py. Prints Markdown tables, the command, the machine and the time.

    .venv/bin/python bench/bench_rankers_quality.py                 # MovieLens latest-small
    .venv/bin/python bench/bench_rankers_quality.py --sim           # + the simulated world
    .venv/bin/python bench/bench_rankers_quality.py --quick         # smaller validation grid

Steps, per dataset:
1. Validation (cuts inside the training period only): choose PVR's CF method and keys (EASE,
   ALS, item-kNN) with its popularity / content blend weights, the kNN baseline's K and
   Because-you-watched's content weight, each by mean NDCG@10 over the validation users.
2. Test: fit everything on the History before the test cut with the chosen keys (Top-N tunes
   its own blend inside that History), rank for every test user, score.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from protocol import (
    Scores,
    Split,
    batch_ndcg,
    bootstrap_ci,
    evaluate,
    load_movielens,
    machine,
    now_utc,
    paired_win_rate,
    test_split,
    top_unplayed,
    validation_splits,
)

from engine.candidates import CandidateRow
from engine.data.dataset import Dataset, load_dataset
from engine.data.history import History
from engine.request.context import RequestContext
from rankers.because_you_watched import BecauseYouWatchedConfig, BecauseYouWatchedRanker
from rankers.pvr import PVRConfig, PVRRanker, blend, components, distinct_players
from rankers.top_n import TopNConfig, TopNRanker

DEFAULT_ML = Path("/work/shared/data/ml-latest-small")
N = 50  # list length scored (Recall@50)


# ----- baselines (self-contained on purpose: they must not share code with what they judge) ---


def most_popular(history: History) -> Callable[[int], np.ndarray]:
    counts = distinct_players(history).astype(np.float64)

    def rank(u: int) -> np.ndarray:
        return top_unplayed(counts, history.play_title[history.user_plays(u)], N)

    return rank


class ItemKNN:
    """Plain cosine item-kNN on the binary play matrix: each of the member's titles votes for
    its `k` most similar titles with their cosine (k=None: every title)."""

    def __init__(self, history: History, k: int | None) -> None:
        self.h = history
        x = _binary(history)
        self.x = x
        self.xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        self.inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self.k = k
        if k is not None:
            self.nb, self.sim = self._neighbours(k)

    def _neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.h.n_titles
        k = min(k, n - 1)
        nb = np.zeros((n, k), dtype=np.int64)
        sim = np.zeros((n, k))
        for lo in range(0, n, 1024):
            hi = min(lo + 1024, n)
            g = np.asarray((self.xt[lo:hi] @ self.x).toarray(), dtype=np.float64)
            cos = g * self.inv[lo:hi, None] * self.inv[None, :]
            cos[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
            part = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            nb[lo:hi] = part
            sim[lo:hi] = np.take_along_axis(cos, part, axis=1)
        return nb, sim

    def scores(self, u: int) -> np.ndarray:
        items = np.unique(self.h.play_title[self.h.user_plays(u)])
        if self.k is None:
            # sum_j cos(j, i) = inv_i * sum_users x_ui * (sum_j x_uj inv_j): no n x n matrix.
            v = self.x[:, items] @ self.inv[items]
            return np.asarray(self.xt @ v).ravel() * self.inv
        out = np.zeros(self.h.n_titles)
        np.add.at(out, self.nb[items].ravel(), self.sim[items].ravel())
        return out

    def rank(self, u: int) -> np.ndarray:
        return top_unplayed(self.scores(u), self.h.play_title[self.h.user_plays(u)], N)


def _binary(history: History) -> sp.csr_matrix:
    x = sp.csr_matrix(
        (np.ones(len(history.play_user)), (history.play_user, history.play_title)),
        shape=(history.n_users, history.n_titles),
    )
    x.data[:] = 1.0
    return x


# ----- adapters: a ranker's rows -> one ranked list --------------------------------------------


def request_for(history: History, u: int) -> RequestContext:
    """A request one hour after the cut-off (the moment the test period starts)."""
    at = datetime.fromtimestamp(history.cutoff_us / 1e6, tz=UTC) + timedelta(hours=1)
    return RequestContext(str(history.user_ids[u]), "tv", at, None)


def merged(rows: Iterable[CandidateRow]) -> np.ndarray:
    """The union of rows as one list: each title at its best score, best first."""
    rows = list(rows)
    if not rows:
        return np.empty(0, dtype=np.int64)
    titles = np.concatenate([r.titles for r in rows]).astype(np.int64)
    scores = np.concatenate([r.scores for r in rows]).astype(np.float64)
    order = np.lexsort((titles, -scores))
    titles = titles[order]
    _, first = np.unique(titles, return_index=True)
    return titles[np.sort(first)]


def rows_ranker(ranker: Any, history: History) -> Callable[[int], np.ndarray]:
    return lambda u: merged(ranker.propose(request_for(history, u), history))


def scores_ranker(ranker: Any, history: History) -> Callable[[int], np.ndarray]:
    return lambda u: top_unplayed(
        ranker.scores(u, history), history.play_title[history.user_plays(u)], N
    )


def top_n_ranker(cfg: TopNConfig, h: History) -> Callable[[int], np.ndarray]:
    r = TopNRanker("top_n", cfg).fit(h)
    print(f"  Top-N chose {r.blend_} (CF keys {_label(cfg.cf_keys())})")
    return scores_ranker(r, h)


# ----- validation ------------------------------------------------------------------------------


@dataclass
class Trial:
    label: str
    keys: dict[str, Any]
    ndcg: np.ndarray  # per validation user, pooled over the splits

    @property
    def mean(self) -> float:
        return float(self.ndcg.mean()) if len(self.ndcg) else float("nan")


def cf_grid(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [
            {"method": "ease", "l2": 200.0, "min_plays": 3},
            {"method": "item_knn", "neighbours": 100, "min_plays": 2},
            {"method": "als", "factors": 32, "min_plays": 2},
        ]
    grid: list[dict[str, Any]] = []
    for l2, mp in product((200.0, 500.0, 1500.0, 5000.0), (2, 5)):
        grid.append({"method": "ease", "l2": l2, "min_plays": mp})
    for k, shrink in product((50, 200), (0.0, 10.0)):
        grid.append({"method": "item_knn", "neighbours": k, "shrink": shrink, "min_plays": 2})
    for f, alpha in product((32, 64), (5.0, 20.0)):
        grid.append({"method": "als", "factors": f, "als_alpha": alpha, "min_plays": 2})
    return grid


BLEND_GRID = list(product((0.0, 0.1, 0.2, 0.3, 0.5), (0.0, 0.15, 0.3, 0.6, 1.0)))
HALF_LIVES: tuple[float, ...] = (0.0, 30.0, 90.0, 365.0)  # 0 = no decay


def validate_pvr(vals: list[Split], quick: bool) -> list[Trial]:
    """Every CF setting x user half-life x blend, scored by NDCG@10 on the validation cuts.
    The blends are evaluated for blocks of users at once (batch_ndcg); the first block is
    checked against the per-user path of protocol.evaluate."""
    trials: dict[str, Trial] = {}
    checked = False
    for keys in cf_grid(quick):
        fit_s = 0.0
        for split in vals:
            h = split.history
            t0 = time.perf_counter()
            r = PVRRanker("pvr", PVRConfig(**keys)).fit(h)
            fit_s += time.perf_counter() - t0
            pop = r.signals_.pop_z
            for hl in HALF_LIVES if not quick else (0.0,):
                cfg = PVRConfig(**keys, user_half_life_days=hl)
                nd: dict[tuple[float, float], list[np.ndarray]] = {}
                for lo in range(0, len(split.users), 512):
                    users = split.users[lo : lo + 512].tolist()
                    comps = [
                        components(r.model_, r.signals_, h, u, h.cutoff_us, cfg) for u in users
                    ]
                    cf = np.stack([c.cf for c in comps])
                    content = np.stack([c.content for c in comps])
                    cold = np.array([c.cold for c in comps])
                    played = np.zeros((len(users), h.n_titles), dtype=bool)
                    truth = np.zeros((len(users), h.n_titles), dtype=bool)
                    for i, u in enumerate(users):
                        played[i, h.play_title[h.user_plays(u)]] = True
                        truth[i, split.truth[lo + i]] = True
                    for pw, cw in BLEND_GRID:
                        s = (1.0 - pw) * cf + pw * pop + cw * content
                        s[cold] = pop
                        got = batch_ndcg(s, played, truth)
                        if not checked:
                            _check_batch(split, users, comps, pop, pw, cw, got)
                            checked = True
                        nd.setdefault((pw, cw), []).append(got)
                for (pw, cw), parts in nd.items():
                    full = {**keys, "user_half_life_days": hl}
                    full |= {"popularity_weight": pw, "content_weight": cw}
                    label = _label(full)
                    t = trials.setdefault(label, Trial(label, full, np.empty(0)))
                    t.ndcg = np.r_[t.ndcg, *parts]
        print(f"  fitted {_label(keys)} on {len(vals)} validation cuts in {fit_s:.1f} s")
    return list(trials.values())


def _check_batch(
    split: Split,
    users: list[int],
    comps: list[Any],
    pop: np.ndarray,
    pw: float,
    cw: float,
    got: np.ndarray,
) -> None:
    """The block evaluation must agree with protocol.evaluate on the same lists."""
    h = split.history
    by_user = dict(zip(users, comps, strict=True))
    sub = replace(split, users=np.array(users, dtype=np.int32), truth=split.truth[: len(users)])

    def rank(u: int) -> np.ndarray:
        return top_unplayed(blend(by_user[u], pop, pw, cw), h.play_title[h.user_plays(u)], N)

    want = evaluate(sub, rank).ndcg10
    if not np.allclose(got, want, atol=1e-9):
        bad = np.flatnonzero(~np.isclose(got, want, atol=1e-9))
        raise AssertionError(f"batch NDCG@10 disagrees with evaluate(): {got[bad]} vs {want[bad]}")


def validate_knn(vals: list[Split]) -> list[Trial]:
    out = []
    for k in (20, 50, 100, 200, None):
        nd = np.concatenate([evaluate(s, ItemKNN(s.history, k).rank).ndcg10 for s in vals])
        out.append(Trial(f"k={k}", {"k": k}, nd))
    return out


def validate_byw(vals: list[Split]) -> list[Trial]:
    out = []
    for cw, yw in product((0.0, 0.1, 0.3), (0.0, 0.3)):
        keys = {"content_weight": cw, "year_weight": yw}
        cfg = BecauseYouWatchedConfig(content_weight=cw, year_weight=yw)
        nd = []
        for s in vals:
            r = BecauseYouWatchedRanker("byw", cfg).fit(s.history)
            nd.append(evaluate(s, rows_ranker(r, s.history)).ndcg10)
        out.append(Trial(_label(keys), keys, np.concatenate(nd)))
    return out


def _label(keys: dict[str, Any]) -> str:
    short = {
        "method": "",
        "l2": "l2",
        "min_plays": "min",
        "neighbours": "k",
        "shrink": "shrink",
        "factors": "f",
        "als_alpha": "alpha",
        "user_half_life_days": "hl",
        "popularity_weight": "pop",
        "content_weight": "content",
        "year_weight": "year",
    }
    parts = []
    for k, v in keys.items():
        name = short.get(k, k)
        parts.append(
            f"{v}" if name == "" else f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}"
        )
    return " ".join(parts)


def best(trials: list[Trial]) -> Trial:
    # Ties: the first trial in grid order (smaller weights come first).
    return max(trials, key=lambda t: (t.mean, -trials.index(t)))


# ----- test ------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    scores: Scores
    fit_s: float
    rank_ms: float  # median time to produce one user's list (ms)
    note: str = ""


def run_test(
    name: str, split: Split, build: Callable[[], Callable[[int], np.ndarray]], note: str = ""
) -> Result:
    t0 = time.perf_counter()
    rank = build()
    fit_s = time.perf_counter() - t0
    times: list[float] = []

    def timed(u: int) -> np.ndarray:
        t = time.perf_counter()
        out = rank(u)
        times.append(time.perf_counter() - t)
        return out

    scores = evaluate(split, timed)
    return Result(name, scores, fit_s, 1000 * float(np.median(times)), note)


def trending_builder(split: Split) -> Callable[[], Callable[[int], np.ndarray]] | None:
    try:
        from engine.config import build_rankers, parse_config

        cfg = parse_config(
            {"rankers": {"trending_7d": {"type": "trending", "half_life_hours": 168}}}
        )
    except Exception as exc:  # the other helper's code may not be ready
        print(f"note: Trending skipped ({type(exc).__name__}: {exc})")
        return None

    def build() -> Callable[[int], np.ndarray]:
        r = build_rankers(cfg)["trending_7d"].fit(split.history)
        return rows_ranker(r, split.history)

    return build


def print_table(results: list[Result], rng: np.random.Generator) -> None:
    print("| ranker | Recall@10 | NDCG@10 (95% CI) | Recall@50 | Coverage@10 | fit s | list ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        m = r.scores.mean()
        lo, hi = bootstrap_ci(r.scores.ndcg10, rng)
        print(
            f"| {r.name} | {m['Recall@10']:.4f} | {m['NDCG@10']:.4f} ({lo:.3f}-{hi:.3f}) | "
            f"{m['Recall@50']:.4f} | {m['Coverage@10']:.4f} | {r.fit_s:.1f} | {r.rank_ms:.2f} |"
        )


def run_dataset(ds: Dataset, label: str, args: argparse.Namespace) -> dict[str, Result]:
    rng = np.random.default_rng(args.seed)
    test = test_split(ds, args.test_fraction)
    vals = validation_splits(ds, test.cutoff, args.val_fractions)
    vals = [v.subsample(args.max_val_users, rng) for v in vals]
    print(f"\n## {label}\n")
    for s in [*vals, test]:
        print(f"- {s.describe()}")

    print("\n### Validation (inside the training period), mean NDCG@10 over validation users\n")
    pvr_trials = validate_pvr(vals, args.quick)
    knn_trials = validate_knn(vals)
    byw_trials = validate_byw(vals)
    n_val = sum(len(s.users) for s in vals)
    print(f"\n{n_val} validation users. PVR, best keys per method:\n")
    print("| method | best keys | NDCG@10 |")
    print("|---|---|---|")
    for method in ("ease", "item_knn", "als"):
        ts = [t for t in pvr_trials if t.keys["method"] == method]
        if ts:
            b = best(ts)
            print(f"| {method} | {b.label} | {b.mean:.4f} |")
    pvr_best, knn_best, byw_best = best(pvr_trials), best(knn_trials), best(byw_trials)
    print(f"\nchosen PVR: {pvr_best.label} ({pvr_best.mean:.4f})")
    print(f"chosen item-kNN baseline: {knn_best.label} ({knn_best.mean:.4f})")
    print(f"chosen Because-you-watched: {byw_best.label} ({byw_best.mean:.4f})")

    h = test.history
    pvr_keys = dict(pvr_best.keys)
    cf_keys = {
        k: v for k, v in pvr_keys.items() if k not in ("popularity_weight", "content_weight")
    }
    fractions = list(args.val_fractions)
    builders: list[tuple[str, Callable[[], Callable[[int], np.ndarray]], str]] = [
        ("MostPopular", lambda: most_popular(h), "baseline"),
        (
            f"item-kNN cosine ({knn_best.label})",
            lambda: ItemKNN(h, knn_best.keys["k"]).rank,
            "baseline",
        ),
        (
            "PVR (validated keys)",
            lambda: scores_ranker(PVRRanker("pvr", PVRConfig(**pvr_keys)).fit(h), h),
            pvr_best.label,
        ),
        (
            "PVR (default config)",
            lambda: scores_ranker(PVRRanker("pvr", PVRConfig()).fit(h), h),
            "",
        ),
        (
            "Top-N (self-tuned blend)",
            lambda: top_n_ranker(TopNConfig(**cf_keys, validation_fractions=fractions), h),
            "",
        ),
        (
            "Top-N (default config)",
            lambda: top_n_ranker(TopNConfig(), h),
            "",
        ),
        (
            "Because you watched (rows merged)",
            lambda: rows_ranker(
                BecauseYouWatchedRanker("byw", BecauseYouWatchedConfig(**byw_best.keys)).fit(h),
                h,
            ),
            byw_best.label,
        ),
    ]
    tb = trending_builder(test)
    if tb is not None:
        builders.append(("Trending (half-life 7 d)", tb, ""))
    results: dict[str, Result] = {}
    for name, build, note in builders:
        results[name] = run_test(name, test, build, note)
    print(f"\n### Test: {len(test.users)} test users\n")
    print_table(list(results.values()), rng)

    print("\nPaired bootstrap: share of resamples of the test users where NDCG@10 is higher.\n")
    print("| ranker | vs MostPopular | vs item-kNN |")
    print("|---|---|---|")
    knn_name = next(n for n in results if n.startswith("item-kNN"))
    for name in results:
        if name.startswith(("PVR", "Top-N")):
            a = results[name].scores.ndcg10
            w1 = paired_win_rate(a, results["MostPopular"].scores.ndcg10, rng)
            w2 = paired_win_rate(a, results[knn_name].scores.ndcg10, rng)
            print(f"| {name} | {w1:.2f} | {w2:.2f} |")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movielens", type=Path, default=DEFAULT_ML, help="MovieLens directory")
    p.add_argument("--sim", action="store_true", help="also run on the simulated world")
    p.add_argument("--no-movielens", action="store_true", help="skip MovieLens")
    p.add_argument("--sim-dir", type=Path, help="an existing simulated dataset directory")
    p.add_argument("--quick", action="store_true", help="a small validation grid")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument(
        "--val-fractions",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.1, 0.2, 0.3],
        help="validation cuts, as fractions of the training plays after each cut",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-val-users", type=int, default=1000, help="validation users per cut (sampled)"
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    print("# Ranker quality (bench/bench_rankers_quality.py)\n")
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(f"- machine: {machine()}")
    print(f"- started: {now_utc()}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_movielens:
            ds = load_movielens(args.movielens, Path(tmp))
            run_dataset(ds, f"MovieLens ({args.movielens.name})", args)
        if args.sim or args.sim_dir:
            sim = load_sim(args, Path(tmp))
            if sim is not None:
                run_dataset(sim, "Simulated world (5,000 users, 2,000 titles, 60 days)", args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def load_sim(args: argparse.Namespace, tmp: Path) -> Dataset | None:
    if args.sim_dir:
        return load_dataset(args.sim_dir)
    try:
        from engine.sim.simulate import simulate
    except ImportError as exc:
        print(f"\nnote: simulated world skipped ({exc})")
        return None
    out = tmp / "sim"
    simulate(out, seed=args.seed, progress=False)
    return load_dataset(out)


if __name__ == "__main__":
    sys.exit(main())
