"""Page quality of the engine against the ground truth of a simulated world (and on MovieLens).

    .venv/bin/python bench/bench_page_quality.py [--work DIR] [--users N] [--seed N]
                                                 [--world-users N --world-titles N --world-days N]
                                                 [--ml DIR | --no-ml] [--no-world]
                                                 [--ml-validation] [--overlay FILE] [--retrain]

Simulated world (default: `rowrank simulate`'s default world, 5,000 members x 2,000 titles x
60 days, written once under WORK/world): the engine is trained up to the dataset's clock, then
every page is scored by the world's true model, for requests in the day after the clock whose
(device, hour) follow the last week of logged traffic:

- take-rate: GroundTruth.expected_plays, the true probability that the member plays something
  from the page under the world's browsing model (2-D cascade in the device's viewport);
- N2DCG: sum over the page of true play probability / log2(row + column) (1-based; a title
  repeated after its first appearance counts zero), divided by the same sum for the catalog's
  most attractive titles on the best slots of the device's full grid.

Pages compared, for the same requests: the engine; (a) a template page from the same rankers
(same filters, dedupe, caps and layout; rows in the fixed kind order
PageModelConfig.row_template, titles in each ranker's own order; no model); (b) the engine
trained without context features (`[page] context_features = false`); the oracle page
(GroundTruth.oracle_page). Ratios are of means; intervals are paired bootstraps over requests.

MovieLens (ml-latest-small; bench/protocol.py's temporal protocol at several cuts, `--ml-cuts`,
default 0.1,0.2,0.3: the times leaving 10%, 20% and 30% of plays after them, each window ending
at the next later cut, because one cut leaves only 27 members with plays on both sides): at each
cut the engine is trained as of that cut, and each test member gets one tv page at the time of
their first play in the window. Scored with NDCG@10 against the titles they played in the
window: the Top Picks (`top_n`) row as the page shows it (after dedupe against the rows above
it), the same row in the title model's order before assembly, in Top-N's own order, and the
best single ranker's own list (chosen on these pages, which favours it); page N2DCG (binary
relevance) against that best list poured into the same page shape (row-major, same rows x
titles). Differences come with 95% intervals from a bootstrap over members.

`--ml-validation`: the same protocol on validation cuts carved from the data before the
earliest test cut (engine.evaluation.split.validation_splits, the same fractions of that earlier
data), so
a change to the page can be judged without the test windows; models under WORK/models/ml-val*,
results in WORK/results-validation.json.

`--overlay FILE`: a TOML file deep-merged into the built-in engine config for every model (the
same merge as a `rowrank bench` variant), e.g. bench/overlays/top_n_three_cuts.toml; its models
and results are named after the file's stem (WORK/models/ml-val1@top_n_three_cuts,
WORK/results-validation@top_n_three_cuts.json), so the default figures stay as they are.

Each section of the results file ("simulated", "movielens") names the machine and commit it was
measured on; a run with --no-ml or --no-world replaces only its own section and keeps the other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import orjson
import polars as pl

import engine
from engine.config import EngineConfig, load_config, parse_config
from engine.data.columns import DEVICES, Col
from engine.data.dataset import load_dataset
from engine.evaluation.benchmark import deep_merge
from engine.evaluation.metrics import (
    bootstrap_ratio_ci,
    discounts_2d,
    first_appearances,
    n2dcg,
    ndcg_at_k,
    page_grid,
)
from engine.evaluation.split import machine
from engine.pipeline import Engine, filter_rows, propose_rows, pvr_scores
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS
from engine.request.selectors import assemble_page, score_rows_by_template
from engine.sim.world import GroundTruth
from engine.training.train import train, trained_with

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


# ----- models (trained once per config and data) -------------------------------------------------


def config_with(page: dict[str, Any], args: argparse.Namespace) -> EngineConfig:
    """The built-in config, the --overlay file deep-merged into it, then `page` keys."""
    doc = load_config(None).to_document()
    source = "bench_page_quality"
    if args.overlay:
        try:
            overlay = tomllib.loads(Path(args.overlay).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"--overlay {args.overlay}: {exc}") from None
        deep_merge(doc, overlay)
        source = f"built-in config + {args.overlay}"
    doc["page"] = {**doc.get("page", {}), **page}
    return parse_config(doc, source=source)


def model_dir(args: argparse.Namespace, name: str) -> Path:
    """WORK/models/NAME, or NAME@OVERLAY (the overlay file's stem) beside the default models."""
    suffix = f"@{Path(args.overlay).stem}" if args.overlay else ""
    return Path(args.work) / "models" / f"{name}{suffix}"


def trained(
    data: Path, out: Path, cfg: EngineConfig, *, until: datetime | None = None, retrain: bool
) -> tuple[Engine, float]:
    """Train unless `out` already holds a model of this config, data and cut-off."""
    if not retrain and trained_with(out, data, cfg, until):
        return engine.load(out), float("nan")
    t0 = time.perf_counter()
    train(data, out, engine_config=cfg, until=until, progress=sys.stderr.isatty())
    return engine.load(out), time.perf_counter() - t0


# ----- pages -------------------------------------------------------------------------------------


def template_page(eng: Engine, ctx: RequestContext) -> list[list[str]]:
    """(a): the same rankers and filters, rows in the template order, ranker title order."""
    ctx = eng.context(ctx.user_id, ctx.device, ctx.at, ctx.country)
    layout = eng.layout(ctx.device)
    proposed = propose_rows(eng.rankers, ctx, eng.history)
    rows, _ = eng.filter(proposed.rows, ctx)
    scorer = score_rows_by_template(eng.page_config.row_template, layout.visible_titles)
    page = assemble_page(rows, scorer, layout, eng.rules)
    ids = eng.history.title_ids
    return [ids[r.titles].tolist() for r in page.rows]


def with_row_order(eng: Engine, row_order: str) -> Engine:
    """The same loaded engine with another `[page] row_order`."""
    return Engine(
        config=eng.config,
        page_config=eng.page_config.model_copy(update={"row_order": row_order}),
        history=eng.history,
        rankers=eng.rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )


def engine_page(eng: Engine, ctx: RequestContext) -> list[list[str]]:
    return [[i.title_id for i in row.items] for row in eng.page_for(ctx).rows]


def graded_n2dcg(gt: GroundTruth, ctx: RequestContext, rows: list[list[str]]) -> float:
    """N2DCG with the true play probability as the gain (module doc)."""
    layout = DEFAULT_LAYOUTS[ctx.device]
    all_p = gt.play_probability(ctx.user_id, ctx, gt.world.title_ids)
    idx = {t: i for i, t in enumerate(gt.world.title_ids.tolist())}
    grid = page_grid([np.array([idx.get(t, -1) for t in r], dtype=np.int64) for r in rows])
    gain = np.where(grid >= 0, all_p[np.maximum(grid, 0)], 0.0) * first_appearances(grid)
    dcg = float((discounts_2d(*grid.shape) * gain).sum())
    disc = np.sort(discounts_2d(layout.rows, layout.titles_per_row).reshape(-1))[::-1]
    best = np.sort(all_p)[::-1][: disc.size]
    ideal = float((disc[: best.size] * best).sum())
    return dcg / ideal if ideal > 0 else 0.0


# ----- requests ----------------------------------------------------------------------------------


def requests(
    data: Path, eng: Engine, n_users: int, rng: np.random.Generator
) -> list[RequestContext]:
    """Members (seeded sample of those the model knows) asking for a page in the day after the
    clock, at a (device, hour) drawn from the last week of logged pages."""
    ds = load_dataset(data, validate=False)
    clock = ds.clock
    imp = ds.impressions
    assert imp is not None
    week = imp.filter(pl.col(Col.TS) >= pl.lit(clock - timedelta(days=7)).dt.cast_time_unit("us"))
    pages = week.group_by(Col.PAGE_ID).agg(pl.col(Col.DEVICE).first(), pl.col(Col.TS).first())
    pages = pages.sort(Col.PAGE_ID)
    devs = pages[Col.DEVICE].fill_null("tv").to_list()
    hours = pages[Col.TS].dt.hour().to_list()
    users = rng.choice(eng.history.user_ids, size=min(n_users, eng.history.n_users), replace=False)
    day = datetime(clock.year, clock.month, clock.day, tzinfo=UTC) + timedelta(days=1)
    out = []
    for u in sorted(users.tolist()):
        k = int(rng.integers(len(devs)))
        at = day + timedelta(hours=int(hours[k]), minutes=int(rng.integers(60)))
        dev = devs[k] if devs[k] in DEVICES else "tv"
        out.append(eng.context(str(u), dev, at))
    return out


# ----- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def ratio(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> Ratio:
    """mean(a) / mean(b) with a paired percentile bootstrap over requests."""
    idx = rng.integers(len(a), size=(n_boot, len(a)))
    boot = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    return Ratio(float(a.mean() / b.mean()), *np.percentile(boot, [2.5, 97.5]).tolist())


# ----- the simulated world -----------------------------------------------------------------------


def bench_world(args: argparse.Namespace) -> dict[str, Any]:
    from engine.sim.simulate import GROUND_TRUTH_DIR, simulate

    work = Path(args.work)
    world = work / f"world-{args.world_users}x{args.world_titles}x{args.world_days}"
    if not (world / "dataset.json").exists():
        print(f"simulating {world.name} ...", flush=True)
        s = simulate(
            world,
            users=args.world_users,
            titles=args.world_titles,
            days=args.world_days,
            seed=args.world_seed,
        )
        print(s.describe(), flush=True)
    gt = GroundTruth.load(world / GROUND_TRUTH_DIR)
    full, t_full = trained(
        world, model_dir(args, "full"), config_with({}, args), retrain=args.retrain
    )
    noctx, t_noctx = trained(
        world,
        model_dir(args, "no_context"),
        config_with({"context_features": False}, args),
        retrain=args.retrain,
    )
    rng = np.random.default_rng(args.seed)
    reqs = requests(world, full, args.users, rng)
    # The same models, rows ordered by the title model's cascade estimate instead of the row
    # model (PageModelConfig.row_order = "cascade").
    other = "cascade" if full.page_config.row_order != "cascade" else "learned"
    alt = with_row_order(full, other)
    names = ("engine", f"rows_{other}", "template", "no_context", "oracle")
    take = {n: np.zeros(len(reqs)) for n in names}
    ndcg = {n: np.zeros(len(reqs)) for n in names}
    t0 = time.perf_counter()
    for i, ctx in enumerate(reqs):
        pages = {
            "engine": engine_page(full, ctx),
            f"rows_{other}": engine_page(alt, ctx),
            "template": template_page(full, ctx),
            "no_context": engine_page(noctx, ctx),
            "oracle": gt.oracle_page(ctx.user_id, ctx, DEFAULT_LAYOUTS[ctx.device]),
        }
        for n, rows in pages.items():
            take[n][i] = gt.expected_plays(ctx.user_id, ctx, rows)
            ndcg[n][i] = graded_n2dcg(gt, ctx, rows)
    seconds = time.perf_counter() - t0
    boot = np.random.default_rng([args.seed, 1])
    m = full.manifest["metrics"]
    out = {
        "world": world.name,
        "requests": len(reqs),
        "devices": {d: sum(c.device == d for c in reqs) for d in DEVICES},
        "train_seconds": {"full": t_full, "no_context": t_noctx},
        "eval_seconds": seconds,
        "take_rate": {n: float(v.mean()) for n, v in take.items()},
        "n2dcg": {n: float(v.mean()) for n, v in ndcg.items()},
        "take_rate_vs_oracle": {
            n: str(ratio(take[n], take["oracle"], boot)) for n in names if n != "oracle"
        },
        "engine_vs_template": str(ratio(take["engine"], take["template"], boot)),
        "engine_vs_no_context": str(ratio(take["engine"], take["no_context"], boot)),
        "n2dcg_engine_vs_template": str(ratio(ndcg["engine"], ndcg["template"], boot)),
        "n2dcg_engine_vs_no_context": str(ratio(ndcg["engine"], ndcg["no_context"], boot)),
        "held_out_ndcg10": {
            "title": m["title"]["valid_ndcg_at_10"],
            "row": m["row"]["valid_ndcg_at_10"],
        },
        "per_device_take_rate": {
            d: {
                n: float(take[n][[c.device == d for c in reqs]].mean())
                for n in names
                if any(c.device == d for c in reqs)
            }
            for d in DEVICES
        },
    }
    return out


# ----- MovieLens ---------------------------------------------------------------------------------


def bench_movielens(args: argparse.Namespace) -> dict[str, Any]:
    from protocol import quantile_cut, rolling_splits, validation_splits  # bench/protocol.py

    from engine.data.movielens import import_movielens

    work = Path(args.work)
    data = work / "ml-latest-small"
    if not (data / "dataset.json").exists():
        import_movielens(Path(args.ml), data)
    ds = load_dataset(data)
    units: dict[str, list[Any]] = {}
    splits, train_seconds = [], {}
    if args.ml_validation:  # nothing at or after the earliest test cut is seen
        first_test_cut = quantile_cut(ds.plays, max(args.ml_cuts))
        split_list = validation_splits(ds, first_test_cut, args.ml_cuts)
    else:
        split_list = rolling_splits(ds, args.ml_cuts)
    for split in split_list:
        eng, t = trained(
            data,
            model_dir(args, f"ml-{split.name}"),
            config_with({}, args),
            until=split.cutoff,
            retrain=args.retrain,
        )
        splits.append(split.describe())
        train_seconds[split.name] = t
        for key, values in movielens_units(eng, ds, split).items():
            units.setdefault(key, []).extend(values)
    member = np.array(units.pop("member"))
    lists = units.pop("lists")
    shapes = units.pop("shape")
    kinds_above = Counter(k for above in units.pop("kinds_above") for k in above)
    deduped_to: Counter[str] = sum(units.pop("deduped_to"), Counter())
    # The best single ranker is chosen on these very units, which favours it.
    per_ranker = {
        name: np.array([ndcg_at_k(got.get(name, _EMPTY), truth, 10) for got, truth in lists])
        for name in sorted({n for got, _ in lists for n in got})
    }
    best = max(per_ranker, key=lambda n: float(per_ranker[n].mean()))
    m = {k: np.array(v, dtype=np.float64) for k, v in units.items()}
    best_ndcg = per_ranker[best]
    poured = np.array(
        [
            poured_n2dcg(got.get(best, _EMPTY), truth, shape)
            for (got, truth), shape in zip(lists, shapes, strict=True)
        ]
    )
    rng = np.random.default_rng(args.seed)
    return {
        "splits": splits,
        "train_seconds": train_seconds,
        "units": len(member),
        "members": len(set(member.tolist())),
        "best_single_ranker": best,
        "ndcg10": {
            "top_picks_shown": float(m["top_shown"].mean()),
            "top_picks_model_order": float(m["top_ranked"].mean()),
            "top_n_own_order": float(m["top_own"].mean()),
            "best_single_ranker": float(best_ndcg.mean()),
            "every_ranker": {n: float(v.mean()) for n, v in per_ranker.items()},
        },
        "differences": {
            "shown - best": member_bootstrap(m["top_shown"] - best_ndcg, member, rng),
            "model order - best": member_bootstrap(m["top_ranked"] - best_ndcg, member, rng),
            "model order - own order": member_bootstrap(
                m["top_ranked"] - m["top_own"], member, rng
            ),
            "page n2dcg - poured": member_bootstrap(m["page_n2dcg"] - poured, member, rng),
        },
        "top_picks_row": {
            "pages_without_it": int((m["top_row"] < 0).sum()),
            "median_position": float(np.median(m["top_row"][m["top_row"] >= 0]) + 1),
            "rows_above_by_kind": dict(kinds_above.most_common()),
            "later_plays_deduped": int(m["truth_deduped"].sum()),
            "later_plays_kept_by_kind": dict(deduped_to.most_common()),
            "pages_losing_later_plays": int((m["truth_deduped"] > 0).sum()),
        },
        "page_n2dcg": float(m["page_n2dcg"].mean()),
        "best_ranker_poured_n2dcg": float(poured.mean()),
    }


_EMPTY = np.empty(0, dtype=np.int64)


def movielens_units(eng: Engine, ds: Any, split: Any) -> dict[str, list[Any]]:
    """One page per test member of `split`, at their first play in its window, and what it is
    scored against: the Top Picks (`top_n`) row as shown (after dedupe against rows above), the
    same row in the title model's order before assembly, in Top-N's own order, and every
    ranker's own list (its rows concatenated, first appearance kept) at the same request."""
    h = eng.history
    window = ds.plays.filter(pl.col(Col.TS) >= pl.lit(split.cutoff).dt.cast_time_unit("us"))
    first = window.sort(Col.TS).group_by(Col.USER_ID, maintain_order=True).first()
    first_at = dict(zip(first[Col.USER_ID].to_list(), first[Col.TS].to_list(), strict=True))
    out: dict[str, list[Any]] = {}
    for u, truth in zip(split.users.tolist(), split.truth, strict=True):
        uid = str(h.user_ids[u])
        ctx = eng.context(uid, "tv", first_at[uid] - timedelta(seconds=1))
        page = eng.page_for(ctx)
        shown = [np.array([h.title_index(i.title_id) for i in r.items]) for r in page.rows]
        at = next((i for i, r in enumerate(page.rows) if r.ranker == "top_n"), -1)
        top = shown[at] if at >= 0 else _EMPTY
        # the member's later plays that dedupe took out of the Top Picks row, by the kind of
        # the row above that kept them
        later = set(h.title_ids[truth].tolist())
        kind_of = {r.row_id: r.kind for r in page.rows}
        deduped = Counter(
            kind_of.get(d["lost_to"], "?")
            for d in page.trace["assembly"]["duplicates"]
            if d["row_id"] == "top_n"
            for t in d["titles"]
            if t in later
        )
        proposed = propose_rows(eng.rankers, ctx, h).rows
        rows, _ = eng.filter(proposed, ctx)
        pvr, _ = pvr_scores(eng.rankers, u, h, ctx.at_us)
        ranked = eng.score(ctx, rows, pvr, eng.layout(ctx.device)).rows
        long_rows, _ = filter_rows(proposed, ctx, h, eng.rankers, 200)
        lists: dict[str, np.ndarray] = {}
        for r in long_rows:
            cat = np.concatenate([lists.get(r.ranker, _EMPTY), r.titles.astype(np.int64)])
            lists[r.ranker] = cat[first_appearances(cat)]
        for key, value in (
            ("member", uid),
            ("top_shown", ndcg_at_k(top, truth, 10)),
            ("top_row", at),
            ("kinds_above", [r.kind for r in page.rows[: max(at, 0)]]),
            ("truth_deduped", sum(deduped.values())),
            ("deduped_to", deduped),
            ("top_ranked", ndcg_at_k(_top_n_titles(ranked), truth, 10)),
            ("top_own", ndcg_at_k(_top_n_titles(rows), truth, 10)),
            ("page_n2dcg", n2dcg(page_grid(shown), truth, eng.layout(ctx.device))),
            ("shape", ([len(t) for t in shown], eng.layout(ctx.device))),
            ("lists", (lists, truth)),
        ):
            out.setdefault(key, []).append(value)
    return out


def _top_n_titles(rows: list[Any]) -> np.ndarray:
    return next((r.titles for r in rows if r.ranker == "top_n"), _EMPTY)


def poured_n2dcg(ranked: np.ndarray, truth: np.ndarray, shape: tuple[list[int], Any]) -> float:
    """A single list poured row-major into the page's shape (same rows x titles), scored
    like the page."""
    lengths, layout = shape
    poured, start = [], 0
    for n in lengths:
        poured.append(ranked[start : start + n])
        start += n
    return n2dcg(page_grid(poured, max(lengths, default=0)), truth, layout)


def member_bootstrap(
    diff: np.ndarray, member: np.ndarray, rng: np.random.Generator
) -> dict[str, float | int | None]:
    """Mean of a paired difference with a 95% interval that resamples members (each with all
    their cuts, as one member's pages at several cuts are not independent): the cluster
    bootstrap of engine.evaluation.metrics.bootstrap_ratio_ci on per-member sums over page
    counts."""
    _, inverse = np.unique(member, return_inverse=True)
    sums = np.bincount(inverse, weights=diff)
    counts = np.bincount(inverse).astype(np.float64)
    return bootstrap_ratio_ci(sums, counts, rng).to_dict()


# ----- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "bench" / "results" / "page_quality"))
    p.add_argument("--users", type=int, default=600, help="simulated requests (one per member)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-users", type=int, default=5000)
    p.add_argument("--world-titles", type=int, default=2000)
    p.add_argument("--world-days", type=int, default=60)
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--ml", default="/work/shared/data/ml-latest-small")
    p.add_argument(
        "--ml-cuts",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=(0.1, 0.2, 0.3),
        help="MovieLens test cuts as fractions of plays after each (rolling origin)",
    )
    p.add_argument(
        "--ml-validation",
        action="store_true",
        help="MovieLens on validation cuts before the earliest test cut (for tuning)",
    )
    p.add_argument(
        "--overlay",
        help="TOML deep-merged into the built-in engine config for every model (e.g. "
        "bench/overlays/*.toml); models and results are kept apart, named by its stem",
    )
    p.add_argument("--no-ml", action="store_true")
    p.add_argument("--no-world", action="store_true")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    if not args.no_world:
        results["simulated"] = r = {"measured_on": machine(), **bench_world(args)}
        print(f"\n== simulated world {r['world']}: {r['requests']} requests {r['devices']}")
        print(f"{'page':<16}{'take-rate':>10}{'N2DCG':>9}   take-rate / oracle")
        for n in r["take_rate"]:
            vs = r["take_rate_vs_oracle"].get(n, "1")
            print(f"{n:<16}{r['take_rate'][n]:>10.4f}{r['n2dcg'][n]:>9.4f}   {vs}")
        print(f"engine / template   take-rate {r['engine_vs_template']}")
        print(f"engine / no-context take-rate {r['engine_vs_no_context']}")
        print(f"engine / template   N2DCG     {r['n2dcg_engine_vs_template']}")
        print(f"engine / no-context N2DCG     {r['n2dcg_engine_vs_no_context']}")
        print(f"held-out window NDCG@10: {r['held_out_ndcg10']}")
        print(f"per device take-rate: {orjson.dumps(r['per_device_take_rate']).decode()}")
        print(f"train seconds {r['train_seconds']}, eval {r['eval_seconds']:.1f} s")
    if not args.no_ml and Path(args.ml).is_dir():
        results["movielens"] = r = {"measured_on": machine(), **bench_movielens(args)}
        print(f"\n== MovieLens: {r['units']} pages of {r['members']} members over these cuts:")
        for line in r["splits"]:
            print(f"  {line}")
        n = r["ndcg10"]
        print(
            f"NDCG@10: Top Picks row as shown {n['top_picks_shown']:.4f}; the same row in the "
            f"title model's order before assembly {n['top_picks_model_order']:.4f}; in Top-N's "
            f"own order {n['top_n_own_order']:.4f}; best single ranker ({r['best_single_ranker']}, "
            f"chosen on these pages) {n['best_single_ranker']:.4f}"
        )
        print(f"every ranker's own list: {orjson.dumps(n['every_ranker']).decode()}")
        t = r["top_picks_row"]
        print(
            f"Top Picks row: missing from {t['pages_without_it']} pages, median position "
            f"{t['median_position']:.0f}; rows above it by kind "
            f"{orjson.dumps(t['rows_above_by_kind']).decode()}; dedupe took "
            f"{t['later_plays_deduped']} of the members' later plays out of it, on "
            f"{t['pages_losing_later_plays']} pages, to rows of kind "
            f"{orjson.dumps(t['later_plays_kept_by_kind']).decode()}"
        )
        print(
            f"page N2DCG {r['page_n2dcg']:.4f} vs best list poured into the page "
            f"{r['best_ranker_poured_n2dcg']:.4f}"
        )
        for name, d in r["differences"].items():
            print(f"  {name:<26} {d['value']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] (members)")
    name = "results-validation" if args.ml_validation else "results"
    name += f"@{Path(args.overlay).stem}.json" if args.overlay else ".json"
    out = Path(args.work) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    # The sections not run this time keep their last figures (each names its commit).
    kept = orjson.loads(out.read_bytes()) if out.exists() else {}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(orjson.dumps({**kept, **results}, option=orjson.OPT_INDENT_2))
    tmp.replace(out)
    print(f"-> {out} (sections written now: {', '.join(results) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
