"""Building pages for the routes: a page with its fallback, its metrics and its impression.

`Service` is one worker's state shared by the routes; pages are built in the threadpool, one at
a time per worker.

Fail open: a ranker that raises drops its rows (the engine does this; counted here from the page
trace); a page that cannot be built is replaced by `engine.fallback_page(ctx)`; when even that
fails the answer is 503 with a JSON error.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio.to_thread
from starlette.requests import Request

from engine.errors import BadRequestError
from engine.request.context import RequestContext, parse_time
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout
from engine.serving.api_errors import ApiError
from engine.serving.impression_log import ImpressionLogger
from engine.serving.metrics import Metrics, failed_rankers
from engine.serving.model_holder import EngineLike, ModelHolder, SharedModelState
from engine.serving.params import MAX_BATCH, PageRequest

log = logging.getLogger("rowrank.serve")

# Concurrent page builds per worker (the rest wait in the event loop). Page building is
# CPU-bound Python: a second thread only fights for the GIL. `ROWRANK_PAGE_THREADS=4 python
# bench/bench_serve_load.py` against the default: 1 worker 62 vs 77 pages/s (page build 53 vs
# 12 ms), 2 workers p99 137 vs 80 ms at the same 142-143 pages/s.
PAGE_THREADS = 1
ENV_PAGE_THREADS = "ROWRANK_PAGE_THREADS"  # overrides PAGE_THREADS


@dataclass
class Built:
    """One page built for a request: its JSON bytes, the page, whether it is a fallback, and
    its impression id (None when impressions are not logged)."""

    body: bytes
    page: Any
    fallback: bool
    page_id: str | None = None


@dataclass
class Service:
    """State shared by the routes of one worker."""

    holder: ModelHolder
    admin_token: str | None
    max_batch: int = MAX_BATCH
    logger: ImpressionLogger | None = None
    state: SharedModelState | None = None
    metrics: Metrics = field(default_factory=Metrics)
    limiter: anyio.CapacityLimiter | None = None  # made in the lifespan (needs the event loop)
    live: Any = None  # engine.events.state.LiveState: members' plays after the cut-off

    def build(self, eng: EngineLike, req: PageRequest, *, log_impression: bool = True) -> Built:
        """One page with its fallback (runs in a worker thread). Raises ApiError 400/503."""
        t0 = time.perf_counter()
        fallback = False
        try:
            page = eng.page(req.user_id, device=req.device, at=req.at, country=req.country)
            body = page.to_json()
        except BadRequestError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        except Exception:
            log.exception("page for user %r failed; serving the fallback page", req.user_id)
            try:
                page = eng.fallback_page(request_context(eng, req))
                body = page.to_json()
                fallback = True
            except Exception:
                log.exception("fallback page for user %r failed", req.user_id)
                self.metrics.count_failed_page()
                raise ApiError(
                    503,
                    "page_unavailable",
                    f"no page could be built for user {req.user_id!r} (the fallback failed too)",
                ) from None
        return self._finish(eng, page, body, fallback, time.perf_counter() - t0, log_impression)

    def _finish(
        self,
        eng: EngineLike,
        page: Any,
        body: bytes,
        fallback: bool,
        seconds: float,
        log_impression: bool = True,
    ) -> Built:
        """Count a built page in the metrics and log its impression."""
        # The engine serves its own fallback page when no ranker has a row: count both kinds.
        fallback = fallback or bool(getattr(page, "fallback", False))
        self.metrics.observe_page(seconds, failed_rankers(page), fallback)
        page_id = None
        if log_impression and self.logger is not None:
            page_id = uuid.uuid4().hex
            self.logger.log(page, page_id, layout_for(eng, page.context.device))
        return Built(body, page, fallback, page_id)

    def build_many(self, eng: EngineLike, reqs: Sequence[PageRequest]) -> list[Built]:
        """The pages of a batch, in order: through the engine's block path (`Engine.pages`,
        the same bytes as one page at a time) when it has one; when the block fails, a page at
        a time, each with its own fallback. Raises ApiError 400 for a bad request."""
        pages_of = getattr(type(eng), "pages", None)  # on the class: see propose_block_rows
        if not callable(pages_of) or len(reqs) < 2:
            return [self.build(eng, r) for r in reqs]
        t0 = time.perf_counter()
        try:
            ctxs = [request_context(eng, r) for r in reqs]
            pages = pages_of(eng, ctxs)
            bodies = [p.to_json() for p in pages]
        except BadRequestError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        except Exception:
            log.exception("a batch of %d pages failed; building them one at a time", len(reqs))
            return [self.build(eng, r) for r in reqs]
        each = (time.perf_counter() - t0) / len(reqs)  # the block's time, shared out
        return [self._finish(eng, p, b, False, each) for p, b in zip(pages, bodies, strict=True)]


def request_context(eng: EngineLike, req: PageRequest) -> RequestContext:
    """The context the engine would build for `req` (for the fallback page)."""
    make = getattr(eng, "context", None)
    if callable(make):
        ctx: RequestContext = make(req.user_id, device=req.device, at=req.at, country=req.country)
        return ctx
    at = parse_time(req.at) if req.at is not None else datetime.now().astimezone()
    return RequestContext(req.user_id, req.device, at, req.country)


def layout_for(eng: EngineLike, device: str) -> DeviceLayout | None:
    """The device layout the engine builds pages with (its config may override the default)."""
    layout = getattr(eng, "layout", None)
    if callable(layout):
        with contextlib.suppress(Exception):
            result: DeviceLayout = layout(device)
            return result
    return DEFAULT_LAYOUTS.get(device)


def service_of(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def build_in_thread(svc: Service, func: Callable[..., Any], *args: Any) -> Any:
    """Page work in the threadpool, at most `PAGE_THREADS` at once per worker: pages are
    CPU-bound under one GIL, so more threads only interleave them and stretch every latency."""
    return await anyio.to_thread.run_sync(func, *args, limiter=svc.limiter)
