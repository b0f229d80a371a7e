"""Page latency on one core, warm, and training time on the default simulated world.

    .venv/bin/python bench/bench_page_speed.py [--model DIR] [--data DIR] [--requests N]
                                               [--row-length N] [--train]

- Pages: the process is pinned to one CPU (os.sched_setaffinity) with every thread pool at one
  thread, the engine is loaded, 30 pages warm it up, then `Engine.page_for` is timed for
  `--requests` requests (members drawn from the model's history, devices in turn, times in the
  day after the cut-off). Reported: p50 / p90 / p99 / max in ms and the scored (row, title)
  pairs per page (the page trace's `scored.pairs`), plus a per-stage breakdown (both row
  lengths) measured by running the pipeline's stage functions one by one on the same requests.
- `--row-length N` (default 100): the rankers are configured to propose rows of N titles and the
  title model scores up to N per row (`row_titles_scored`); the trained models are the same.
  The default config's rows (40-50 titles) give fewer pairs; both are printed.
- `--train`: times `rowrank train` on the world (both cores), as the lead asked (< 2 minutes).
- Fresh processes: import + model load and the first page, as `rowrank page` pays them, once
  with an empty numba cache (the compiled loops are built) and twice with it filled.

Default data: the world of bench/bench_page_quality.py (bench/results/page_quality/), simulated
and trained there if missing.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import subprocess
import sys
import tempfile

# One thread everywhere, before numpy / LightGBM load their pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

import engine
from engine.config import build_rankers, parse_config
from engine.data.columns import DEVICES
from engine.pipeline import ROW_STATE_COLUMNS, Engine, continuation_mode, propose_rows
from engine.request.context import RequestContext
from engine.request.layout import DeviceLayout
from engine.request.page import build_page
from engine.request.scorers import Forest
from engine.request.selectors import RowFeatures, RowPool, assemble_page, row_states
from engine.serving.processes import freeze_loaded_objects

ROOT = Path(__file__).resolve().parents[1]
QUALITY_WORK = ROOT / "bench" / "results" / "page_quality"
WORLD = QUALITY_WORK / "world-5000x2000x60"

# Keys that set how many titles each ranker proposes, by ranker type.
_LENGTH_KEYS = {
    "pvr": "row_length",
    "top_n": "row_length",
    "because_you_watched": "row_length",
    "trending": "max_titles",
    "new_releases": "max_titles",
    "watch_again": "max_titles",
    "continue_watching": "max_titles",
}


def with_row_length(eng: Engine, n: int, model_dir: Path) -> Engine:
    """The same trained models and ranker states, rankers configured for rows of n titles."""
    doc = eng.config.to_document()
    for table in doc["rankers"].values():
        key = _LENGTH_KEYS.get(table["type"])
        if key and table["type"] != "continue_watching":
            table[key] = n
    cfg = parse_config(doc, source="bench_page_speed")
    rankers = build_rankers(cfg)
    for name, ranker in rankers.items():
        ranker.load(model_dir / "rankers" / name, eng.history)
    return Engine(
        config=cfg,
        page_config=eng.page_config.model_copy(update={"row_titles_scored": n}),
        history=eng.history,
        rankers=rankers,
        store=eng.store,
        model=eng.model,
        model_version=eng.model_version,
        manifest=eng.manifest,
    )


def requests(eng: Engine, n: int, seed: int) -> list[RequestContext]:
    rng = np.random.default_rng(seed)
    users = rng.choice(eng.history.user_ids, size=n, replace=True)
    day = datetime.fromtimestamp(eng.history.cutoff_us / 1e6, UTC) + timedelta(days=1)
    return [
        eng.context(str(u), DEVICES[i % len(DEVICES)], day + timedelta(minutes=int(m)))
        for i, (u, m) in enumerate(zip(users, rng.integers(0, 24 * 60, n), strict=True))
    ]


def time_pages(
    eng: Engine, reqs: list[RequestContext]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, np.ndarray]:
    """Wall ms, CPU ms of this thread (time.thread_time: what the page costs even when other
    processes share the core) and scored pairs, per page; a sha256 of all the pages' JSON
    (untimed), so two commits can be checked to build the same pages; and the wall ms of the
    pages during which Python's garbage collector ran a full (generation 2) collection."""
    for ctx in reqs[:30]:  # warm-up: caches, LightGBM's first call, numpy dispatch
        eng.page_for(ctx)
    freeze_loaded_objects()  # as rowrank serve and precompute's workers do once warm
    ms, cpu, pairs, full_gc = [], [], [], []
    digest = hashlib.sha256()
    collections = [0]

    def count_full(phase: str, info: dict[str, int]) -> None:
        collections[0] += phase == "start" and info["generation"] == 2

    gc.callbacks.append(count_full)
    try:
        for ctx in reqs:
            before = collections[0]
            c0, t0 = time.thread_time(), time.perf_counter()
            page = eng.page_for(ctx)
            ms.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.thread_time() - c0) * 1e3)
            if collections[0] > before:
                full_gc.append(ms[-1])
            pairs.append(page.trace.get("scored", {}).get("pairs", 0))
            digest.update(page.to_json())
    finally:
        gc.callbacks.remove(count_full)
    out = np.array(ms), np.array(cpu), np.array(pairs), digest.hexdigest()[:12]
    return (*out, np.array(full_gc))


def stages(eng: Engine, reqs: list[RequestContext]) -> dict[str, float]:
    """Median CPU ms per stage, running the pipeline's stage functions in page_for's order."""
    out: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t = time.thread_time()
        out.setdefault(name, []).append((t - t0) * 1e3)
        return t

    h = eng.history
    for ctx in reqs:
        t = time.thread_time()
        ctx = eng.context(ctx.user_id, ctx.device, ctx.at, ctx.country)
        layout = eng.layout(ctx.device)
        proposed = propose_rows(eng.rankers, ctx, h)
        t = tick("rankers", t)
        rows, _ = eng.filter(proposed.rows, ctx)
        t = tick("filters", t)
        user = h.user_index(ctx.user_id)
        pvr, _ = eng.pvr.scores(user, h, ctx.at_us)
        t = tick("pvr scores (features)", t)
        scored = eng.score(ctx, rows, pvr, layout)
        t = tick("features + title model + row features", t)
        cont = continuation_mode(h, user, ctx.at_us, eng.page_config)
        assembled = assemble_page(
            scored.rows,
            eng.row_scorer,
            layout,
            eng.rules,
            continuation_mode=cont,
            features=scored.row_features,
        )
        t = tick("row model + assembly", t)
        page = build_page(assembled, h, ctx, model_version=eng.model_version, generated_at=ctx.at)
        t = tick("build page", t)
        page.to_json()
        tick("to_json", t)
    return {k: float(np.median(v)) for k, v in out.items()}


def title_model_only(eng: Engine, reqs: list[RequestContext]) -> tuple[float, float]:
    """Median CPU ms of the title model's predict alone, and pairs per call."""
    h = eng.history
    ms, n = [], []
    for ctx in reqs:
        ctx = eng.context(ctx.user_id, ctx.device, ctx.at, ctx.country)
        proposed = propose_rows(eng.rankers, ctx, h)
        rows, _ = eng.filter(proposed.rows, ctx)
        pvr, _ = eng.pvr.scores(h.user_index(ctx.user_id), h, ctx.at_us)
        X = eng.score(ctx, rows, pvr, eng.layout(ctx.device)).title_x
        t0 = time.thread_time()
        eng.model.score_titles(X)
        ms.append((time.thread_time() - t0) * 1e3)
        n.append(len(X))
    return float(np.median(ms)), float(np.median(n))


def first_stage_row_matrix(rows: list[Any], f: RowFeatures, layout: DeviceLayout) -> np.ndarray:
    """The row-model matrix the assembly's first stage scores (nothing placed yet)."""
    pool = RowPool(rows, layout.titles_per_row)
    n, n_genres = len(rows), f.genre_unit.shape[1]
    state, cents = np.empty((n, 6)), np.zeros((n, n_genres))
    row_states(
        pool.arrays(),
        np.arange(n),
        min(layout.visible_titles, layout.titles_per_row),
        f.decay,
        f.genre_unit,
        f.kinds,
        np.zeros(f.genre_unit.shape[0], dtype=bool),
        np.zeros((0, n_genres)),
        np.zeros(0, dtype=np.int64),
        state,
        cents,
    )
    X = f.static.copy()
    X[:, ROW_STATE_COLUMNS] = state
    return X


def row_model_calls(eng: Engine, reqs: list[RequestContext]) -> tuple[float, float, float]:
    """Median us of one row-model call on a page's first-stage matrix: Booster.predict against
    the compiled trees the engine serves (engine.request.scorers.Forest); rows per call."""
    h = eng.history
    mats = []
    for ctx in reqs:
        ctx = eng.context(ctx.user_id, ctx.device, ctx.at, ctx.country)
        proposed = propose_rows(eng.rankers, ctx, h)
        rows, _ = eng.filter(proposed.rows, ctx)
        if not rows:
            continue
        pvr, _ = eng.pvr.scores(h.user_index(ctx.user_id), h, ctx.at_us)
        layout = eng.layout(ctx.device)
        scored = eng.score(ctx, rows, pvr, layout)
        X = first_stage_row_matrix(scored.rows, scored.row_features, layout)
        mats.append(np.ascontiguousarray(eng.model.row_model_input(X), dtype=np.float32))
    booster, trees, lib, direct = eng.model.row, Forest(eng.model.row.model_to_string()), [], []
    for _ in range(5):  # interleaved, so both see the same machine
        for X in mats:
            t0 = time.perf_counter()
            booster.predict(X, num_threads=1)
            t1 = time.perf_counter()
            trees.raw(X)
            t2 = time.perf_counter()
            lib.append(t1 - t0)
            direct.append(t2 - t1)
    per_call = float(np.median([len(X) for X in mats]))
    return float(np.median(lib)) * 1e6, float(np.median(direct)) * 1e6, per_call


def report(
    name: str,
    ms: np.ndarray,
    cpu: np.ndarray,
    pairs: np.ndarray,
    digest: str,
    full_gc: np.ndarray,
) -> dict[str, Any]:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    c50, c90, c99 = np.percentile(cpu, [50, 90, 99])
    print(
        f"{name}: {len(ms)} pages; wall p50 {p50:.2f} ms, p90 {p90:.2f}, p99 {p99:.2f}, "
        f"max {ms.max():.2f}; CPU p50 {c50:.2f} ms, p90 {c90:.2f}, p99 {c99:.2f}; "
        f"scored pairs per page: median {np.median(pairs):.0f}, min {pairs.min()}, "
        f"max {pairs.max()}; pages sha256 {digest}; pages with a full garbage collection: "
        + (", ".join(f"{m:.1f} ms" for m in full_gc) if len(full_gc) else "none")
    )
    return {
        "cpu_p50_ms": c50,
        "cpu_p99_ms": c99,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": float(ms.max()),
        "pairs_median": float(np.median(pairs)),
        "pairs_min": int(pairs.min()),
    }


def ensure_model(data: Path, model: Path) -> None:
    """Simulate the default world and train unless `model` is what `rowrank train` writes now
    (engine.training.train.trained_with; bench_page_quality.py trains the same directory alike)."""
    from engine.config import load_config
    from engine.training.train import train, trained_with

    if (data / "dataset.json").exists() and trained_with(model, data, load_config()):
        return
    if not (data / "dataset.json").exists():
        from engine.sim.simulate import simulate

        print(f"simulating the default world into {data} ...", flush=True)
        simulate(data, seed=0)
    print(f"training {model} ...", flush=True)
    train(data, model, progress=sys.stderr.isatty())


def time_training(data: Path, out: Path) -> None:
    from engine.training.train import train

    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    t0 = time.perf_counter()
    manifest = train(data, out, progress=False)
    wall = time.perf_counter() - t0
    print(
        f"training on {data.name}: {wall:.1f} s wall on {len(os.sched_getaffinity(0))} cores "
        f"(windows {manifest['metrics']['timings']}); wrote model {manifest['model_version']}"
    )


_FIRST_PAGE = """
import sys, time
t0 = time.perf_counter()
import engine
eng = engine.load(sys.argv[1])
t1 = time.perf_counter()
eng.page(str(eng.history.user_ids[0]), "tv").to_json()
t2 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f}")
"""


def cold_start(model: Path) -> list[tuple[float, float]]:
    """(import + load s, first page s) of fresh processes, like `rowrank page`: the first with
    an empty numba cache (the compiled loops are built and cached), then two with it."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = []
        for _ in range(3):
            cmd = [sys.executable, "-c", _FIRST_PAGE, str(model)]
            got = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            load, first = (float(x) for x in got.stdout.split())
            out.append((load, first))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(WORLD))
    p.add_argument(
        "--model",
        help="a trained model to time as it is (default: the page quality bench's model of the "
        "default world, trained here when missing or not what `rowrank train` writes now)",
    )
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--row-length", type=int, default=100)
    p.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="also time training (both cores)")
    args = p.parse_args(argv)
    data = Path(args.data)
    model = Path(args.model) if args.model else QUALITY_WORK / "models" / "full"
    if not args.model:
        ensure_model(data, model)
    if args.train:
        time_training(data, Path(str(model) + "-timing"))
    starts = cold_start(model)
    print(
        "fresh process (import + load s / first page s): empty numba cache "
        f"{starts[0][0]:.2f} / {starts[0][1]:.2f}; cache filled "
        + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in starts[1:])
    )
    os.sched_setaffinity(0, {args.cpu})
    eng = engine.load(model)
    title_trees = Forest(eng.model.title.model_to_string())
    print(
        f"model {eng.model_version}: title model {eng.model.title.num_trees()} trees "
        f"({title_trees.n_plain:,} of {title_trees.n_splits:,} split nodes compare plainly), "
        f"row model {eng.model.row.num_trees()} trees; one core (cpu {args.cpu}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    reqs = requests(eng, args.requests, args.seed)
    eng.page_for(reqs[0])
    gc.collect()  # the load's own garbage first: then time a collection with nothing to free
    t0 = time.perf_counter()
    gc.collect()
    print(
        f"after load and a page: {len(gc.get_objects()):,} objects tracked by the garbage "
        f"collector, a full collection {(time.perf_counter() - t0) * 1e3:.0f} ms (what "
        "freezing them, as time_pages does after its warm-up, spares each full collection)"
    )
    report("default config rows", *time_pages(eng, reqs))
    st = stages(eng, reqs[:200])
    print("stages (median ms, default rows): " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))
    long = with_row_length(eng, args.row_length, model)
    report(f"rows of {args.row_length} titles", *time_pages(long, reqs))
    st = stages(long, reqs[:200])
    print(
        f"stages (median ms, rows of {args.row_length}): "
        + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
    )
    tm, tn = title_model_only(long, reqs[:100])
    print(
        f"title model predict alone: {tm:.2f} ms for {tn:.0f} pairs ({tm / tn * 1e3:.1f} us/pair)"
    )
    lib, direct, n_rows = row_model_calls(eng, reqs[:100])
    print(
        f"row model, one call on a page's {n_rows:.0f} rows (median): "
        f"Booster.predict {lib:.0f} us, compiled trees {direct:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
