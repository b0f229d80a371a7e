"""rowrank against library baselines on real data: two splits, one table each (docs/realdata.md).

    rowrank bench --realdata --data DIR [--split member|global|both] [--validation]
                  [--tune-budget SECONDS] [--overlay FILE] [--members N] [--seed N]
                  [--retrain] [--no-rowrank] [--out WORK]
    .venv/bin/python bench/bench_realdata.py [the same options; --data defaults to the
                  shared ml-latest-small, --work to bench/results/realdata]

Per split (engine/evaluation/realdata.py: per-member leave-last-5-out, or the global temporal
cut at the last 10% of plays):
1. every baseline's grid is scored on the VALIDATION split (carved from the test split's training
   data only) and its best point chosen there;
2. the scored split (the test split, or with --validation the validation split itself, so a
   tuning loop never sees the test data) gets each baseline's lists with the chosen keys, and a
   rowrank model trained on the split's training data (`rowrank train` defaults, or the built-in
   config with --overlay FILE deep-merged into it) gives one web page per member at the
   member's request time;
3. the table: each baseline, each rowrank ranker's first row in its own order, the Top Picks row
   as the page shows it, with NDCG@10, Recall@10 and NDCG@10 ÷ the best baseline (paired
   bootstrap 95% interval over members); the page's N2DCG ÷ each baseline's list poured into the
   same page shape; the recall of the union of rowrank's candidate rows.

Models are cached under WORK/models keyed by (split, config, data fingerprint, rowrank's source):
a repeated run only scores. Results: WORK/<split>-<validation|test>-<overlay stem or default>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from tqdm import tqdm

import engine
from engine.config import EngineConfig, load_config
from engine.data.dataset import Dataset, load_dataset, save_dataset
from engine.errors import BadRequestError
from engine.evaluation.metrics import Interval, bootstrap_ci, bootstrap_ratio_ci
from engine.evaluation.realdata import (
    BASELINES,
    LIST_LENGTH,
    NEEDS_IMPLICIT,
    Baseline,
    K,
    RealSplit,
    Tuned,
    implicit_available,
    list_scores,
    make_realdata_split,
    poured_n2dcg,
    score_rowrank,
    tune,
    union_recall,
)
from engine.evaluation.split import machine
from engine.training.train import data_fingerprint, train, trained_with

ROOT = Path(__file__).resolve().parents[2]  # the directory holding engine/ and rankers/
T = TypeVar("T")


def bar(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on stderr when it is a terminal (none in CI logs)."""
    return tqdm(items, desc=desc, total=total, disable=None, leave=False)


# ----- data and models ---------------------------------------------------------------------------


def imported(src: Path, work: Path) -> Path:
    """SRC as a rowrank dataset under WORK/data (`rowrank import movielens`), once; a source that
    is already a rowrank dataset directory is used as it is."""
    if (src / "dataset.json").exists():
        return src
    from engine.data.movielens import import_movielens

    out = work / "data" / src.name
    if not (out / "dataset.json").exists():
        import_movielens(src, out)
    return out


def config(overlay: str | None) -> EngineConfig:
    """The built-in config with the overlay layered over it (as `rowrank train --config`)."""
    return load_config(overlay)


def training_data(split: RealSplit, data: Path, work: Path) -> Path:
    """The directory `rowrank train` reads for `split`: the dataset itself for a global cut
    (trained with --until), or the split's training plays written once under WORK/data (a
    per-member split holds out plays that no time cut can express)."""
    if split.kind == "global":
        return data
    key = hashlib.sha256(f"{split.name}|{data_fingerprint(data)}".encode()).hexdigest()[:12]
    out = work / "data" / f"{split.name}-{key}"
    if not (out / "dataset.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        save_dataset(split.train, tmp)
        tmp.replace(out)
    return out


def code_fingerprint() -> bytes:
    """sha256 over rowrank's own source (engine/ and rankers/, .py and .toml), so a model
    cached before a code change is not measured as if it came from the new code (helpers edit
    the engine while benchmarks run; trained_with checks only the format and version)."""
    h = hashlib.sha256()
    for pkg in ("engine", "rankers"):
        for f in sorted([*(ROOT / pkg).rglob("*.py"), *(ROOT / pkg).rglob("*.toml")]):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.digest()


def trained(
    split: RealSplit, data: Path, cfg: EngineConfig, work: Path, args: argparse.Namespace
) -> Any:
    """The rowrank model of `split` and `cfg`, trained unless WORK/models holds it already.
    With --tune-budget, `rowrank train` chooses ranker keys inside the split's training data."""
    src = training_data(split, data, work)
    doc = orjson.dumps(cfg.to_document(), option=orjson.OPT_SORT_KEYS)
    tuning = f"|tune {args.tune_budget} seed {args.seed}".encode()
    key = hashlib.sha256(doc + data_fingerprint(src).encode() + code_fingerprint() + tuning)
    out = work / "models" / f"{split.name}-{key.hexdigest()[:12]}"
    if args.retrain or not trained_with(out, src, cfg, split.until, args.tune_budget):
        t0 = time.perf_counter()
        train(
            src,
            out,
            engine_config=cfg,
            until=split.until,
            progress=sys.stderr.isatty(),
            tune_budget=args.tune_budget,
            seed=args.seed,
        )
        print(f"  trained {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return engine.load(out)


def baseline_lists(
    b: Baseline, validation: RealSplit, scored: RealSplit, data: Path, args: argparse.Namespace
) -> tuple[Tuned, list[np.ndarray]]:
    """`b` tuned on `validation`, then its lists for `scored`. Both are kept under
    WORK/baselines (the grid's scores as JSON keyed by the validation split; the lists as an
    int32 .npy, -1 padded, keyed by the scored split and the chosen keys; each key also names
    the data, the seed, the member sample and the protocol's source), since neither depends on
    rowrank's config: a tuning loop over overlays fits the baselines once."""
    src = hashlib.sha256((ROOT / "engine" / "evaluation" / "realdata.py").read_bytes())
    common = [data_fingerprint(data), args.seed, args.members, b.name, src.hexdigest()]
    cache = Path(args.work) / "baselines"
    cache.mkdir(parents=True, exist_ok=True)
    grid_key = _key([validation.name, *common, [dict(p) for p in b.grid]])
    grid_file = cache / f"{validation.name}-{b.name}-grid-{grid_key}.json"
    if grid_file.exists() and not args.retrain:
        doc = orjson.loads(grid_file.read_bytes())
        t = Tuned(b.name, doc["params"], tuple((p, v) for p, v in doc["grid"]))
    else:
        t = tune(b, validation, np.random.default_rng([args.seed, 3]), _tune_bar(b.name))
        grid_file.write_bytes(orjson.dumps({"params": t.params, "grid": t.grid}))
    list_file = cache / f"{scored.name}-{b.name}-lists-{_key([scored.name, *common, t.params])}.npy"
    if list_file.exists() and not args.retrain:
        grid = np.load(list_file, allow_pickle=False)
        return t, [r[r >= 0].astype(np.int64) for r in grid]
    lists = b.rank(scored, t.params, np.random.default_rng([args.seed, 4]))
    padded = np.full((len(lists), LIST_LENGTH), -1, dtype=np.int32)
    for i, r in enumerate(lists):
        padded[i, : len(r)] = r[:LIST_LENGTH]
    np.save(list_file, padded, allow_pickle=False)
    return t, lists


def _key(doc: Any) -> str:
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()[:16]


def _tune_bar(name: str) -> Any:
    return lambda grid: bar(grid, f"tune {name}")


# ----- one split ---------------------------------------------------------------------------------


def run_split(kind: str, args: argparse.Namespace, data: Path, ds: Dataset) -> dict[str, Any]:
    work = Path(args.work)
    rng = np.random.default_rng(args.seed)
    validation = make_realdata_split(ds, kind, validation=True)
    scored = validation if args.validation else make_realdata_split(ds, kind, validation=False)
    if args.members:
        validation = validation.subsample(args.members, np.random.default_rng([args.seed, 1]))
        scored = (
            validation
            if args.validation
            else scored.subsample(args.members, np.random.default_rng([args.seed, 2]))
        )
    print(f"\n== {scored.name}  (tuned on {validation.name})", flush=True)
    print(f"  {validation.describe()}\n  {scored.describe()}", flush=True)
    have_implicit = implicit_available()
    lists: dict[str, list[np.ndarray]] = {}
    tuned: dict[str, Tuned] = {}
    skipped: dict[str, str] = {}
    for b in BASELINES:
        if b.name in NEEDS_IMPLICIT and not have_implicit:
            skipped[b.name] = "needs the optional `bench` extra (pip install -e '.[bench]')"
            continue
        t0 = time.perf_counter()
        tuned[b.name], lists[b.name] = baseline_lists(b, validation, scored, data, args)
        print(f"  {b.name}: tuned and ranked in {time.perf_counter() - t0:.0f} s", flush=True)
    base = {n: list_scores(v, scored.truth) for n, v in lists.items()}
    best = max(base, key=lambda n: float(base[n].ndcg.mean()))
    rows: list[dict[str, Any]] = []

    def add(name: str, what: str, values: list[np.ndarray]) -> None:
        s = list_scores(values, scored.truth)
        rows.append(
            {
                "list": name,
                "what": what,
                "ndcg10": bootstrap_ci(s.ndcg, rng).to_dict(),
                "recall10": bootstrap_ci(s.recall, rng).to_dict(),
                "ndcg10_vs_best": bootstrap_ratio_ci(s.ndcg, base[best].ndcg, rng).to_dict(),
            }
        )

    for b in BASELINES:
        if b.name in lists:
            add(b.name, f"{b.library} {_params(tuned[b.name].params)}", lists[b.name])
    out: dict[str, Any] = {
        "split": scored.name,
        "tuned_on": validation.name,
        "members": len(scored.users),
        "describe": {"validation": validation.describe(), "scored": scored.describe()},
        "best_baseline": best,
        "skipped_baselines": skipped,
        "tuning": {
            n: {"chosen": dict(t.params), "grid": [[dict(p), v] for p, v in t.grid]}
            for n, t in tuned.items()
        },
    }
    if not args.no_rowrank:
        t0 = time.perf_counter()
        eng = trained(scored, data, config(args.overlay), work, args)
        rr = score_rowrank(eng, scored, progress=lambda x: bar(x, f"pages {scored.name}"))
        out["rowrank_seconds"] = round(time.perf_counter() - t0, 1)
        for name, values in rr.first_rows.items():
            add(f"rowrank {name}", "first row, ranker order", values)
        add("rowrank Top Picks as shown", "the Top Picks row on the page", rr.top_picks)
        layout = rr.layout
        assert layout is not None

        def by_row(parts: list[np.ndarray]) -> np.ndarray:
            """Members x the layout's rows: each row's share of the page's N2DCG."""
            grid = np.zeros((len(parts), layout.rows))
            for i, p in enumerate(parts):
                grid[i, : len(p)] = p[: layout.rows]
            return grid

        page_rows = by_row(rr.page_n2dcg)
        page = page_rows.sum(axis=1)
        pages: list[dict[str, Any]] = []
        for n, values in lists.items():
            poured_rows = by_row(
                [
                    poured_n2dcg(v, t, lengths, layout)
                    for v, t, lengths in zip(values, scored.truth, rr.row_lengths, strict=True)
                ]
            )
            poured = poured_rows.sum(axis=1)
            dealt = np.array(
                [
                    poured_n2dcg(v, t, lengths, layout, dealt=True).sum()
                    for v, t, lengths in zip(values, scored.truth, rr.row_lengths, strict=True)
                ]
            )
            pages.append(
                {
                    "baseline": n,
                    "poured_n2dcg": float(poured.mean()),
                    "page_n2dcg": float(page.mean()),
                    "page_vs_poured": bootstrap_ratio_ci(page, poured, rng).to_dict(),
                    "dealt_n2dcg": float(dealt.mean()),
                    "page_vs_dealt": bootstrap_ratio_ci(page, dealt, rng).to_dict(),
                    # where on the page it gains or loses: mean N2DCG share of each row
                    "by_row": {
                        "page": page_rows.mean(axis=0).round(5).tolist(),
                        "poured": poured_rows.mean(axis=0).round(5).tolist(),
                    },
                }
            )
        out["page"] = pages
        # per member, for paired comparisons of two runs (bench/compare_realdata.py)
        out["page_by_member"] = {
            "users": [str(scored.history.user_ids[u]) for u in scored.users.tolist()],
            "n2dcg": page.round(6).tolist(),
        }
        out["pages_without_top_picks"] = rr.pages_without_top_picks
        ur = union_recall(rr.union, scored.truth)
        out["union"] = {
            "recall": bootstrap_ci(ur, rng).to_dict(),
            "mean_titles": float(np.mean([len(u) for u in rr.union])),
        }
    out["rows"] = rows
    return out


def _params(p: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()) if p else "(no keys)"


# ----- the tables --------------------------------------------------------------------------------


def _iv(d: dict[str, Any], digits: int = 3) -> str:
    v, lo, hi = (float("nan") if d[k] is None else float(d[k]) for k in ("value", "lo", "hi"))
    i = Interval(v, lo, hi, int(d["n"]))
    return f"{i.value:.{digits}f} [{i.lo:.{digits}f}, {i.hi:.{digits}f}]"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"### {r['split']} ({r['members']} members; baselines tuned on {r['tuned_on']})",
        "",
        f"| list | library / keys | NDCG@{K} | Recall@{K} "
        f"| NDCG@{K} ÷ {r['best_baseline']} [95%] |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['list']} | {row['what']} | {row['ndcg10']['value']:.4f} | "
            f"{row['recall10']['value']:.4f} | {_iv(row['ndcg10_vs_best'])} |"
        )
    for n, why in r["skipped_baselines"].items():
        lines.append(f"| {n} | skipped: {why} | | | |")
    if "page" in r:
        lines += [
            "",
            "| page N2DCG against | baseline poured | page | page ÷ poured [95%] "
            "| baseline dealt | page ÷ dealt [95%] |",
            "|---|---|---|---|---|---|",
        ]
        for p in r["page"]:
            dealt = (
                f"{p['dealt_n2dcg']:.4f} | {_iv(p['page_vs_dealt'])}" if "dealt_n2dcg" in p else "|"
            )
            lines.append(
                f"| {p['baseline']} | {p['poured_n2dcg']:.4f} | {p['page_n2dcg']:.4f} | "
                f"{_iv(p['page_vs_poured'])} | {dealt} |"
            )
        best = next(p for p in r["page"] if p["baseline"] == r["best_baseline"])
        lines += [
            "",
            f"N2DCG by page row, page / {r['best_baseline']} poured (mean share of each row): "
            + ", ".join(
                f"{i + 1}: {a:.4f}/{b:.4f}"
                for i, (a, b) in enumerate(
                    zip(best["by_row"]["page"], best["by_row"]["poured"], strict=True)
                )
                if a or b
            )
            + ".",
        ]
        u = r["union"]
        lines += [
            "",
            f"Union of rowrank's candidate rows ({u['mean_titles']:.0f} titles per member on "
            f"average): recall {_iv(u['recall'])}. Pages without a Top Picks row: "
            f"{r['pages_without_top_picks']}.",
        ]
    return "\n".join(lines)


def tuning_text(r: dict[str, Any]) -> str:
    lines = [f"tuning on {r['tuned_on']} (mean NDCG@{K}; * = chosen):"]
    for n, t in r["tuning"].items():
        for p, v in t["grid"]:
            mark = "*" if p == t["chosen"] else " "
            lines.append(f"  {mark} {n:<12} {_params(p):<60} {v:.4f}")
    return "\n".join(lines)


# ----- main --------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser, *, data: str | None, work: str) -> None:
    """The protocol's options; `data` and `work` are the defaults of --data and --work."""
    p.add_argument("--data", default=data, help="MovieLens release or rowrank dataset directory")
    p.add_argument("--work", default=work, help="models, caches and results (default %(default)s)")
    add_protocol_arguments(p)
    p.add_argument("--seed", type=int, default=0)


def add_protocol_arguments(p: Any) -> None:
    """The options `rowrank bench --realdata` adds to `rowrank bench`'s own."""
    p.add_argument("--split", choices=("member", "global", "both"), default="both")
    p.add_argument(
        "--validation",
        action="store_true",
        help="score the validation split (for tuning); without it the test split is scored",
    )
    p.add_argument("--overlay", help="TOML layered over the built-in engine config")
    p.add_argument("--members", type=int, default=0, help="score a seeded sample of N members")
    p.add_argument("--retrain", action="store_true", help="retrain cached rowrank models")
    p.add_argument("--no-rowrank", action="store_true", help="baselines only")
    p.add_argument(
        "--tune-budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="rowrank train's tuning budget for each model (default 0: the config's keys)",
    )


def main(argv: list[str] | None = None, *, data: str | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, data=data, work=str(Path("bench") / "results" / "realdata"))
    return run(p.parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    if args.data is None:
        raise BadRequestError("the real-data protocol needs --data DIR: a MovieLens release")
    src = Path(args.data)
    if not src.is_dir():
        raise BadRequestError(f"--data {src}: no such directory (a MovieLens release)")
    work = Path(args.work)
    data = imported(src, work)
    ds = load_dataset(data)
    kinds = ("member", "global") if args.split == "both" else (args.split,)
    mode = "validation" if args.validation else "test"
    name = Path(args.overlay).stem if args.overlay else "default"
    for kind in kinds:
        t0 = time.perf_counter()
        r = run_split(kind, args, data, ds)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        r["command"] = " ".join(["rowrank bench --realdata", *(argv or sys.argv[1:])])
        r["overlay"] = args.overlay
        r["measured_on"] = machine()
        print(tuning_text(r))
        print()
        print(markdown(r))
        out = work / f"{kind}-{mode}-{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
        print(f"\n{kind}: {r['seconds']:.0f} s -> {out}", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0
