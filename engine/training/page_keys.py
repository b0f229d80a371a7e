"""Page keys: ranker keys that change only how a fitted ranker lays out its rows (Top Picks'
`more_deal`), chosen by `rowrank train` on whole pages of the held-out window.

Which layout serves a catalog depends on how its members read a page, and a ranker's own score
cannot see it: dealing Top Picks' order over its three rows by anti-diagonals puts its 3rd title at
the head of the row below instead of the 3rd slot of its own row, which pays only where members look
down before they look far right. So once the page model is validated, the held-out window's pages
are built again through the whole pipeline, with the rankers, features and page models fitted
without that window: once with the keys as given and once per declared alternative
(`RankerConfig.page_space`), one key at a time, each page scored against what its member played
next. An alternative replaces the given value only when it raises the mean by tune.MIN_GAIN. Nothing
is refitted: the keys are read when a ranker proposes.

How a slot counts is measured when the data can show it: with logged impressions, by each slot's
play rate in them (`slot_play_rates`), scored with metrics.read_gain. Without impressions
(MovieLens) nothing shows how members read, and N2DCG's reader is assumed: slot (r, c) counts
1 / log2(r + c). The rates are those of the app that logged the pages, whose best titles sat
top-left, so they overstate the top-left slots: a bias toward the first row's consecutive titles.
Runs: docs/results/2026-12-08-page-keys.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from engine.candidates import Ranker
from engine.config import EngineConfig
from engine.data.columns import Col
from engine.data.history import History
from engine.evaluation.metrics import n2dcg, page_grid, read_gain
from engine.pipeline import Engine, resolve_country
from engine.request.context import RequestContext
from engine.request.features import FeatureStore
from engine.request.scorers import PageModel, PageModelConfig
from engine.training.tune import MIN_GAIN, MIN_GAIN_ABS, with_keys

# Pages scored per variant: a seeded sample of the held-out window's (about 2 x 10 s of pages on
# 2 cores; a 5% difference between variants is several intervals wide at this size).
MAX_PAGES = 1000
# A slot's play rate counts once this many impressions were logged there; rarer slots count 0.
MIN_SLOT_IMPRESSIONS = 200


def slot_play_rates(impressions: pl.LazyFrame | None) -> np.ndarray | None:
    """(rows, positions) play rate of each slot in the logged impressions, divided by the
    top-left slot's; None without impressions (or none played at the top-left)."""
    if impressions is None:
        return None
    by_slot = (
        impressions.group_by(Col.ROW_INDEX, Col.POSITION)
        .agg(pl.len().alias("n"), pl.col(Col.PLAYED).cast(pl.Float64).mean().alias("rate"))
        .filter(pl.col("n") >= MIN_SLOT_IMPRESSIONS)
        .collect()
    )
    if by_slot.height == 0:
        return None
    r = by_slot[Col.ROW_INDEX].to_numpy().astype(np.int64)
    c = by_slot[Col.POSITION].to_numpy().astype(np.int64)
    rates = np.zeros((int(r.max()) + 1, int(c.max()) + 1))
    rates[r, c] = by_slot["rate"].fill_null(0.0).to_numpy()
    return rates / rates[0, 0] if rates[0, 0] > 0 else None


@dataclass
class HeldOutPages:
    """The held-out window's page requests (user id, device, time in us) with the titles each
    member played after theirs, and the window's fitted rankers, features and History: what
    `choose_page_keys` builds pages from."""

    history: History
    rankers: dict[str, Ranker]
    store: FeatureStore
    requests: list[tuple[str, str, int]]
    truth: list[np.ndarray]  # title indices played after each request


def held_out_pages(
    history: History,
    rankers: dict[str, Ranker],
    store: FeatureStore,
    requests: Sequence[tuple[str, str, int]],
    plays_of: Mapping[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
) -> HeldOutPages:
    """At most MAX_PAGES of a window's requests (seeded), each with its member's played titles."""
    keep = np.arange(len(requests))
    if len(keep) > MAX_PAGES:
        keep = np.sort(np.random.default_rng(seed).choice(keep, MAX_PAGES, replace=False))
    chosen = [requests[i] for i in keep.tolist()]
    truth = [np.unique(t[t >= 0]) for t in (plays_of[uid][0] for uid, _, _ in chosen)]
    return HeldOutPages(history, rankers, store, chosen, truth)


@dataclass(frozen=True)
class PageTrial:
    keys: dict[str, dict[str, Any]]  # ranker -> keys that differ from the given config
    gain: float  # mean over the pages
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "gain": round(self.gain, 6), "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class PageKeys:
    pages: int
    reading: np.ndarray | None
    trials: list[PageTrial]
    chosen: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "reader": "N2DCG" if self.reading is None else "slot play rates",
            "slot_play_rates": None if self.reading is None else self.reading.round(4).tolist(),
            "chosen": self.chosen,
            "trials": [t.to_dict() for t in self.trials],
        }

    def apply(self, cfg: EngineConfig) -> EngineConfig:
        """The engine config with the chosen keys."""
        return with_keys(cfg, self.chosen, "page keys chosen on the held-out window")


def set_keys(rankers: Mapping[str, Ranker], keys: Mapping[str, Mapping[str, Any]]) -> None:
    """Set keys on fitted rankers (page keys only: they are read when rows are laid out)."""
    for name, changed in keys.items():
        r: Any = rankers[name]
        r.config = r.config.model_copy(update=dict(changed))


def mean_page_gain(
    eng: Engine, held: HeldOutPages, reading: np.ndarray | None, bar: Any = None
) -> float:
    """Mean gain of the engine's pages for the held-out requests against what followed: each
    slot weighted by `reading` (slot_play_rates), or N2DCG without it. `bar` (tqdm) counts
    the pages."""
    h = held.history
    index = {t: i for i, t in enumerate(h.title_ids.tolist())}
    ctxs = [
        resolve_country(
            RequestContext(uid, device, datetime.fromtimestamp(at_us / 1e6, UTC)),
            h,
            eng.config.serving.default_country,
        )
        for uid, device, at_us in held.requests
    ]
    # A member new in the window, with no country, could be shown only the titles licensed
    # everywhere (the engine refuses such a request): their page is not scored.
    every = eng.titles_everywhere == h.n_titles
    asked = [(c, t) for c, t in zip(ctxs, held.truth, strict=True) if every or c.country]
    total = 0.0
    for (ctx, truth), page in zip(asked, eng.iter_pages([c for c, _ in asked]), strict=True):
        if bar is not None:
            bar.update()
        shown = [np.array([index[i.title_id] for i in r.items], dtype=np.int64) for r in page.rows]
        grid = page_grid(shown)
        if reading is None:
            total += n2dcg(grid, truth, eng.layout(ctx.device))
        else:
            total += read_gain(grid, truth, reading)
    return total / max(len(asked), 1)


def choose_page_keys(
    cfg: EngineConfig,
    page_cfg: PageModelConfig,
    model: PageModel,
    guards: Mapping[str, Any],
    held: HeldOutPages | None,
    reading: np.ndarray | None = None,
    *,
    progress: bool = False,
) -> PageKeys:
    """Each declared page key against the given config on the held-out window's pages, one key
    at a time from the given values; `model` and `guards` (ranker_order_kinds, row_order) are
    the page model as validated on that window; `reading` weighs the slots (slot_play_rates)."""
    spaces = {n: s.config.page_space() for n, s in cfg.rankers.items()}
    steps = [(n, k, v) for n, space in spaces.items() for k, vs in space.items() for v in vs]
    if held is None or not held.requests or not steps:
        return PageKeys(0 if held is None else len(held.requests), reading, [], {})
    eng = Engine(
        config=cfg,
        page_config=page_cfg,
        history=held.history,
        rankers=held.rankers,
        store=held.store,
        model=model,
        model_version="held-out",
        manifest=dict(guards),
    )
    trials: list[PageTrial] = []
    n = len(held.requests) * (1 + len(steps))
    bar = tqdm(total=n, desc="page keys: held-out pages", disable=not progress)

    def run(keys: dict[str, dict[str, Any]]) -> float:
        t = time.perf_counter()
        given = {n: {k: getattr(cfg.rankers[n].config, k) for k in ks} for n, ks in keys.items()}
        set_keys(held.rankers, keys)
        try:
            score = mean_page_gain(eng, held, reading, bar)
        finally:
            set_keys(held.rankers, given)
        trials.append(PageTrial(keys, score, time.perf_counter() - t))
        return score

    chosen: dict[str, dict[str, Any]] = {}
    best = run({})
    for name, key, value in steps:
        keys = {**chosen, name: {**chosen.get(name, {}), key: value}}
        score = run(keys)
        if score - best > best * MIN_GAIN and score - best >= MIN_GAIN_ABS:
            chosen, best = keys, score
    bar.close()
    return PageKeys(len(held.requests), reading, trials, chosen)


def page_keys_lines(result: Mapping[str, Any]) -> list[str]:
    """Lines for the training summary: each page-key trial's mean gain and what was chosen."""
    if not result.get("trials"):
        return []
    how = (
        "N2DCG"
        if result.get("reader") == "N2DCG"
        else "gain with each slot weighted by its play rate in the impressions"
    )
    lines = [f"page keys (how rows are laid out; {how}, {result['pages']} held-out pages):"]
    for t in result["trials"]:
        keys = "; ".join(
            f"{n}: " + ", ".join(f"{k}={v}" for k, v in ks.items()) for n, ks in t["keys"].items()
        )
        lines.append(f"  {keys or 'as configured':<40} {t['gain']:.4f}")
    chosen = result.get("chosen") or {}
    what = "; ".join(f"{n}: {ks}" for n, ks in chosen.items()) if chosen else "as configured"
    lines.append(f"  chosen: {what}")
    return lines
