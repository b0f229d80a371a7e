"""Page quality of the engine against the ground truth of a simulated world.

    .venv/bin/python bench/bench_page_quality.py [--work DIR] [--users N] [--seed N]
                                                 [--world-users N --world-titles N --world-days N]
                                                 [--overlay FILE] [--retrain]

Simulated world (default: `rowrank simulate`'s default world, 5,000 members x 2,000 titles x
60 days, written once under WORK/world-USERSxTITLESxDAYS): the engine is trained up to the
dataset's clock, then every page is scored by the world's true model, for requests in the day
after the clock whose (device, hour) follow the last week of logged traffic:

- take-rate: GroundTruth.expected_plays, the true probability that the member plays something
  from the page under the world's browsing model (2-D cascade in the device's viewport);
- N2DCG: sum over the page of true play probability / log2(row + column) (1-based; a title
  repeated after its first appearance counts zero), divided by the same sum for the catalog's
  most attractive titles on the best slots of the device's full grid.

Pages compared, for the same requests: the engine; the same engine with its rows ordered by
the other `[page] row_order` (the title model's cascade estimate, or the row model); (a) a
template page from the same rankers (same filters, dedupe, caps and layout; rows in the fixed
kind order PageModelConfig.row_template, titles in each ranker's own order; no model); (b) the
engine trained without context features (`[page] context_features = false`); the oracle page
(GroundTruth.oracle_page). Ratios are of means; intervals are paired bootstraps over requests.

`--overlay FILE`: a TOML file deep-merged into the built-in engine config for every model (the
same merge as a `rowrank bench` variant); its models and results are named after the file's
stem (WORK/models/full@STEM, WORK/results@STEM.json), so the default figures stay as they are.

The results file (WORK/results.json) holds one section, "simulated", which names the machine and
commit it was measured on. Real data (MovieLens) is measured by bench/bench_realdata.py
(docs/realdata.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import orjson
import polars as pl

import engine
from engine.config import EngineConfig, deep_merge, load_config, parse_config
from engine.data.columns import DEVICES, Col
from engine.data.dataset import load_dataset
from engine.evaluation.metrics import discounts_2d, first_appearances, page_grid
from engine.evaluation.split import machine
from engine.pipeline import Engine, propose_rows
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS
from engine.request.selectors import assemble_page, score_rows_by_template
from engine.sim.world import GroundTruth
from engine.training.train import train, trained_with

ROOT = Path(__file__).resolve().parents[1]


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
        doc = deep_merge(doc, overlay)
        source = f"built-in config + {args.overlay}"
    doc["page"] = {**doc.get("page", {}), **page}
    return parse_config(doc, source=source)


def model_dir(args: argparse.Namespace, name: str) -> Path:
    """WORK/models/NAME, or NAME@OVERLAY (the overlay file's stem) beside the default models."""
    suffix = f"@{Path(args.overlay).stem}" if args.overlay else ""
    return Path(args.work) / "models" / f"{name}{suffix}"


def trained(
    data: Path,
    out: Path,
    cfg: EngineConfig,
    *,
    until: datetime | None = None,
    retrain: bool,
    tune_budget: float = 0.0,
) -> tuple[Engine, float]:
    """Train unless `out` already holds a model of this config, data, cut-off and budget."""
    if not retrain and trained_with(out, data, cfg, until, tune_budget):
        return engine.load(out), float("nan")
    t0 = time.perf_counter()
    train(
        data,
        out,
        engine_config=cfg,
        until=until,
        progress=sys.stderr.isatty(),
        tune_budget=tune_budget,
    )
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
    by_page = week.group_by(Col.PAGE_ID).agg(pl.col(Col.DEVICE).first(), pl.col(Col.TS).first())
    pages = by_page.sort(Col.PAGE_ID).collect()
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
        world,
        model_dir(args, "full"),
        config_with({}, args),
        retrain=args.retrain,
        tune_budget=args.tune_budget,
    )
    noctx, t_noctx = trained(
        world,
        model_dir(args, "no_context"),
        config_with({"context_features": False}, args),
        retrain=args.retrain,
        tune_budget=args.tune_budget,
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
    p.add_argument(
        "--overlay",
        help="TOML deep-merged into the built-in engine config for every model; models and "
        "results are kept apart, named by its stem",
    )
    p.add_argument("--retrain", action="store_true")
    p.add_argument(
        "--tune-budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="rowrank train's tuning budget for both models (the CLI's default is 60)",
    )
    args = p.parse_args(argv)
    r = {"measured_on": machine(), **bench_world(args)}
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
    name = f"results@{Path(args.overlay).stem}.json" if args.overlay else "results.json"
    out = Path(args.work) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"simulated": r}, option=orjson.OPT_INDENT_2))
    tmp.replace(out)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
