"""`rowrank bench`: ranker and page-model variants side by side, offline and in a simulated A/B.

A variants file (TOML, docs/benchmark.md) names a baseline and other variants; each variant is
an engine config: the default one (or a file) with overrides of its `rankers`, `assembly`,
`layouts` and `page` tables. The run:

1. Data: `--data DIR`, or a world simulated into REPORT_DIR/world. A dataset with a
   `ground_truth/` directory (written by `rowrank simulate`) is a simulated world and unlocks the
   ground-truth measures.
2. Split: one temporal cut (engine/evaluation/split.py): every variant is trained with `rowrank
train`'s
   code on data strictly before the cut; the test members and their ground truth (titles first
   played after the cut) come from after it. Nothing is tuned on the test period: the trainer's
   own model selection uses windows before the cut.
3. Offline: each test member's page, requested at the time and on the device of their first
   play after the cut, is scored with the row and page metrics of engine.evaluation.metrics.
4. Simulated A/B (simulated worlds only): members split between variants by a stable hash;
   each has sessions over a few days at hours and devices drawn from the world, sees their
   variant's page and responds through the ground-truth browsing model; take-rate, watch time
   and the ratio to the oracle page are compared with bootstrap intervals.
5. Team-draft interleaving (simulated worlds): inside each row of the baseline page, the
   page model's title order against the ranker's own order, credited by the simulated plays;
   an exact binomial test of the wins.
6. Ablation: each ranker instance of the baseline silenced in turn (its rows removed at serving
   time, the trained models kept): what its rows add given the others.
7. Significance marks: every comparison above, corrected together for their number
   (Benjamini-Hochberg, `correct_for_multiple_comparisons`).

Randomness: one seed; each purpose draws from its own `np.random.default_rng([seed, purpose])`
so adding a variant does not change another's draws.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from engine.candidates import CandidateRow, Ranker
from engine.config import EngineConfig, deep_merge, load_config, parse_config
from engine.data.columns import DEVICES, Col
from engine.data.dataset import Dataset, load_dataset, to_utc
from engine.data.history import FINISHED_PROGRESS, History
from engine.errors import ConfigError
from engine.evaluation.metrics import (
    Comparison,
    bootstrap_ci,
    bootstrap_ratio_ci,
    cascade_slot_probs,
    coverage,
    duplicate_rate,
    effective_catalog_size,
    first_appearances,
    genre_diversity,
    list_metrics,
    n2dcg,
    page_grid,
    paired_comparison,
    ratio_comparison,
    visible,
    visible_recall,
)
from engine.evaluation.split import Split, machine, make_split, quantile_cut
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout
from engine.sim.world import GroundTruth, WorldParams

if TYPE_CHECKING:  # the pipeline (LightGBM, the page model) loads only when a run needs it
    from engine.pipeline import Engine

GROUND_TRUTH_DIR = "ground_truth"
# Purposes of the seeded generators (np.random.default_rng([seed, purpose])).
_P_SAMPLE, _P_SHUFFLE, _P_AB, _P_BOOT, _P_LEAVE, _P_WATCH, _P_TDI = range(7)


# ----- the variants file -----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldSpec(_Strict):
    """The world simulated when `--data` is not given (`rowrank simulate` arguments)."""

    users: int = Field(default=1000, ge=10)
    titles: int = Field(default=600, ge=20)
    days: int = Field(default=42, ge=14)
    seed: int | None = Field(default=None, description="default: the bench seed")


class SplitSpec(_Strict):
    """The temporal cut: the time leaving `after_fraction` of the plays after it (bench/
    protocol.py quantile_cut) when set, else `test_days` before the dataset's clock."""

    test_days: float = Field(default=7.0, gt=0)
    after_fraction: float | None = Field(default=None, gt=0, lt=1)


class EvalSpec(_Strict):
    users: int = Field(default=400, ge=1, description="test members evaluated (sampled if more)")
    k: int = Field(default=10, ge=1, description="cut-off of the row metrics")
    attraction: float = Field(
        default=0.5, gt=0, le=1, description="cascade play probability of a relevant title"
    )
    n_boot: int = Field(default=1000, ge=100, description="bootstrap resamples per interval")


class ABSpec(_Strict):
    enabled: bool = True
    users: int = Field(
        default=600, ge=2, description="members in the experiment, split across variants"
    )
    days: int = Field(default=3, ge=1, description="experiment days, starting at the cut")
    sessions_per_day: float = Field(
        default=1.5, gt=0, description="mean sessions per member per day"
    )
    name: str = Field(default="rowrank-ab", description="salt of the assignment hash")


class InterleavingSpec(_Strict):
    enabled: bool = True
    sessions: int = Field(
        default=1500, ge=1, description="sessions (sampled from the A/B schedule)"
    )


class AblationSpec(_Strict):
    enabled: bool = True
    variant: str | None = Field(
        default=None, description="the variant ablated (default: the baseline)"
    )
    users: int | None = Field(
        default=None, ge=1, description="offline members used (default: all of them)"
    )


class BenchSpec(_Strict):
    """The `[bench]` table."""

    name: str = "bench"
    description: str = ""
    seed: int = 0
    world: WorldSpec = Field(default_factory=lambda: WorldSpec())
    split: SplitSpec = Field(default_factory=lambda: SplitSpec())
    eval: EvalSpec = Field(default_factory=lambda: EvalSpec())
    ab: ABSpec = Field(default_factory=lambda: ABSpec())
    interleaving: InterleavingSpec = Field(default_factory=lambda: InterleavingSpec())
    ablation: AblationSpec = Field(default_factory=lambda: AblationSpec())


class VariantSpec(_Strict):
    """One variant (or `[defaults]`, applied to every variant first)."""

    description: str = ""
    config: str | None = Field(
        default=None, description="engine config TOML, relative to this file"
    )
    remove_rankers: list[str] = Field(default_factory=list)
    # Bench-only control: rows and the titles inside each row put in a seeded random order after
    # the engine built the page. A floor every real variant should beat.
    shuffle: bool = False
    rankers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    assembly: dict[str, Any] = Field(default_factory=dict)
    layouts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    page: dict[str, Any] = Field(default_factory=dict)


class VariantsFile(_Strict):
    baseline: str
    bench: BenchSpec = Field(default_factory=lambda: BenchSpec())
    defaults: VariantSpec = Field(default_factory=lambda: VariantSpec())
    variants: dict[str, VariantSpec]


@dataclass(frozen=True)
class Variant:
    """A resolved variant: its validated engine config and the bench-only switches."""

    name: str
    description: str
    config: EngineConfig
    shuffle: bool

    @property
    def config_key(self) -> bytes:
        """Equal keys train identical models: the run trains each distinct config once."""
        return orjson.dumps(self.config.to_document(), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Plan:
    """A parsed variants file: the settings and the variants, the baseline first."""

    path: Path
    spec: BenchSpec
    baseline: str
    variants: dict[str, Variant]


def load_variants(path: str | Path) -> Plan:
    """Read and validate a variants file; ConfigError names the variant and key at fault."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read variants file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        vf = VariantsFile.model_validate(doc)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{path}: unknown key {key!r}")
            else:
                lines.append(f"{path}: {key}: {err['msg']}")
        raise ConfigError(
            "\n".join(lines) + "\n(top level: baseline, [bench], [defaults], [variants.<name>])"
        ) from None
    if not vf.variants:
        raise ConfigError(f"{path}: no [variants.<name>] tables")
    if vf.baseline not in vf.variants:
        raise ConfigError(
            f"{path}: baseline {vf.baseline!r} is not a variant; variants: {', '.join(vf.variants)}"
        )
    ablated = vf.bench.ablation.variant
    if ablated is not None and ablated not in vf.variants:
        raise ConfigError(f"{path}: [bench.ablation] variant {ablated!r} is not a variant")
    names = [vf.baseline] + [n for n in vf.variants if n != vf.baseline]
    variants = {n: _resolve(n, vf.defaults, vf.variants[n], path) for n in names}
    return Plan(path, vf.bench, vf.baseline, variants)


def _resolve(name: str, defaults: VariantSpec, spec: VariantSpec, path: Path) -> Variant:
    where = f"{path}: [variants.{name}]"
    config_file = spec.config or defaults.config
    base = load_config(None if config_file is None else path.parent / config_file).to_document()
    for layer in (defaults, spec):
        for section in ("rankers", "assembly", "layouts", "page"):
            base[section] = deep_merge(base.get(section, {}), getattr(layer, section))
    for ranker in [*defaults.remove_rankers, *spec.remove_rankers]:
        if ranker not in base["rankers"]:
            raise ConfigError(f"{where}: remove_rankers names {ranker!r}, which is not configured")
        del base["rankers"][ranker]
        pinned = base.get("assembly", {}).get("pinned", [])
        base["assembly"]["pinned"] = [p for p in pinned if p != ranker]
    try:
        cfg = parse_config(base, source=where)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    _check_page_section(cfg, where)
    return Variant(name, spec.description, cfg, spec.shuffle or defaults.shuffle)


def _check_page_section(cfg: EngineConfig, where: str) -> None:
    from engine.request.scorers import PageModelConfig

    PageModelConfig.from_section(cfg.page, where)


# ----- data and split --------------------------------------------------------------------------


def prepare_data(
    spec: BenchSpec,
    data_dir: Path | None,
    out_dir: Path,
    seed: int,
    progress: bool,
) -> Path:
    """The dataset directory: `data_dir`, or a world simulated into out_dir/world (kept, and
    reused when a previous run simulated the same settings)."""
    if data_dir is not None:
        if (data_dir / "dataset.json").is_file():
            return data_dir
        if any((data_dir / f).is_file() for f in ("ratings.csv", "ratings.dat", "u.data")):
            # Raw MovieLens files: imported once into the report directory.
            from engine.data.movielens import import_movielens

            target = out_dir / "data"
            marker = target / "bench_source.json"
            source = {"movielens": str(data_dir.resolve())}
            if not (marker.is_file() and orjson.loads(marker.read_bytes()) == source):
                ds = import_movielens(data_dir, target)
                print(f"imported {ds.source} -> {target}", file=sys.stderr)
                marker.write_bytes(orjson.dumps(source))
            return target
        raise ConfigError(
            f"{data_dir} is neither a dataset directory (no dataset.json) nor MovieLens files "
            "(ratings.csv, ratings.dat or u.data)"
        )
    from engine.sim.simulate import simulate

    world_dir = out_dir / "world"
    w = spec.world
    settings = {"users": w.users, "titles": w.titles, "days": w.days, "seed": _world_seed(w, seed)}
    marker = world_dir / "bench_world.json"
    if marker.is_file() and orjson.loads(marker.read_bytes()) == settings:
        return world_dir
    summary = simulate(world_dir, progress=progress, **settings)  # type: ignore[arg-type]
    print(summary.describe(), file=sys.stderr)
    marker.write_bytes(orjson.dumps(settings))
    return world_dir


def _world_seed(w: WorldSpec, seed: int) -> int:
    return seed if w.seed is None else w.seed


def cut_time(ds: Dataset, spec: SplitSpec) -> datetime:
    if spec.after_fraction is not None:
        cut: datetime = quantile_cut(ds.plays, spec.after_fraction)
        return cut
    return to_utc(ds.clock) - timedelta(days=spec.test_days)


@dataclass(frozen=True)
class EvalRequest:
    """One offline test member: their page request and what they went on to play."""

    user: int  # History index
    ctx: RequestContext
    truth: np.ndarray  # History title indices


def stable_bucket(key: str, n: int) -> int:
    """A bucket in [0, n) from sha256 (stable across runs and machines, unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def eval_requests(
    ds: Dataset, split: Any, n_users: int, rng: np.random.Generator
) -> list[EvalRequest]:
    """Up to `n_users` test members (sampled), each asking for a page at the time and on the
    device of their first play after the cut (a device drawn by hash when the data has none)."""
    h: History = split.history
    lit = pl.lit(split.cutoff).dt.cast_time_unit("us")
    first = (
        ds.plays.filter(pl.col(Col.TS) >= lit)
        .sort(Col.TS, Col.TITLE_ID)
        .group_by(Col.USER_ID, maintain_order=True)
        .first()
        .select(Col.USER_ID, Col.TS, Col.DEVICE)
    )
    by_user = {u: (ts, d) for u, ts, d in first.iter_rows()}
    pick = np.arange(len(split.users))
    if len(pick) > n_users:
        pick = np.sort(rng.choice(len(pick), size=n_users, replace=False))
    out = []
    for i in pick.tolist():
        u = int(split.users[i])
        uid = str(h.user_ids[u])
        ts, device = by_user[uid]
        if device not in DEVICES:
            device = DEVICES[stable_bucket(f"device:{uid}", len(DEVICES))]
        country = str(h.user_country[u]) or None
        ctx = RequestContext(uid, device, to_utc(ts), country)
        out.append(EvalRequest(u, ctx, np.asarray(split.truth[i], dtype=np.int64)))
    return out


# ----- training ---------------------------------------------------------------------------------


def train_variants(
    plan: Plan, data_dir: Path, cut: datetime, model_root: Path, progress: bool
) -> tuple[dict[str, Path], dict[str, float]]:
    """Train every distinct config once (variants differing only in bench switches share)."""
    from engine.training.train import train

    dirs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    trained: dict[bytes, tuple[Path, float]] = {}
    bar = tqdm(plan.variants.values(), desc="train variants", disable=not progress, leave=False)
    for v in bar:
        bar.set_postfix_str(v.name)
        key = v.config_key
        if key not in trained:
            t0 = time.perf_counter()
            train(data_dir, model_root / v.name, until=cut, progress=False, engine_config=v.config)
            trained[key] = (model_root / v.name, time.perf_counter() - t0)
        dirs[v.name], seconds[v.name] = trained[key]
    return dirs, seconds


# ----- serving pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A page as the bench sees it: title ids per row, History indices on a grid."""

    title_ids: list[list[str]]
    grid: np.ndarray  # (R, C) int64, -1 padded
    kinds: tuple[str, ...]
    rankers: tuple[str, ...]
    seconds: float  # the engine's wall time for the page


class _Silenced:
    """A ranker whose rows are withheld (ablation): everything else, including the PVR scores
    the page model reads as features, still comes from the wrapped ranker."""

    def __init__(self, inner: Ranker) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        return []


def silence(engine: Engine, ranker: str) -> Engine:
    """A copy of `engine` in which `ranker` proposes nothing."""
    from engine.pipeline import Engine as _Engine

    rankers: dict[str, Any] = dict(engine.rankers)
    rankers[ranker] = _Silenced(engine.rankers[ranker])
    out = _Engine(
        config=engine.config,
        page_config=engine.page_config,
        history=engine.history,
        rankers=rankers,
        store=engine.store,
        model=engine.model,
        model_version=engine.model_version,
        manifest=engine.manifest,
    )
    return out


class PageSource:
    """Pages of one variant: its engine, plus the bench-only shuffle."""

    def __init__(
        self,
        engine: Engine,
        title_index: Mapping[str, int],
        shuffle_rng: np.random.Generator | None,
    ) -> None:
        self.engine = engine
        self.title_index = title_index
        self.shuffle_rng = shuffle_rng

    def layout(self, device: str) -> DeviceLayout:
        layout: DeviceLayout = self.engine.layout(device)
        return layout

    def page(self, ctx: RequestContext) -> Shown:
        t0 = time.perf_counter()
        page = self.engine.page_for(ctx)
        seconds = time.perf_counter() - t0
        ids = [[item.title_id for item in row.items] for row in page.rows]
        kinds = [row.kind for row in page.rows]
        rankers = [row.ranker for row in page.rows]
        if self.shuffle_rng is not None and ids:
            rng = self.shuffle_rng
            order = rng.permutation(len(ids)).tolist()
            ids = [
                [r[j] for j in rng.permutation(len(r)).tolist()] for r in (ids[i] for i in order)
            ]
            kinds = [kinds[i] for i in order]
            rankers = [rankers[i] for i in order]
        get = self.title_index.get
        grid = page_grid([np.fromiter((get(t, -1) for t in r), np.int64, len(r)) for r in ids])
        return Shown(ids, grid, tuple(kinds), tuple(rankers), seconds)


# ----- offline evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    higher_is_better: bool
    description: str


def offline_metric_info(k: int, simulated: bool) -> list[MetricInfo]:
    """The per-member offline metrics, in table order."""
    out = [
        MetricInfo("n2dcg", "N2DCG", True, "2-D NDCG of the whole page, discount log2(row+col)"),
        MetricInfo("visible_recall", "Visible recall", True, "recall inside the visible grid"),
        MetricInfo(
            "expected_plays", "Expected plays", True, "P(play) under the row-by-row cascade"
        ),
        MetricInfo(f"Recall@{k}", f"Row Recall@{k}", True, "mean over the page's rows"),
        MetricInfo(f"NDCG@{k}", f"Row NDCG@{k}", True, "mean over the page's rows"),
        MetricInfo(f"MAP@{k}", f"Row MAP@{k}", True, "mean over the page's rows"),
        MetricInfo(f"HitRate@{k}", f"Row HitRate@{k}", True, "mean over the page's rows"),
        MetricInfo("duplicate_rate", "Duplicate rate", False, "1 - distinct / filled slots"),
        MetricInfo(
            "genre_diversity", "Genre diversity", True, "genres among visible titles / genres"
        ),
        MetricInfo("latency_ms", "Latency ms", False, "engine wall time per page"),
    ]
    if simulated:
        out.insert(
            3,
            MetricInfo(
                "true_take_rate",
                "True take-rate",
                True,
                "ground-truth P(play) of the page in the member's context",
            ),
        )
    return out


@dataclass
class OfflineResult:
    """Per-member values of one variant on the offline requests (aligned with them)."""

    values: dict[str, np.ndarray]
    per_kind: dict[str, dict[str, list[tuple[int, float]]]]  # kind -> metric -> (member, value)
    slot_probs: np.ndarray  # (max rows, max cols) mean cascade play probability per slot
    exposures: np.ndarray  # visible exposures per title
    shown: np.ndarray  # bool per title: on any page
    oracle: np.ndarray | None  # ground-truth take-rate of the oracle page per member
    pages: list[Shown] = field(default_factory=list)


def _cascade_params(device: str) -> tuple[float, float]:
    p = WorldParams()
    return float(p.col_continue[DEVICES.index(device)]), float(p.row_stop)


class _Scores:
    """Accumulates one variant's offline metrics, request by request."""

    def __init__(self, names: Sequence[str], n_titles: int, n_requests: int, k: int) -> None:
        self.k = k
        self.vals: dict[str, list[float]] = {n: [] for n in names}
        self.per_kind: dict[str, dict[str, list[tuple[int, float]]]] = {}
        self.max_r = max(lay.rows for lay in DEFAULT_LAYOUTS.values())
        self.max_c = max(lay.titles_per_row for lay in DEFAULT_LAYOUTS.values())
        self.slot = np.zeros((self.max_r, self.max_c))
        self.exposures = np.zeros(n_titles)
        self.shown = np.zeros(n_titles, dtype=bool)
        self.pages: list[Shown] = []
        self.n_requests = n_requests

    def add(
        self,
        i: int,
        req: EvalRequest,
        page: Shown,
        layout: DeviceLayout,
        spec: EvalSpec,
        title_genres: np.ndarray,
        gt: GroundTruth | None,
    ) -> None:
        k, vals = self.k, self.vals
        grid, truth = page.grid, req.truth
        beta, stop = _cascade_params(req.ctx.device)
        probs = cascade_slot_probs(
            grid, truth, attraction=spec.attraction, col_continue=beta, row_stop=stop
        )
        vals["n2dcg"].append(n2dcg(grid, truth, layout))
        vals["visible_recall"].append(visible_recall(grid, truth, layout))
        vals["expected_plays"].append(float(probs.sum()))
        r, c = min(probs.shape[0], self.max_r), min(probs.shape[1], self.max_c)
        self.slot[:r, :c] += probs[:r, :c]
        row_vals: dict[str, list[float]] = {}
        for row_titles, kind in zip(page.grid, page.kinds, strict=True):
            got = list_metrics(row_titles[row_titles >= 0], truth, k)
            for m, v in got.items():
                row_vals.setdefault(m, []).append(v)
                self.per_kind.setdefault(kind, {}).setdefault(m, []).append((i, v))
        for m in (f"Recall@{k}", f"NDCG@{k}", f"MAP@{k}", f"HitRate@{k}"):
            vals[m].append(float(np.mean(row_vals[m])) if m in row_vals else 0.0)
        vals["duplicate_rate"].append(duplicate_rate(grid))
        vis = visible(grid, layout)
        vals["genre_diversity"].append(genre_diversity(vis, title_genres))
        vals["latency_ms"].append(page.seconds * 1000.0)
        np.add.at(self.exposures, vis[first_appearances(vis) & (vis >= 0)], 1.0)
        self.shown[grid[grid >= 0]] = True
        if gt is not None:
            vals["true_take_rate"].append(
                gt.expected_plays(req.ctx.user_id, req.ctx, page.title_ids)
            )

    def result(self, oracle: np.ndarray | None) -> OfflineResult:
        return OfflineResult(
            values={m: np.asarray(v, dtype=np.float64) for m, v in self.vals.items()},
            per_kind=self.per_kind,
            slot_probs=self.slot / max(self.n_requests, 1),
            exposures=self.exposures,
            shown=self.shown,
            oracle=oracle,
            pages=self.pages,
        )


def evaluate_offline(
    sources: Mapping[str, PageSource],
    requests: Sequence[EvalRequest],
    history: History,
    spec: EvalSpec,
    gt: GroundTruth | None,
    *,
    progress: bool,
    desc: str,
    keep_pages: Sequence[str] = (),
    oracle: bool = True,
) -> dict[str, OfflineResult]:
    """Build every member's page with every source and score it (module doc).

    The variants take turns request by request, in an order rotating with the request, so a
    machine that slows down or speeds up during the run shifts every variant's latency alike."""
    names = [m.key for m in offline_metric_info(spec.k, gt is not None)]
    order = list(sources)
    scores = {n: _Scores(names, history.n_titles, len(requests), spec.k) for n in order}
    best = np.zeros(len(requests)) if gt is not None and oracle else None
    for i, req in enumerate(tqdm(requests, desc=desc, disable=not progress, leave=False)):
        turn = order[i % len(order) :] + order[: i % len(order)]
        for name in turn:
            src = sources[name]
            page = src.page(req.ctx)
            layout = src.layout(req.ctx.device)
            scores[name].add(i, req, page, layout, spec, history.title_genres, gt)
            if name in keep_pages:
                scores[name].pages.append(page)
        if best is not None:
            assert gt is not None
            ctx = req.ctx
            page_ids = gt.oracle_page(ctx.user_id, ctx, DEFAULT_LAYOUTS[ctx.device])
            best[i] = gt.expected_plays(ctx.user_id, ctx, page_ids)
    return {n: scores[n].result(best) for n in order}


def summarize_offline(
    results: Mapping[str, OfflineResult],
    requests: Sequence[EvalRequest],
    baseline: str,
    history: History,
    spec: EvalSpec,
    simulated: bool,
    seed: int,
) -> dict[str, Any]:
    """Intervals, paired comparisons with the baseline, per device, per row kind, positions."""
    infos = offline_metric_info(spec.k, simulated)
    boot = np.random.default_rng([seed, _P_BOOT, 0])
    base = results[baseline]
    devices = np.array([r.ctx.device for r in requests])
    out: dict[str, Any] = {
        "metrics": [
            {
                "key": m.key,
                "label": m.label,
                "higher_is_better": m.higher_is_better,
                "description": m.description,
            }
            for m in infos
        ],
        "members": len(requests),
        "members_per_device": {d: int((devices == d).sum()) for d in DEVICES},
        "results": {},
        "vs_baseline": {},
        "per_device": {},
        "per_kind": {},
        "positions": {},
        "catalog": {},
        "latency": {},
    }
    for name, res in results.items():
        out["results"][name] = {
            m.key: bootstrap_ci(res.values[m.key], boot, n_boot=spec.n_boot).to_dict()
            for m in infos
        }
        if res.oracle is not None:
            tr = res.values["true_take_rate"]
            out["results"][name]["oracle_ratio"] = bootstrap_ratio_ci(
                tr, res.oracle, boot, n_boot=spec.n_boot
            ).to_dict()
        if name != baseline:
            out["vs_baseline"][name] = {
                m.key: _cmp(res.values[m.key], base.values[m.key], boot, spec).to_dict()
                for m in infos
            }
        out["per_device"][name] = {
            d: {
                m.key: bootstrap_ci(
                    res.values[m.key][devices == d], boot, n_boot=spec.n_boot
                ).to_dict()
                for m in infos
            }
            for d in DEVICES
            if (devices == d).any()
        }
        out["per_kind"][name] = {
            kind: {
                "rows": len(next(iter(by_metric.values()))),
                **{
                    m: bootstrap_ci(_per_member_mean(pairs), boot, n_boot=spec.n_boot).to_dict()
                    for m, pairs in by_metric.items()
                },
            }
            for kind, by_metric in sorted(res.per_kind.items())
        }
        out["positions"][name] = {
            "row": res.slot_probs.sum(axis=1).tolist(),
            "col": res.slot_probs.sum(axis=0).tolist(),
        }
        out["catalog"][name] = {
            "coverage": coverage(np.flatnonzero(res.shown), history.n_titles),
            "ecs_visible": effective_catalog_size(res.exposures),
            "catalog_titles": history.n_titles,
        }
        lat = res.values["latency_ms"]
        out["latency"][name] = {
            "p50": float(np.median(lat)) if lat.size else None,
            "p95": float(np.percentile(lat, 95)) if lat.size else None,
        }
    return out


def _cmp(v: np.ndarray, b: np.ndarray, rng: np.random.Generator, spec: EvalSpec) -> Comparison:
    return paired_comparison(v, b, rng, n_boot=spec.n_boot)


def _per_member_mean(pairs: Sequence[tuple[int, float]]) -> np.ndarray:
    """One value per member: the mean over that member's rows of the kind."""
    if not pairs:
        return np.empty(0)
    who = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
    val = np.fromiter((p[1] for p in pairs), np.float64, len(pairs))
    _, inv = np.unique(who, return_inverse=True)
    return np.bincount(inv, weights=val) / np.bincount(inv)


# ----- the simulated A/B test -------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    user_id: str
    user: int  # world index
    ctx: RequestContext


def ab_schedule(
    gt: GroundTruth, history: History, cut: datetime, spec: ABSpec, rng: np.random.Generator
) -> list[Session]:
    """Members known at the cut, each with Poisson(sessions_per_day) sessions a day for
    `days` days from the cut, at hours from the world's traffic curve and on devices from the
    member's device mix (engine/sim/world.py), sorted by time."""
    w = gt.world
    known = np.array([gt.user_index(str(u)) for u in history.user_ids], dtype=np.int64)
    users = known if len(known) <= spec.users else rng.choice(known, spec.users, replace=False)
    users = np.sort(users)
    day0 = datetime(cut.year, cut.month, cut.day, tzinfo=UTC)
    if day0 < cut:
        day0 += timedelta(days=1)
    sessions: list[Session] = []
    for d in range(spec.days):
        day = day0 + timedelta(days=d)
        weekend = int(day.weekday() >= 5)
        hour_p = w.hour_traffic[weekend].astype(np.float64)
        hour_p /= hour_p.sum()
        counts = rng.poisson(spec.sessions_per_day, size=len(users))
        who = np.repeat(users, counts)
        hours = rng.choice(24, size=len(who), p=hour_p)
        seconds = rng.integers(0, 3600, size=len(who))
        dev_w = w.device_mix[who].astype(np.float64) * w.device_hour[hours].astype(np.float64)
        dev_w /= dev_w.sum(axis=1, keepdims=True)
        u01 = rng.random(len(who))
        devices = np.minimum((np.cumsum(dev_w, axis=1) < u01[:, None]).sum(axis=1), 3)
        for u, hr, s, dv in zip(
            who.tolist(), hours.tolist(), seconds.tolist(), devices.tolist(), strict=True
        ):
            at = day + timedelta(hours=hr, seconds=s)
            uid = str(w.user_ids[u])
            country = w.countries[int(w.user_country[u])]
            sessions.append(Session(uid, u, RequestContext(uid, DEVICES[dv], at, country)))
    sessions.sort(key=lambda s: (s.ctx.at, s.user_id))
    return sessions


def watch_minutes(
    gt: GroundTruth, user: int, title_id: str, ctx: RequestContext, rng: np.random.Generator
) -> float:
    """Minutes watched in the session's first play, drawn like the simulator's watching model
    (engine/sim/simulate.py `_watch`, first play only, no binge): a log-normal time budget by
    device, hour and weekend; abandonment more likely the worse the taste match; otherwise
    watched to the end (from where an unfinished earlier play stopped) or until the budget runs
    out."""
    w, p = gt.world, gt.world.params
    t = int(gt.title_indices([title_id])[0])
    if t < 0:
        return 0.0
    dev = DEVICES.index(ctx.device)
    at = to_utc(ctx.at)
    titles = np.array([t])
    st = gt.log.state(user, int(at.timestamp() * 1_000_000), titles, w.prev_episode[titles])
    resumed = bool(st.started[0]) and float(st.last_progress[0]) < FINISHED_PROGRESS
    start = float(st.last_progress[0]) if resumed else 0.0
    median = p.budget_median_min[dev]
    median *= p.budget_late_night if at.hour < 5 else 1.0
    median *= p.budget_weekend if at.weekday() >= 5 else 1.0
    budget = median * math.exp(rng.normal(0.0, p.budget_sigma))
    match = float(w.taste(np.array([user]), np.array([t]))[0])
    left = float(w.duration_min[t]) * (1.0 - start)
    if rng.random() < 1.0 / (1.0 + math.exp(-(p.abandon_bias - p.abandon_match * match))):
        return left * float(rng.beta(1.4, 2.6))
    end = max(float(rng.uniform(0.92, 1.0)), start + 0.01)
    return min(float(w.duration_min[t]) * (end - start), budget)


def run_ab(
    sources: Mapping[str, PageSource],
    gt: GroundTruth,
    sessions: Sequence[Session],
    spec: ABSpec,
    seed: int,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Each session's member sees their arm's page and responds through the ground truth."""
    arms = list(sources)
    respond = np.random.default_rng([seed, _P_AB, 1])
    watch = np.random.default_rng([seed, _P_WATCH])
    max_r = max(lay.rows for lay in DEFAULT_LAYOUTS.values())
    max_c = max(lay.titles_per_row for lay in DEFAULT_LAYOUTS.values())
    per: dict[str, dict[str, Any]] = {
        a: {
            "users": {},
            "pos": np.zeros((max_r, max_c)),
            "sessions": 0,
        }
        for a in arms
    }
    oracle_layouts = DEFAULT_LAYOUTS
    for s in tqdm(sessions, desc="A/B sessions", disable=not progress, leave=False):
        arm = arms[stable_bucket(f"{spec.name}:{s.user_id}", len(arms))]
        page = sources[arm].page(s.ctx)
        played = gt.simulate_response(s.user_id, s.ctx, page.title_ids, respond)
        exact = gt.expected_plays(s.user_id, s.ctx, page.title_ids)
        best = gt.expected_plays(
            s.user_id, s.ctx, gt.oracle_page(s.user_id, s.ctx, oracle_layouts[s.ctx.device])
        )
        minutes = 0.0
        rec = per[arm]
        rec["sessions"] += 1
        if played is not None:
            r, c = played
            minutes = watch_minutes(gt, s.user, page.title_ids[r][c], s.ctx, watch)
            if r < max_r and c < max_c:
                rec["pos"][r, c] += 1
        u = rec["users"].setdefault(s.user_id, np.zeros(5))
        u += (1.0, float(played is not None), minutes, exact, best)
    boot = np.random.default_rng([seed, _P_BOOT, 1])
    out: dict[str, Any] = {"arms": {}, "vs_baseline": {}, "sessions": len(sessions)}
    mats = {a: np.array(list(per[a]["users"].values())).reshape(-1, 5) for a in arms}
    for a in arms:
        m = mats[a]
        sess, plays, mins, exp_plays, oracle = (m[:, j] for j in range(5))
        pos = per[a]["pos"]
        n_sess = max(per[a]["sessions"], 1)
        out["arms"][a] = {
            "users": len(m),
            "sessions": int(per[a]["sessions"]),
            "take_rate": bootstrap_ratio_ci(plays, sess, boot).to_dict(),
            "watch_minutes_per_session": bootstrap_ratio_ci(mins, sess, boot).to_dict(),
            "expected_take_rate": bootstrap_ratio_ci(exp_plays, sess, boot).to_dict(),
            "oracle_take_rate": bootstrap_ratio_ci(oracle, sess, boot).to_dict(),
            "oracle_ratio": bootstrap_ratio_ci(exp_plays, oracle, boot).to_dict(),
            "take_rate_by_row": (pos.sum(axis=1) / n_sess).tolist(),
            "take_rate_by_col": (pos.sum(axis=0) / n_sess).tolist(),
        }
    base = arms[0]
    mb = mats[base]
    for a in arms[1:]:
        m = mats[a]
        out["vs_baseline"][a] = {
            "take_rate": ratio_comparison(m[:, 1], m[:, 0], mb[:, 1], mb[:, 0], boot).to_dict(),
            "watch_minutes_per_session": ratio_comparison(
                m[:, 2], m[:, 0], mb[:, 2], mb[:, 0], boot
            ).to_dict(),
            "expected_take_rate": ratio_comparison(
                m[:, 3], m[:, 0], mb[:, 3], mb[:, 0], boot
            ).to_dict(),
        }
    return out


# ----- team-draft interleaving ------------------------------------------------------------------


def team_draft(
    a: Sequence[str], b: Sequence[str], rng: np.random.Generator, length: int
) -> tuple[list[str], list[int]]:
    """Team-draft interleaving (Radlinski, Kurup & Joachims 2008, CIKM): each round a coin
    decides which ranking picks first; each picks its best title not yet taken. Returns the
    interleaved list and each position's team (0 = a, 1 = b)."""
    out: list[str] = []
    team: list[int] = []
    taken: set[str] = set()
    ia = ib = 0
    count = [0, 0]
    while len(out) < length and (ia < len(a) or ib < len(b)):
        first = int(rng.random() < 0.5) if count[0] == count[1] else int(count[0] > count[1])
        for who in (first, 1 - first):
            if len(out) >= length:
                break
            src, i = (a, ia) if who == 0 else (b, ib)
            while i < len(src) and src[i] in taken:
                i += 1
            if i < len(src):
                out.append(src[i])
                team.append(who)
                taken.add(src[i])
                count[who] += 1
                i += 1
            if who == 0:
                ia = i
            else:
                ib = i
    return out, team


def run_interleaving(
    source: PageSource,
    gt: GroundTruth,
    sessions: Sequence[Session],
    seed: int,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Inside every row of the variant's page: the page model's title order (team A) against
    the ranker's own order of the same titles (team B), interleaved by team draft; a simulated
    play credits the team whose title it was. Wins per session, compared by a sign test."""
    from engine.pipeline import propose_rows

    rng = np.random.default_rng([seed, _P_TDI])
    respond = np.random.default_rng([seed, _P_TDI, 1])
    engine = source.engine
    wins = np.zeros(2)
    sessions_with_play = 0
    for s in tqdm(sessions, desc="interleaving", disable=not progress, leave=False):
        page = engine.page_for(s.ctx)
        ctx = engine.context(s.ctx.user_id, s.ctx.device, s.ctx.at, s.ctx.country)
        raw = propose_rows(engine.rankers, ctx, engine.history).rows
        ranker_order = {r.row_id: [str(engine.history.title_ids[t]) for t in r.titles] for r in raw}
        rows: list[list[str]] = []
        teams: list[list[int]] = []
        for row in page.rows:
            model = [i.title_id for i in row.items]
            pos = {t: j for j, t in enumerate(ranker_order.get(row.row_id, []))}
            # The ranker's order of the titles the page shows (unknown ones keep model order).
            by_ranker = sorted(model, key=lambda t: (pos.get(t, len(pos)), model.index(t)))
            mixed, team = team_draft(model, by_ranker, rng, len(model))
            rows.append(mixed)
            teams.append(team)
        played = gt.simulate_response(s.user_id, s.ctx, rows, respond)
        if played is not None:
            sessions_with_play += 1
            wins[teams[played[0]][played[1]]] += 1
    return interleaving_result(len(sessions), sessions_with_play, int(wins[0]), int(wins[1]))


def interleaving_result(
    sessions: int, sessions_with_play: int, wins_a: int, wins_b: int
) -> dict[str, Any]:
    """The interleaving section: wins per side and an exact two-sided binomial (sign) test of
    "each side wins a session with probability 1/2" (`scipy.stats.binomtest`)."""
    from scipy.stats import binomtest

    n = wins_a + wins_b
    p = float(binomtest(wins_a, n, 0.5).pvalue) if n else float("nan")
    return {
        "sessions": sessions,
        "sessions_with_play": sessions_with_play,
        "wins_model_order": wins_a,
        "wins_ranker_order": wins_b,
        "delta": (wins_a - wins_b) / n if n else float("nan"),
        "test": "exact binomial (sign) test, two-sided",
        "p_value": p,
        "significant": bool(n and p < FDR_ALPHA),
    }


# ----- multiple comparisons ---------------------------------------------------------------------

FDR_ALPHA = 0.05  # false discovery rate of the report's significance marks
FDR_METHOD = "Benjamini-Hochberg"


def report_comparisons(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every comparison the report marks as significant or not, as the dicts it reads (offline
    and A/B against the baseline, the ablation's marginal values, the interleaving test)."""
    out: list[dict[str, Any]] = []
    for section in (results.get("offline"), results.get("ab")):
        for by_metric in ((section or {}).get("vs_baseline") or {}).values():
            out.extend(by_metric.values())
    for ranker in ((results.get("ablation") or {}).get("rankers") or {}).values():
        out.extend(ranker["marginal"].values())
    if results.get("interleaving"):
        out.append(results["interleaving"])
    return out


def correct_for_multiple_comparisons(results: dict[str, Any], alpha: float = FDR_ALPHA) -> None:
    """Benjamini-Hochberg over all the report's comparisons at once (`scipy.stats.
    false_discovery_control`): each gets `p_adjusted` and keeps its uncorrected verdict in
    `significant_uncorrected`; `significant` (what the report marks) becomes "significant
    before and adjusted p <= alpha", so the correction only ever removes marks. A report with
    dozens of metrics × variants otherwise shows a few `*` by chance alone. The method and
    counts go to results["multiple_comparisons"]."""
    from scipy.stats import false_discovery_control

    tests = [
        c
        for c in report_comparisons(results)
        if c.get("p_value") is not None and math.isfinite(c["p_value"])
    ]
    adjusted = (
        false_discovery_control(np.array([c["p_value"] for c in tests]), method="bh")
        if tests
        else np.empty(0)
    )
    removed = 0
    for c, q in zip(tests, adjusted.tolist(), strict=True):
        before = bool(c["significant"])
        c["p_adjusted"] = float(q)
        c["significant_uncorrected"] = before
        c["significant"] = before and q <= alpha
        removed += before and not c["significant"]
    results["multiple_comparisons"] = {
        "method": FDR_METHOD,
        "function": "scipy.stats.false_discovery_control(method='bh')",
        "false_discovery_rate": alpha,
        "comparisons": len(tests),
        "marks_removed": removed,
    }


# ----- ablation ---------------------------------------------------------------------------------

ABLATION_METRICS = ("n2dcg", "visible_recall", "expected_plays", "true_take_rate")


def run_ablation(
    engine: Engine,
    full: OfflineResult,
    pick: np.ndarray,
    all_requests: Sequence[EvalRequest],
    history: History,
    spec: EvalSpec,
    gt: GroundTruth | None,
    title_index: Mapping[str, int],
    seed: int,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Remove-one: each ranker instance silenced in turn; marginal value = full - without,
    paired over the members `pick` (indices into `all_requests` and `full`)."""
    boot = np.random.default_rng([seed, _P_BOOT, 2])
    requests = [all_requests[i] for i in pick.tolist()]
    metrics = [m for m in ABLATION_METRICS if m in full.values]
    sources = {
        name: PageSource(silence(engine, name), title_index, None) for name in engine.rankers
    }
    without = evaluate_offline(
        sources, requests, history, spec, gt, progress=progress, desc="ablation", oracle=False
    )
    pages = [full.pages[i] for i in pick.tolist()]
    out: dict[str, Any] = {"metrics": metrics, "rankers": {}}
    for name, res in without.items():
        rows_on_page = float(np.mean([sum(1 for r in p.rankers if r == name) for p in pages]))
        out["rankers"][name] = {
            "rows_per_page": rows_on_page,
            "marginal": {
                m: paired_comparison(
                    full.values[m][pick], res.values[m], boot, n_boot=spec.n_boot
                ).to_dict()
                for m in metrics
            },
        }
    return out


# ----- the command ------------------------------------------------------------------------------


def run_bench(
    variants_file: Path,
    *,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    seed: int | None = None,
    users: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """The whole benchmark; writes REPORT_DIR/{results.json, report.md, report.html}."""
    from engine.evaluation.report import write_reports

    t_start = time.perf_counter()
    plan = load_variants(variants_file)
    spec = _with_users(plan.spec, users)
    seed = spec.seed if seed is None else seed
    out_dir = Path(out_dir) if out_dir is not None else Path("bench/results") / plan.path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    with _timed(timings, "data_s"):
        data = load_bench_data(spec, data_dir, out_dir, seed, progress)
        log(
            f"data {data.dir} ({data.ds.source}): cut {data.cut.isoformat()}, "
            + data.split.describe()
        )
    with _timed(timings, "train_s"):
        model_dirs, train_s = train_variants(plan, data.dir, data.cut, out_dir / "models", progress)
    engines, sources = load_page_sources(plan, model_dirs, data, seed)

    ablated = spec.ablation.variant or plan.baseline
    with _timed(timings, "offline_s"):
        offline = evaluate_offline(
            sources,
            data.requests,
            data.history,
            spec.eval,
            data.gt,
            progress=progress,
            desc="offline pages",
            keep_pages=[ablated],
        )
        offline_summary = summarize_offline(
            offline,
            data.requests,
            plan.baseline,
            data.history,
            spec.eval,
            data.gt is not None,
            seed,
        )

    ab: dict[str, Any] | None = None
    interleaving: dict[str, Any] | None = None
    if data.gt is not None and spec.ab.enabled:
        with _timed(timings, "ab_s"):
            sched = ab_schedule(
                data.gt, data.history, data.cut, spec.ab, np.random.default_rng([seed, _P_AB])
            )
            ab = _ab_section(sources, data.gt, sched, spec.ab, seed, progress)
        if spec.interleaving.enabled:
            with _timed(timings, "interleaving_s"):
                interleaving = _interleaving_section(
                    sources, plan.baseline, data.gt, sched, spec.interleaving, seed, progress
                )

    ablation: dict[str, Any] | None = None
    if spec.ablation.enabled:
        with _timed(timings, "ablation_s"):
            ablation = _ablation_section(
                engines[ablated], offline[ablated], ablated, data, spec, seed, progress
            )

    timings["total_s"] = time.perf_counter() - t_start
    results: dict[str, Any] = {
        "format": 1,
        "bench": _bench_section(plan, spec, seed, timings),
        "data": _data_section(data),
        "baseline": plan.baseline,
        "variants": _variants_section(plan, engines, train_s),
        "offline": offline_summary,
        "ab": ab,
        "interleaving": interleaving,
        "ablation": ablation,
    }
    correct_for_multiple_comparisons(results)
    write_reports(results, out_dir)
    return results


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Records the wall time of the block as `timings[key]` (seconds)."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _with_users(spec: BenchSpec, users: int | None) -> BenchSpec:
    """The spec with `--users` applied: members evaluated offline and in the A/B test (at least
    two, one per arm)."""
    if users is None:
        return spec
    return spec.model_copy(
        update={
            "eval": spec.eval.model_copy(update={"users": users}),
            "ab": spec.ab.model_copy(update={"users": max(users, 2)}),
        }
    )


@dataclass(frozen=True)
class BenchData:
    """The dataset of a run, split at the cut, and the test members evaluated offline."""

    dir: Path
    ds: Dataset
    gt: GroundTruth | None  # None: not a simulated world
    cut: datetime
    split: Split
    requests: list[EvalRequest]
    title_index: dict[str, int]  # title id -> History index

    @property
    def history(self) -> History:
        return self.split.history


def load_bench_data(
    spec: BenchSpec, data_dir: Path | None, out_dir: Path, seed: int, progress: bool
) -> BenchData:
    """The run's dataset (given, or simulated into `out_dir`), its temporal split and the sampled
    test members; ConfigError when nobody has plays on both sides of the cut."""
    data = prepare_data(spec, data_dir, out_dir, seed, progress)
    ds = load_dataset(data)
    gt = GroundTruth.load(data / GROUND_TRUTH_DIR) if (data / GROUND_TRUTH_DIR).is_dir() else None
    cut = cut_time(ds, spec.split)
    split = make_split(ds, cut, name="test")
    requests = eval_requests(ds, split, spec.eval.users, np.random.default_rng([seed, _P_SAMPLE]))
    if not requests:
        raise ConfigError(
            f"no test members: nobody has plays both before and after the cut {cut.isoformat()}; "
            "move the cut ([bench.split])"
        )
    title_index = {t: i for i, t in enumerate(split.history.title_ids.tolist())}
    return BenchData(data, ds, gt, cut, split, requests, title_index)


def load_page_sources(
    plan: Plan, model_dirs: Mapping[str, Path], data: BenchData, seed: int
) -> tuple[dict[str, Engine], dict[str, PageSource]]:
    """Each variant's trained engine and the page source that serves it (shuffled for
    `shuffle` variants), warmed up."""
    import engine as engine_pkg

    engines = {n: engine_pkg.load(d) for n, d in model_dirs.items()}
    sources = {
        n: PageSource(
            engines[n],
            data.title_index,
            np.random.default_rng([seed, _P_SHUFFLE, stable_bucket(n, 2**31)])
            if v.shuffle
            else None,
        )
        for n, v in plan.variants.items()
    }
    # Warm-up: the first page of a loaded engine pays one-off costs that are not latency.
    for src in sources.values():
        src.engine.page_for(data.requests[0].ctx)
    return engines, sources


def _ab_section(
    sources: Mapping[str, PageSource],
    gt: GroundTruth,
    sched: Sequence[Session],
    spec: ABSpec,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """The simulated A/B test of every variant over the sessions `sched`."""
    ab = run_ab(sources, gt, sched, spec, seed, progress=progress)
    ab.update({"days": spec.days, "sessions_per_day": spec.sessions_per_day, "name": spec.name})
    return ab


def _interleaving_section(
    sources: Mapping[str, PageSource],
    baseline: str,
    gt: GroundTruth,
    sched: Sequence[Session],
    spec: InterleavingSpec,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Team-draft interleaving on the baseline's pages, in a sample of the A/B sessions."""
    pick_rng = np.random.default_rng([seed, _P_TDI, 2])
    n_tdi = min(spec.sessions, len(sched))
    idx = np.sort(pick_rng.choice(len(sched), n_tdi, replace=False))
    interleaving = run_interleaving(
        sources[baseline], gt, [sched[i] for i in idx], seed, progress=progress
    )
    interleaving["variant"] = baseline
    return interleaving


def _ablation_section(
    engine: Engine,
    full: OfflineResult,
    variant: str,
    data: BenchData,
    spec: BenchSpec,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Remove-one ablation of `variant`'s rankers on a sample of the test members."""
    n_abl = min(spec.ablation.users or len(data.requests), len(data.requests))
    pick = np.sort(
        np.random.default_rng([seed, _P_LEAVE]).choice(len(data.requests), n_abl, replace=False)
    )
    ablation = run_ablation(
        engine,
        full,
        pick,
        data.requests,
        data.history,
        spec.eval,
        data.gt,
        data.title_index,
        seed,
        progress=progress,
    )
    ablation["variant"] = variant
    ablation["members"] = n_abl
    return ablation


def _bench_section(
    plan: Plan, spec: BenchSpec, seed: int, timings: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "description": spec.description,
        "variants_file": str(plan.path),
        "seed": seed,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "settings": spec.model_dump(mode="json"),
    }


def _data_section(data: BenchData) -> dict[str, Any]:
    history = data.history
    return {
        "dir": str(data.dir),
        "source": data.ds.source,
        "clock": to_utc(data.ds.clock).isoformat(),
        "cut": data.cut.isoformat(),
        "simulated": data.gt is not None,
        "titles": history.n_titles,
        "users_at_cut": history.n_users,
        "training_plays": len(history.play_user),
        "test_users": len(data.split.users),
        "evaluated_users": len(data.requests),
        "dropped_unknown_truth": int(data.split.dropped_unknown),
    }


def _variants_section(
    plan: Plan, engines: Mapping[str, Engine], train_s: Mapping[str, float]
) -> dict[str, Any]:
    return {
        n: {
            "description": v.description,
            "shuffle": v.shuffle,
            "model_version": engines[n].model_version,
            "train_s": round(train_s[n], 2),
            "rankers": list(v.config.rankers),
            "config": v.config.to_document(),
        }
        for n, v in plan.variants.items()
    }


def _machine() -> str:
    try:
        return machine()
    except Exception:  # the description is informative only
        return "unknown"


def add_arguments(p: Any) -> None:
    """`rowrank bench` arguments (argparse)."""
    from engine.evaluation.realdata_run import add_protocol_arguments

    p.add_argument(
        "variants_file",
        nargs="?",
        help="variants TOML (bench/variants/*.toml); not with --realdata",
    )
    p.add_argument(
        "--data",
        help="dataset directory or raw MovieLens directory (default: simulate a world into --out)",
    )
    p.add_argument("--out", help="report directory (default bench/results/<variants file name>)")
    p.add_argument("--seed", type=int, help="seed of everything random (default: the file's)")
    p.add_argument("--users", type=int, help="members evaluated offline and in the A/B test")
    real = p.add_argument_group(
        "real-data protocol",
        "--realdata --data DIR: rowrank against library baselines (EASE, implicit's ALS and "
        "item-kNN, MostPopular, Trending) on a MovieLens release, per-member and global splits "
        "(docs/realdata.md); results under --out (default bench/results/realdata)",
    )
    real.add_argument("--realdata", action="store_true", help="run the real-data protocol")
    add_protocol_arguments(real)


def cli(args: Any) -> int:
    from engine.evaluation.report import comparison_table

    if args.realdata:
        from engine.evaluation.realdata_run import run

        if args.variants_file:
            raise ConfigError("--realdata runs the real-data protocol: give no variants file")
        args.work = args.out or str(Path("bench") / "results" / "realdata")
        args.seed = 0 if args.seed is None else args.seed
        return run(args)
    if not args.variants_file:
        raise ConfigError("give a variants TOML (e.g. bench/variants/simulated.toml) or --realdata")
    results = run_bench(
        Path(args.variants_file),
        data_dir=Path(args.data) if args.data else None,
        out_dir=Path(args.out) if args.out else None,
        seed=args.seed,
        users=args.users,
        progress=sys.stderr.isatty(),
    )
    print(comparison_table(results))
    out = Path(args.out) if args.out else Path("bench/results") / Path(args.variants_file).stem
    print(f"\nreport: {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'}")
    return 0


__all__ = [
    "Plan",
    "Variant",
    "add_arguments",
    "cli",
    "load_variants",
    "run_bench",
    "stable_bucket",
    "team_draft",
]
