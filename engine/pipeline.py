"""The page pipeline, written once, in order:

    request values -> RequestContext, resolved once at the edge (Engine.context / resolve)
      -> rankers    each configured instance proposes CandidateRows (fail open per ranker)
      -> filters    availability, maturity, already finished, series entered at their start
                    or where the member is (engine.request.filters); `candidate_rows` is
                    these two stages, the one step serving and training share
      -> features   context, user, title, user x title, PVR scores (engine.request.features)
      -> title model    LightGBM orders the titles inside every row
      -> row features   the row-model matrix, the rows' kinds, the device's column decay
      -> selectors  the compiled greedy assembly with the row scorer chosen at load
                    (dedupe, caps, pins, diversity, device layout: engine.request.selectors)
      -> Page           engine.request.page.build_page with a frozen PageTrace;
                        `Page.to_json()` gives the bytes

`Engine.pages` (and `iter_pages`) runs that line for a block of requests, each stage over the
whole block where its work is shared (rankers and filter masks once per member and time, one
title-model call over every pair), and gives each request the very page `Engine.page_for` gives
it alone; `page_for` is the block path with a block of one. The file reads in the same order.
What does not change
between requests (assembly rules, the row scorer `[page] row_order` names, the PVR feature
source) is settled when the Engine is built. Training (engine.training.train) replays past
requests through the same stage functions (`candidate_rows`, `pairs_for`), so what the models
learn from is what they are served.

Failure policy (docs/page_model.md):
- A ranker that raises an operational error (ValueError, KeyError, IndexError, arithmetic,
  OSError, RuntimeError, ...) or returns rows with invalid values (titles out of range,
  non-finite scores) loses its rows for this request; the failure is recorded in the page trace
  under "failed_rankers" and the page still renders.
- Programmer and schema errors are not swallowed: TypeError, AttributeError, NameError,
  ImportError, AssertionError, NotImplementedError, MemoryError and every RowrankError
  (ConfigError, ModelLoadError, NotFittedError, ...) propagate, as does a ranker returning
  something that is not a list of CandidateRow. They mean the code or the model directory is
  wrong, which a retry cannot fix and a silently thinner page would hide.
- An unknown member gets a cold-start page (every feature of theirs at its default), not an
  error. When no ranker has a row left, the page is the fallback page (popular + trending).
- A request without a country, for a member without one, takes `[serving] default_country`;
  with none configured it is a BadRequestError when titles are licensed per country (the page
  could hold only the titles licensed everywhere: thin or empty, and looking like an answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numba
import numpy as np
import orjson

from engine.candidates import CandidateRow, LivePlays, Ranker
from engine.config import EngineConfig, build_rankers, parse_config
from engine.data.history import FINISHED_PROGRESS, US_PER_DAY, History
from engine.errors import (
    BadRequestError,
    ConfigError,
    ModelLoadError,
    RankerContractError,
    RowrankError,
)
from engine.request.context import RequestContext, parse_device, parse_time
from engine.request.features import (
    FeatureStore,
    Pairs,
    Requests,
    row_column,
)
from engine.request.filters import RequestMasks, apply_filters, request_masks
from engine.request.layout import DeviceLayout
from engine.request.page import Page, PageTrace, build_page
from engine.request.scorers import PageModel, PageModelConfig
from engine.request.selectors import (
    AssembledPage,
    AssemblyRules,
    RowFeatures,
    RowScorer,
    assemble_page,
    score_rows_by_play_estimate,
    score_rows_by_row_model,
    score_rows_by_template,
    score_rows_by_top_titles,
)
from engine.training.model_dir import HISTORY_DIR, read_manifest

CONFIG_FILE = "config.json"

# Errors that mean "the code or the model is wrong": never turned into a thinner page.
PROGRAMMER_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    NameError,
    ImportError,
    AssertionError,
    NotImplementedError,
    MemoryError,
    RowrankError,
)


# ----- the edge: a request resolved once ----------------------------------------------------


def resolve_country(
    ctx: RequestContext, history: History, default: str | None = None
) -> RequestContext:
    """The edge of the pipeline: `ctx` with its country: the request's, else the member's, else
    `default` (`[serving] default_country`), else None. Every stage after it reads the resolved
    context; training replays requests through it too."""
    if ctx.country:
        return ctx
    u = history.user_index(ctx.user_id)
    member = str(history.user_country[u]) if u >= 0 else ""
    return replace(ctx, country=member or default)


# ----- stage 1: rankers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Proposed:
    rows: list[CandidateRow]
    failed: dict[str, str]  # ranker instance -> "ErrorType: message"
    counts: dict[str, int]  # ranker instance -> rows proposed


class LastProposals:
    """Per ranker, its rows for the last request, reused for the next request that differs
    only in the device when the ranker says its rows do not depend on it (a class attribute
    `uses_device = False`; a ranker without it is taken to depend on everything). Precompute
    asks for one member's pages on several devices in a row; built-in rankers other than
    Continue Watching then run once per member and time, not once per page. No stage edits a
    proposed row in place (tests/test_pipeline.py checks reused pages against fresh ones), and
    entries are replaced whole, so threads serving pages at once read an old or a new entry,
    never half of one."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[Any, ...], History, list[CandidateRow]]] = {}

    @staticmethod
    def shares(ranker: Ranker) -> bool:
        return getattr(ranker, "uses_device", True) is False

    @staticmethod
    def key(ctx: RequestContext) -> tuple[Any, ...]:
        # the UTC offset too: the same instant in another zone is another local hour
        return (ctx.user_id, ctx.at, ctx.at.utcoffset(), ctx.country)

    def get(self, name: str, key: tuple[Any, ...], history: History) -> list[CandidateRow] | None:
        last = self._last.get(name)
        if last is not None and last[1] is history and last[0] == key:
            return last[2]
        return None

    def put(
        self, name: str, key: tuple[Any, ...], history: History, rows: list[CandidateRow]
    ) -> None:
        self._last[name] = (key, history, rows)


def propose_rows(
    rankers: Mapping[str, Ranker],
    ctx: RequestContext,
    history: History,
    last: LastProposals | None = None,
) -> Proposed:
    """Every ranker's rows for one request, failing open per ranker (see the module doc).
    With `last`, a ranker whose rows do not depend on the device reuses its rows for the
    previous request when only the device changed (LastProposals)."""
    return propose_block_rows(rankers, [ctx], history, last)[0]


def propose_block_rows(
    rankers: Mapping[str, Ranker],
    ctxs: Sequence[RequestContext],
    history: History,
    last: LastProposals | None = None,
) -> list[Proposed]:
    """`propose_rows` for each of a block of requests. A ranker whose rows do not depend on the
    device (LastProposals.shares) runs once per member, time and country of the block; a
    ranker with a `propose_block(requests, history)` method (one row list per request, each
    what `propose` gives) gets those requests in one call."""
    keys = [LastProposals.key(c) for c in ctxs]
    got: dict[str, list[list[CandidateRow] | str]] = {}
    for name, ranker in rankers.items():
        if not LastProposals.shares(ranker):
            got[name] = _propose_checked(name, ranker, ctxs, history)
            continue
        first: dict[tuple[Any, ...], int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        by_key: dict[tuple[Any, ...], list[CandidateRow] | str] = {}
        for k in first:
            kept = last.get(name, k, history) if last is not None else None
            if kept is not None:
                by_key[k] = kept
        todo = [i for k, i in first.items() if k not in by_key]
        fresh = _propose_checked(name, ranker, [ctxs[i] for i in todo], history)
        for i, got_i in zip(todo, fresh, strict=True):
            by_key[keys[i]] = got_i
            if last is not None and not isinstance(got_i, str):
                last.put(name, keys[i], history, got_i)
        got[name] = [by_key[k] for k in keys]
    out = []
    for i in range(len(ctxs)):
        rows: list[CandidateRow] = []
        failed: dict[str, str] = {}
        counts: dict[str, int] = {}
        for name in rankers:
            mine = got[name][i]
            if isinstance(mine, str):
                failed[name] = mine
                continue
            rows.extend(mine)
            counts[name] = len(mine)
        out.append(Proposed(rows, failed, counts))
    return out


def _propose_checked(
    name: str, ranker: Ranker, ctxs: Sequence[RequestContext], history: History
) -> list[list[CandidateRow] | str]:
    """One ranker's rows for each request, checked, or the request's "ErrorType: message" when
    the ranker failed it (fail open). A `propose_block` that fails is retried one request at a
    time, so that each request records its own failure, as on the single path."""
    # Looked up on the class: a wrapper that forwards other attributes to a ranker (and
    # overrides `propose`) must not have its `propose` bypassed by the inner `propose_block`.
    block = getattr(type(ranker), "propose_block", None)
    results: Any = None
    if callable(block) and len(ctxs) > 1:
        try:
            results = block(ranker, ctxs, history)
        except PROGRAMMER_ERRORS:
            raise
        except Exception:
            results = None
        if results is not None and (not isinstance(results, list) or len(results) != len(ctxs)):
            raise RankerContractError(
                f"ranker {name!r}: propose_block returned {type(results).__name__} for "
                f"{len(ctxs)} requests, not a list of one row list per request"
            )
    out: list[list[CandidateRow] | str] = []
    for i, ctx in enumerate(ctxs):
        try:
            rows = results[i] if results is not None else ranker.propose(ctx, history)
            _check_contract(name, rows)
            problem = _invalid_values(rows, history.n_titles)
            if problem:
                raise ValueError(problem)
        except PROGRAMMER_ERRORS:
            raise
        except Exception as exc:  # fail open: operational errors of one ranker
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        out.append(rows)
    return out


def _check_contract(name: str, rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, CandidateRow) for r in rows):
        raise RankerContractError(
            f"ranker {name!r} returned {type(rows).__name__}, not a list of CandidateRow"
        )
    for r in rows:
        if r.ranker != name:
            raise RankerContractError(f"ranker {name!r} returned a row of ranker {r.ranker!r}")
        if r.titles.dtype.kind not in "iu" or r.scores.dtype.kind != "f":
            raise RankerContractError(
                f"row {r.row_id}: titles must be integer and scores float arrays, got "
                f"{r.titles.dtype} and {r.scores.dtype}"
            )


def _invalid_values(rows: Sequence[CandidateRow], n_titles: int) -> str | None:
    """Value problems of one ranker's rows, checked in one compiled pass (`_row_values`): on
    a few short rows, a dozen numpy calls cost more than the checks themselves."""
    if not rows:
        return None
    titles = np.concatenate([r.titles for r in rows]).astype(np.int64)
    if len(titles) == 0:
        return None
    scores = np.concatenate([r.scores for r in rows])
    lens = np.fromiter((len(r.titles) for r in rows), dtype=np.int64, count=len(rows))
    problem = _row_values(titles, scores, lens, n_titles)
    if problem == _OUT_OF_RANGE:
        return f"rows of {rows[0].ranker}: title index out of range [0, {n_titles})"
    if problem == _NON_FINITE:
        return f"rows of {rows[0].ranker}: non-finite scores"
    if problem == _REPEATED:
        return f"rows of {rows[0].ranker}: a title appears twice in one row"
    return None


_OUT_OF_RANGE, _NON_FINITE, _REPEATED = 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _row_values(titles, scores, lens, n_titles):
    """0, or the first problem of: a title out of [0, n_titles), a non-finite score, a title
    twice in one row (rows are `lens` long, end to end)."""
    for t in titles:
        if t < 0 or t >= n_titles:
            return _OUT_OF_RANGE
    for s in scores:
        if not np.isfinite(s):
            return _NON_FINITE
    seen = np.zeros(n_titles, dtype=np.bool_)
    start = 0
    for n in lens:
        for k in range(start, start + n):
            if seen[titles[k]]:
                return _REPEATED
            seen[titles[k]] = True
        for k in range(start, start + n):
            seen[titles[k]] = False
        start += n
    return 0


# ----- stage 2: filters -----------------------------------------------------------------------


def filter_rows(
    rows: Sequence[CandidateRow],
    ctx: RequestContext,
    history: History,
    rankers: Mapping[str, Ranker],
    limit: int,
    limit_by_kind: Mapping[str, int] | None = None,
    masks: RequestMasks | None = None,
) -> tuple[list[CandidateRow], dict[str, dict[str, int]]]:
    """Business filters (engine.request.filters), then each row cut to the `limit` titles the title
    model scores (`limit_by_kind[row.kind]` for the kinds it names: [page]
    row_titles_scored_by_kind). Returns the rows and, per row id, titles removed per filter.
    `masks`: the request's filter masks when the caller has them."""
    kept, removed = apply_filters(rows, ctx, history, rankers, masks)
    counts = {rid: rem.counts() for rid, rem in removed.items() if rem.total}
    by_kind = limit_by_kind or {}
    cut = []
    for r in kept:
        n = by_kind.get(r.kind, limit)
        cut.append(r if len(r.titles) <= n else r.take(np.arange(n)))
    return [r for r in cut if len(r.titles)], counts


def filter_rows_for_page(
    rows: Sequence[CandidateRow],
    ctx: RequestContext,
    history: History,
    rankers: Mapping[str, Ranker],
    cfg: PageModelConfig,
    masks: RequestMasks | None = None,
) -> tuple[list[CandidateRow], dict[str, dict[str, int]]]:
    """`filter_rows` with [page]'s limits (row_titles_scored, row_titles_scored_by_kind): the
    one call serving (Engine.filter) and training (engine.training.train) share, so both cut rows
    alike."""
    return filter_rows(
        rows, ctx, history, rankers, cfg.row_titles_scored, cfg.row_titles_scored_by_kind, masks
    )


@dataclass(frozen=True)
class Candidates:
    """One request's rows after the rankers and the filters (`candidate_rows`), with what the
    page trace says about the two stages."""

    rows: list[CandidateRow]  # filtered and cut to the titles the title model scores
    proposed: dict[str, int]  # ranker instance -> rows proposed
    failed: dict[str, str]  # ranker instance -> "ErrorType: message"
    removed: dict[str, dict[str, int]]  # row id -> titles removed per filter


def candidate_rows(
    rankers: Mapping[str, Ranker],
    ctx: RequestContext,
    history: History,
    cfg: PageModelConfig,
    last: LastProposals | None = None,
) -> Candidates:
    """Stages 1 and 2: `propose_rows`, then `filter_rows_for_page`. The one call serving
    (Engine.page_for) and training's replay (engine.training.train) share, so the models learn
    from the rows they are served."""
    return candidate_rows_block(rankers, [ctx], history, cfg, last)[0]


def candidate_rows_block(
    rankers: Mapping[str, Ranker],
    ctxs: Sequence[RequestContext],
    history: History,
    cfg: PageModelConfig,
    last: LastProposals | None = None,
) -> list[Candidates]:
    """`candidate_rows` for each of a block of requests: `propose_block_rows`, then the
    filters with each member, time and country's masks computed once (not once per device)."""
    masks: dict[tuple[str, int, str | None], RequestMasks] = {}
    out = []
    for ctx, proposed in zip(ctxs, propose_block_rows(rankers, ctxs, history, last), strict=True):
        key = (ctx.user_id, ctx.at_us, ctx.country)
        if key not in masks:
            masks[key] = request_masks(ctx, history)
        rows, removed = filter_rows_for_page(proposed.rows, ctx, history, rankers, cfg, masks[key])
        out.append(Candidates(rows, proposed.counts, proposed.failed, removed))
    return out


# ----- stage 3: features ----------------------------------------------------------------------


@dataclass(frozen=True)
class PvrSource:
    """Where the ut_pvr_* features come from: the ranker whose `scores(user, history, at_us)`
    gives the member's score for every title, chosen once when the rankers are built (`of`);
    None when no ranker has such scores (the features are then missing, as for a cold start)."""

    ranker: Any | None

    @classmethod
    def of(cls, rankers: Mapping[str, Ranker]) -> PvrSource:
        """The first ranker of type "pvr", else the first with a `scores` method."""
        pvr = [r for r in rankers.values() if getattr(r, "type_name", "") == "pvr"]
        pvr = pvr or [r for r in rankers.values() if callable(getattr(r, "scores", None))]
        return cls(pvr[0] if pvr else None)

    def scores(
        self, user: int, history: History, at_us: int
    ) -> tuple[np.ndarray | None, str | None]:
        """The member's scores over every title, or (None, error) when unavailable; a failure
        is operational (fail open: the features go missing, the page renders) unless it is a
        programmer error."""
        if self.ranker is None:
            return None, None
        try:
            s = np.asarray(self.ranker.scores(user, history, at_us), dtype=np.float64)
        except PROGRAMMER_ERRORS:
            raise
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if s.shape != (history.n_titles,):
            raise RankerContractError(f"PVR scores have shape {s.shape}, not ({history.n_titles},)")
        return s, None


def pvr_scores(
    rankers: Mapping[str, Ranker], user: int, history: History, at_us: int
) -> tuple[np.ndarray | None, str | None]:
    """`PvrSource.of(rankers).scores(...)`, for tools that hold rankers but no Engine (an
    Engine finds its source once, at load)."""
    return PvrSource.of(rankers).scores(user, history, at_us)


def request_arrays(
    store: FeatureStore, history: History, ctxs: Sequence[RequestContext]
) -> Requests:
    """Requests arrays for contexts whose country is already resolved."""
    return Requests(
        user=np.array([history.user_index(c.user_id) for c in ctxs], dtype=np.int32),
        device=np.array([c.device_code for c in ctxs], dtype=np.int8),
        hour=np.array([c.hour for c in ctxs], dtype=np.int8),
        weekend=np.array([c.is_weekend for c in ctxs], dtype=np.int8),
        country=np.array([store.country_code(c.country) for c in ctxs], dtype=np.int16),
        at_us=np.array([c.at_us for c in ctxs], dtype=np.int64),
    )


def pairs_for(
    store: FeatureStore,
    rows: Sequence[CandidateRow],
    req_index: int,
    pvr: np.ndarray | None,
) -> Pairs:
    """The (row, title) pairs of one request's rows, in row order then title order."""
    n_rows = len(rows)
    lens = np.fromiter((len(r.titles) for r in rows), dtype=np.int64, count=n_rows)
    n = int(lens.sum())
    if n == 0:
        return _empty_pairs()
    title = np.concatenate([r.titles for r in rows]).astype(np.int32)
    score = np.concatenate([r.scores for r in rows]).astype(np.float64)
    owner = np.repeat(np.arange(n_rows), lens)
    starts = np.cumsum(lens) - lens
    rank = np.arange(n) - np.repeat(starts, lens)
    top = np.repeat(np.maximum.reduceat(score, starts), lens)
    low = np.repeat(np.minimum.reduceat(score, starts), lens)
    span = top - low
    rel = np.where(span > 0, (score - low) / np.where(span > 0, span, 1.0), 1.0)
    kinds = np.array([store.kind_code(r.kind) for r in rows], dtype=np.int16)
    rankers = np.array([store.ranker_code(r.ranker) for r in rows], dtype=np.int16)
    if pvr is None:
        p = np.full(n, np.nan, dtype=np.float32)
        pct = p
    else:
        p = pvr[title].astype(np.float32)
        srt = np.sort(pvr)
        pct = (np.searchsorted(srt, pvr[title], side="left") / max(len(srt) - 1, 1)).astype(
            np.float32
        )
    return Pairs(
        req=np.full(n, req_index, dtype=np.int32),
        title=title,
        kind=kinds[owner],
        ranker=rankers[owner],
        score=score.astype(np.float32),
        score_rel=rel.astype(np.float32),
        rank=rank.astype(np.float32),
        row_len=lens[owner].astype(np.float32),
        pvr=p,
        pvr_rel=pct,
    )


def _empty_pairs() -> Pairs:
    e32 = np.empty(0, dtype=np.int32)
    ef = np.empty(0, dtype=np.float32)
    return Pairs(e32, e32, e32.astype(np.int16), e32.astype(np.int16), ef, ef, ef, ef, ef, ef)


def concat_pairs(parts: Sequence[Pairs]) -> Pairs:
    if not parts:
        return _empty_pairs()
    return Pairs(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Pairs.__dataclass_fields__)
    )


# ----- stage 4: the title model ---------------------------------------------------------------


def order_titles(
    rows: Sequence[CandidateRow], scores: np.ndarray, ranker_order: Sequence[bool] = ()
) -> tuple[list[CandidateRow], list[np.ndarray]]:
    """Each row's titles by descending title-model score (ties: the ranker's order), or in the
    ranker's order for the rows flagged in `ranker_order` (the title-order guard); the row's
    scores become the model's. Also returns, per row, the pair indices in the new order."""
    lens = [len(r.titles) for r in rows]
    owner = np.repeat(np.arange(len(rows)), lens)
    key = -scores
    if any(ranker_order):
        key = np.where(np.repeat(np.asarray(ranker_order, dtype=bool), lens), 0.0, key)
    # One sort for the page (by row, then score, then the ranker's order), not one per row.
    order = np.lexsort((np.arange(len(scores)), key, owner))
    ordered_scores = scores[order].astype(np.float32)
    out: list[CandidateRow] = []
    pair_idx: list[np.ndarray] = []
    start = 0
    for r, n in zip(rows, lens, strict=True):
        idx = order[start : start + n]
        own = idx - start
        out.append(
            CandidateRow(
                r.row_id,
                r.ranker,
                r.kind,
                r.title,
                r.evidence,
                r.titles[own],
                ordered_scores[start : start + n],
                None if r.progress is None else r.progress[own],
            )
        )
        pair_idx.append(idx)
        start += n
    return out, pair_idx


def visible_pairs(pair_idx: Sequence[np.ndarray], visible: int) -> tuple[np.ndarray, np.ndarray]:
    """(pair indices, owning row) of each row's first `visible` titles."""
    heads = [p[:visible] for p in pair_idx]
    lens = np.fromiter((len(h) for h in heads), dtype=np.int64, count=len(heads))
    flat = np.concatenate(heads) if len(heads) else np.empty(0, dtype=np.int64)
    return flat.astype(np.int64), np.repeat(np.arange(len(heads)), lens)


# ----- stage 5: row features, then the selectors with the row scorer chosen at load -------------


# The row-model columns that change as the page fills, computed per stage by the assembly
# (engine.request.selectors.row_states), in its order.
ROW_STATE_COLUMNS = np.array(
    [
        row_column(name)
        for name in (
            "rs_top",
            "rs_mean_visible",
            "rs_play_est",
            "pl_overlap_above",
            "pl_genre_sim_above",
            "pl_same_kind_above",
        )
    ],
    dtype=np.int64,
)


def row_features(
    store: FeatureStore,
    req: Requests,
    rows: Sequence[CandidateRow],
    title_x: np.ndarray,
    title_scores: np.ndarray,
    vis: np.ndarray,
    owner: np.ndarray,
) -> RowFeatures:
    """The row scorer's inputs for one request's rows: the row-model matrix (its per-stage
    columns are the assembly's to fill), the rows' kind codes and the device's column decay."""
    n = len(rows)
    kinds = np.array([store.kind_code(r.kind) for r in rows], dtype=np.int64)
    static = store.row_static(
        req,
        np.zeros(n, dtype=np.int64),
        kinds,
        np.array([store.ranker_code(r.ranker) for r in rows], dtype=np.int64),
        np.array([len(r.titles) for r in rows], dtype=np.float64),
        np.array([r.scores[0] if len(r.scores) else np.nan for r in rows], dtype=np.float64),
        title_x,
        title_scores,
        vis,
        owner,
    )
    return RowFeatures(
        np.ascontiguousarray(static, dtype=np.float32),
        ROW_STATE_COLUMNS,
        kinds,
        float(store.col_decay[int(req.device[0])]),
        store.title_genre_unit,
    )


def row_scorer_for(cfg: PageModelConfig, model: PageModel) -> RowScorer:
    """The row scorer `[page] row_order` names: the row model ("learned"), the title model's
    cascade play estimate ("cascade"), or the editorial `row_template` ("template", the
    row-model ablation of docs/benchmark.md)."""
    if cfg.row_order == "cascade":
        return score_rows_by_play_estimate()
    if cfg.row_order == "template":
        return score_rows_by_template(cfg.row_template)
    return score_rows_by_row_model(*model.row_trees())


def continuation_mode(history: History, user: int, at_us: int, cfg: PageModelConfig) -> bool:
    """The rule: pin Continue Watching on top when the member has a play started within
    `continuation_days` of the request, past `continuation_min_progress` and not finished."""
    if user < 0:
        return False
    s = history.user_plays_before(user, at_us)
    recent = (at_us - history.play_ts[s]) <= cfg.continuation_days * US_PER_DAY
    prog = history.play_progress[s]
    open_ = recent & (prog >= cfg.continuation_min_progress) & (prog < FINISHED_PROGRESS)
    if not open_.any():
        return False
    done = history.finished(user, at_us)
    return bool(np.isin(history.play_title[s][open_], done, invert=True).any())


# ----- the engine -----------------------------------------------------------------------------


class LiveLayer(Protocol):
    """Members' plays after the model's cut-off (engine.events.state.LiveState)."""

    def refresh(self) -> int:
        """Read what was appended since the last read; returns how many plays."""
        ...

    def history_for(self, snapshot: History, user_id: str) -> History: ...

    def features_for(self, store: FeatureStore, history: History) -> FeatureStore: ...

    def plays_since(
        self, position: int, snapshot: History, until_us: int
    ) -> tuple[LivePlays, int]: ...


@dataclass(frozen=True)
class Scored:
    """The request after features, the title model and the row features (shared by the page
    and the tools that time or inspect the stages)."""

    rows: list[CandidateRow]  # titles in model order, scores = title-model scores
    title_x: np.ndarray
    title_scores: np.ndarray
    row_features: RowFeatures  # row i for rows[i]


class Engine:
    """A loaded model directory: `page(user_id, device=..., at=..., country=...)`.

    What does not change between requests is settled here, once: the assembly rules, the row
    scorer `[page] row_order` names, and the PVR feature source."""

    def __init__(
        self,
        *,
        config: EngineConfig,
        page_config: PageModelConfig,
        history: History,
        rankers: Mapping[str, Ranker],
        store: FeatureStore,
        model: PageModel,
        model_version: str,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        self.manifest = dict(manifest or {})
        # The row-order guard training chose: the template where the row model did not beat it
        # (kept in page_config too, so what the engine reports is what it serves).
        if page_config.row_order == "learned" and self.manifest.get("row_order") == "template":
            page_config = page_config.model_copy(update={"row_order": "template"})
        self.config = config
        self.page_config = page_config
        self.history = history
        self.rankers = dict(rankers)
        self.store = store
        self.model = model
        self.model_version = model_version
        self.last_proposals = LastProposals()
        # The rankers that keep title-level counts live plays move (a `nearline` method).
        self._nearline_takers: list[Any] = [r for r in rankers.values() if hasattr(r, "nearline")]
        self._nearline_lock = threading.Lock()
        self.live = None
        a = config.assembly
        self.rules = AssemblyRules(
            pinned=tuple(a.pinned), max_rows_per_kind=dict(a.max_rows_per_kind), dedupe=a.dedupe
        )
        self.pvr = PvrSource.of(self.rankers)
        self.row_scorer = row_scorer_for(page_config, model)
        # Titles licensed everywhere: all a request without a country may be shown.
        self.titles_everywhere = int(history.available_in(None).sum())
        # The page's data_cutoff, to the second: the history's bound is exclusive, one
        # microsecond past the dataset's clock, and "00:00:00.000001" would only puzzle.
        self.data_cutoff = datetime.fromtimestamp(history.cutoff_us // 1_000_000, UTC)
        # The title-order guard training chose: rows of these kinds keep their ranker's order.
        self.ranker_order_kinds = frozenset(self.manifest.get("ranker_order_kinds", ()))

    # ----- the edge: request values in, a resolved RequestContext out -------------------------

    def context(
        self,
        user_id: str,
        device: str = "tv",
        at: datetime | str | None = None,
        country: str | None = None,
    ) -> RequestContext:
        """Validate request values (BadRequestError names the bad one) into a RequestContext
        whose country is the request's, else the member's (None when neither is known)."""
        if not isinstance(user_id, str) or not user_id:
            raise BadRequestError(f"user_id must be a non-empty string, got {user_id!r}")
        device = parse_device(device)
        if at is None:
            when = datetime.now(UTC)
        elif isinstance(at, str):
            when = parse_time(at)
        else:
            when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        return self.resolve(RequestContext(user_id, device, when, country))

    def resolve(self, ctx: RequestContext) -> RequestContext:
        """`ctx` with its country: the request's, else the member's, else `[serving]
        default_country`. With none of them, and titles licensed per country, BadRequestError:
        only the titles licensed everywhere could be shown, a thin or empty page that would look
        like an answer."""
        ctx = resolve_country(ctx, self.history, self.config.serving.default_country)
        if ctx.country is not None:
            return ctx
        if self.titles_everywhere < self.history.n_titles:
            known = self.history.user_index(ctx.user_id) >= 0
            raise BadRequestError(
                f"a country is needed: user {ctx.user_id!r} "
                + ("has no country in the data" if known else "is not in the model")
                + " and the request names none, and only "
                f"{self.titles_everywhere} of {self.history.n_titles} titles are licensed in "
                "every country; pass a country (--country US, ?country=US) or set [serving] "
                "default_country in the engine config"
            )
        return ctx

    def staleness(self, ctx: RequestContext) -> str | None:
        """A warning when the request is more than `[serving] stale_after_days` past the data
        cut-off: rows built on recent plays (Continue Watching, New Releases) thin out as the
        data ages, and nothing else on the page says so."""
        limit = self.config.serving.stale_after_days
        days = (ctx.at_us - self.history.cutoff_us) / US_PER_DAY
        if limit <= 0 or days <= limit:
            return None
        return (
            f"the request is {days:.0f} days past the model's data cut-off "
            f"({self.data_cutoff:%Y-%m-%d %H:%M} UTC; [serving] stale_after_days = {limit:g}): "
            "rows built on recent plays (Continue Watching, New Releases) may be missing; "
            "retrain on newer data or ask for a time nearer the cut-off"
        )

    def layout(self, device: str) -> DeviceLayout:
        return self.config.layout(device)

    def page(
        self,
        user_id: str,
        device: str = "tv",
        at: datetime | str | None = None,
        country: str | None = None,
    ) -> Page:
        """The member's homepage for this device, time (default: now) and country."""
        return self._page(self.context(user_id, device, at, country))

    def page_for(self, ctx: RequestContext) -> Page:
        """The whole pipeline for one request; no I/O."""
        return self._page(self.resolve(ctx))

    def fallback_page(self, ctx: RequestContext) -> Page:
        """Popular and trending rows from the history's counts alone (no ranker, no model),
        filtered like any row; `fallback=True`. For when the ranked page cannot be built."""
        ctx = self.resolve(ctx)
        assembled = self._fallback_assembly(ctx)
        trace = PageTrace(assembled.trace, self.history.title_ids, warnings=self._warnings(ctx))
        return self._fallback(ctx, assembled, trace)

    # ----- the pipeline, stage by stage, for a block of requests (contexts resolved) ----------

    def pages(self, requests: Sequence[RequestContext]) -> list[Page]:
        """The pages of a block of requests, in order, each equal to `page_for` of its request
        (the same JSON bytes): the rankers, the filters' masks and the PVR scores run once per
        member, time and country of the block, a ranker with `propose_block` once for the
        block, and the title model once over every (row, title) pair of the block. Blocks of a
        few hundred requests, a member's devices and times side by side, are what `rowrank
        precompute` asks for (through `iter_pages`). No I/O."""
        return list(self.iter_pages(requests))

    def iter_pages(self, requests: Sequence[RequestContext]) -> Iterator[Page]:
        """`pages`, a page at a time: the block's stages run at the first page, then each page
        is assembled when asked for. A caller that writes each page and drops it never holds a
        block of pages (about 400,000 small objects for 512 pages, which the cyclic garbage
        collector walks again and again while the block is alive)."""
        return self._pages([self.resolve(c) for c in requests])

    def member_history(self, ctx: RequestContext) -> History:
        """What this request reads of the member's plays: the snapshot, or with a live layer
        and plays of the member after the cut-off, a member-local History (the snapshot's
        titles and users, the member's snapshot plus live plays). A request before the cut-off
        reads the snapshot: rankers then recount the past from every member's plays."""
        if self.live is None or ctx.at_us < self.history.cutoff_us:
            return self.history
        return self.live.history_for(self.history, ctx.user_id)

    @property
    def live(self) -> LiveLayer | None:
        """Live member state over the snapshot (engine.events); None: the snapshot alone."""
        return self._live

    @live.setter
    def live(self, layer: LiveLayer | None) -> None:
        self._live = layer
        with self._nearline_lock:
            self._nearline_due = 0.0  # time.monotonic() of the next refresh
            self._nearline_position = 0  # the live layer's plays taken so far
            self._nearline_pending: list[LivePlays] = []  # taken, not yet given to the rankers
            for r in self._nearline_takers:
                r.nearline(None)  # back to the snapshot's counts
            self.last_proposals = LastProposals()

    def refresh_nearline(self, until_us: int | None = None) -> int:
        """Give the rankers that keep title-level counts (a `nearline` method: Trending) the
        live plays not given yet (a play stamped after `until_us`, default now, counts as at
        it); returns how many. Their counts are then as of the newest play: a request for an
        earlier time reads the snapshot's counts, so nothing after a request's time reaches it.
        Pages call it themselves every `[serving] nearline_seconds`."""
        with self._nearline_lock:
            self._take_live_plays(until_us)
            return self._give_live_plays()

    def _take_live_plays(self, until_us: int | None = None) -> None:
        """The live plays since the last take, converted to snapshot indices and kept until
        the next refresh: taken before every page, a few at a time, so no page pays for
        converting a minute of plays at once (300,000 at 5,000 events/s)."""
        if self.live is None or not self._nearline_takers:
            return
        until = until_us if until_us is not None else time.time_ns() // 1000
        plays, self._nearline_position = self.live.plays_since(
            self._nearline_position, self.history, until
        )
        if len(plays.title):
            self._nearline_pending.append(plays)

    def _give_live_plays(self) -> int:
        pending, self._nearline_pending = self._nearline_pending, []
        if not pending:
            return 0
        plays = LivePlays(
            np.concatenate([p.title for p in pending]),
            np.concatenate([p.country for p in pending]),
            np.concatenate([p.ts_us for p in pending]),
            max(p.as_of_us for p in pending),
        )
        for r in self._nearline_takers:
            r.nearline(plays)
        # The rows of the last request were proposed from the old counts.
        self.last_proposals = LastProposals()
        return len(plays.title)

    def follow_live(self) -> None:
        """Take the live layer's new plays (its members' state and the plays for the title
        counts), and give those to the nearline rankers when `[serving] nearline_seconds` is
        due. Every page calls it first; a server also calls it from a thread between pages
        (engine.serving.events_route.follow_live_state), so that a page under a stream of
        events finds only the last few to take, not all since the member's previous page."""
        if self.live is None:
            return
        every = self.config.serving.nearline_seconds
        if every <= 0 or not self._nearline_takers:
            self.live.refresh()
            return
        if not self._nearline_lock.acquire(blocking=False):
            return  # another thread is taking them; this page need not wait
        try:
            self._take_live_plays()
            if time.monotonic() >= self._nearline_due:
                self._give_live_plays()
                self._nearline_due = time.monotonic() + every
        finally:
            self._nearline_lock.release()

    def _page(self, ctx: RequestContext) -> Page:
        return next(self._pages([ctx]))

    def _pages(self, ctxs: Sequence[RequestContext]) -> Iterator[Page]:
        """The block's pages in order, in runs of consecutive requests that read the same
        History (`member_history`, the one place a request's plays come from: the snapshot for
        most, a member's own History when live plays extend it)."""
        self.follow_live()
        histories = [self.member_history(c) for c in ctxs]
        start = 0
        while start < len(ctxs):
            end = start + 1
            while end < len(ctxs) and histories[end] is histories[start]:
                end += 1
            yield from self._pages_of(ctxs[start:end], histories[start])
            start = end

    def _pages_of(self, ctxs: Sequence[RequestContext], h: History) -> Iterator[Page]:
        cands = candidate_rows_block(self.rankers, ctxs, h, self.page_config, self.last_proposals)
        pvrs: dict[tuple[str, int], tuple[np.ndarray | None, str | None]] = {}
        for ctx in ctxs:
            key = (ctx.user_id, ctx.at_us)
            if key not in pvrs:
                pvrs[key] = self.pvr.scores(h.user_index(ctx.user_id), h, ctx.at_us)
        ranked = [i for i, c in enumerate(cands) if c.rows]
        scored = dict(
            zip(
                ranked,
                self.score_block(
                    [ctxs[i] for i in ranked],
                    [cands[i].rows for i in ranked],
                    [pvrs[ctxs[i].user_id, ctxs[i].at_us][0] for i in ranked],
                    history=h,
                ),
                strict=True,
            )
        )
        pending = cands[::-1]  # popped page by page: each page's inputs go once it is built
        del cands
        for i, ctx in enumerate(ctxs):
            pvr_error = pvrs[ctx.user_id, ctx.at_us][1]
            yield self._assembled_page(ctx, h, pending.pop(), pvr_error, scored.pop(i, None))

    def _assembled_page(
        self,
        ctx: RequestContext,
        h: History,
        cand: Candidates,
        pvr_error: str | None,
        scored: Scored | None,
    ) -> Page:
        """Stage 6 and the page for one request: the selectors over its scored rows, or the
        fallback page when no ranker has a row left (`scored` is None)."""
        user = h.user_index(ctx.user_id)
        if scored is None:
            assembled = self._fallback_assembly(ctx)
            trace = PageTrace(
                assembled.trace,
                h.title_ids,
                cold_start=user < 0,
                rankers=cand.proposed,
                failed_rankers=cand.failed,
                filters=cand.removed,
                pvr_features=pvr_error,
                reason="no candidate rows",
                warnings=self._warnings(ctx),
            )
            return self._fallback(ctx, assembled, trace)
        cont = continuation_mode(h, user, ctx.at_us, self.page_config)
        assembled = assemble_page(
            scored.rows,
            self.row_scorer,
            self.layout(ctx.device),
            self.rules,
            continuation_mode=cont,
            features=scored.row_features,
        )
        trace = PageTrace(
            assembled.trace,
            h.title_ids,
            cold_start=user < 0,
            rankers=cand.proposed,
            failed_rankers=cand.failed,
            filters=cand.removed,
            pvr_features=pvr_error,
            continuation_mode=cont,
            scored=(len(cand.rows), len(scored.title_scores)),
            warnings=self._warnings(ctx),
        )
        return build_page(
            assembled,
            h,
            ctx,
            model_version=self.model_version,
            data_cutoff=self.data_cutoff,
            generated_at=ctx.at,
            trace=trace,
        )

    def _warnings(self, ctx: RequestContext) -> tuple[str, ...] | None:
        stale = self.staleness(ctx)
        return None if stale is None else (stale,)

    def filter(
        self, rows: Sequence[CandidateRow], ctx: RequestContext
    ) -> tuple[list[CandidateRow], dict[str, dict[str, int]]]:
        """Stage 2 with this engine's limits (filter_rows_for_page)."""
        return filter_rows_for_page(rows, ctx, self.history, self.rankers, self.page_config)

    def score(
        self,
        ctx: RequestContext,
        rows: Sequence[CandidateRow],
        pvr: np.ndarray | None,
        layout: DeviceLayout | None = None,
        history: History | None = None,
    ) -> Scored:
        """Stages 3 to 5 for one request's filtered rows: title features, the title model,
        row features. `layout`: the request device's unless given; `history`: see
        `score_block`."""
        layouts = None if layout is None else [layout]
        return self.score_block([ctx], [rows], [pvr], layouts, history)[0]

    def score_block(
        self,
        ctxs: Sequence[RequestContext],
        rows: Sequence[Sequence[CandidateRow]],
        pvrs: Sequence[np.ndarray | None],
        layouts: Sequence[DeviceLayout] | None = None,
        history: History | None = None,
    ) -> list[Scored]:
        """`score` for each of a block of requests: one feature matrix and one title-model call
        over every pair of the block. Both compute each pair's row on its own (a compiled pass,
        a tree walk per row), so a request's scores do not depend on the block around it. With
        `history` from `member_history` holding live plays (then the requests are all that
        member's), the member's features are recomputed from them (read as member 0 of a
        one-member store)."""
        store = self.store
        req = request_arrays(store, self.history, ctxs)
        if self.live is not None and history is not None and history.live_member >= 0:
            store = self.live.features_for(store, history)
            req = replace(req, user=np.zeros(len(ctxs), dtype=np.int32))
        parts = [pairs_for(store, r, i, p) for i, (r, p) in enumerate(zip(rows, pvrs, strict=True))]
        X = store.title_matrix(req, concat_pairs(parts))
        s = self.model.score_titles(X)
        out = []
        start = 0
        for i, (ctx, r, part) in enumerate(zip(ctxs, rows, parts, strict=True)):
            n = len(part.title)
            x_i, s_i = X[start : start + n], s[start : start + n]
            start += n
            keep = [row.kind in self.ranker_order_kinds for row in r]
            ordered, pair_idx = order_titles(r, s_i, keep)
            layout = self.layout(ctx.device) if layouts is None else layouts[i]
            vis, owner = visible_pairs(pair_idx, layout.visible_titles)
            feats = row_features(store, req.take(i), r, x_i, s_i, vis, owner)
            out.append(Scored(ordered, x_i, s_i, feats))
        return out

    def warm_up(self) -> None:
        """Build one page and one fallback page and drop them, so that the compiled loops
        (numba) are loaded from their cache, or compiled the first time after an install
        (seconds), before a request waits for them. `rowrank serve` does this before a model is
        ready (engine.serving.http)."""
        h = self.history
        if len(h.user_ids):
            at = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC)
            user = str(h.user_ids[0])
            # A country some title is licensed in: a member without one (and no default
            # country) would be refused, and a server that cannot warm up never gets ready.
            country = next((c for listed in h.title_countries for c in listed), None)
            self.page(user, "tv", at, country)
            self.fallback_page(self.context(user, "tv", at, country))

    # ----- the fallback page -------------------------------------------------------------------

    def _fallback_assembly(self, ctx: RequestContext) -> AssembledPage:
        h = self.history
        layout = self.layout(ctx.device)
        n = layout.titles_per_row * 2
        pop = self.store.title_pop
        rows = []
        for rid, label, score in (
            ("fallback_popular", "Popular", pop[:, 2] + 0.1 * pop[:, 1]),
            ("fallback_trending", "Trending Now", pop[:, 0] + 0.5 * pop[:, 1]),
        ):
            order = np.lexsort((np.arange(h.n_titles), -score))[: n * 4]
            rows.append(
                CandidateRow(
                    rid,
                    rid,
                    rid,
                    label,
                    None,
                    order.astype(np.int32),
                    np.ascontiguousarray(score[order], dtype=np.float32),
                )
            )
        kept, _ = apply_filters(rows, ctx, h, {})
        kept = [r.take(np.arange(min(n, len(r.titles)))) for r in kept]
        return assemble_page(
            kept,
            score_rows_by_top_titles(layout.visible_titles),
            layout,
            AssemblyRules(pinned=(), pin_continue_watching=False),
        )

    def _fallback(self, ctx: RequestContext, assembled: AssembledPage, trace: PageTrace) -> Page:
        return build_page(
            assembled,
            self.history,
            ctx,
            model_version=self.model_version,
            data_cutoff=self.data_cutoff,
            generated_at=ctx.at,
            fallback=True,
            trace=trace,
        )


# ----- loading a model directory --------------------------------------------------------------


def load(model_dir: Path) -> Engine:
    """Load a directory written by `rowrank train` (engine.training.train); ModelLoadError names the
    problem (missing directory, version, checksum, feature order, ranker state)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    try:
        doc = orjson.loads((model_dir / CONFIG_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {model_dir / CONFIG_FILE}: {exc}") from exc
    try:
        config = parse_config(doc, source=str(model_dir / CONFIG_FILE))
        page_cfg = PageModelConfig.from_section(config.page, str(model_dir / CONFIG_FILE))
    except ConfigError as exc:
        raise ModelLoadError(f"the config saved in {model_dir} is not valid here: {exc}") from exc
    history = History.load(model_dir / HISTORY_DIR)
    rankers = build_rankers(config)
    for name, ranker in rankers.items():
        ranker.load(model_dir / "rankers" / name, history)
    store = FeatureStore.load(model_dir / "features", history)
    model = PageModel.load(
        model_dir, manifest.get("features", {}), context_features=page_cfg.context_features
    )
    return Engine(
        config=config,
        page_config=page_cfg,
        history=history,
        rankers=rankers,
        store=store,
        model=model,
        model_version=str(manifest["model_version"]),
        manifest=manifest,
    )
