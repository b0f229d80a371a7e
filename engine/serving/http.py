"""The HTTP service: homepages as JSON, a preview as HTML, health, metrics and model hot swap.

Starlette on uvicorn. The engine is CPU-bound, so every page is built in the threadpool (the
event loop keeps answering /healthz while a page is being built), one page at a time per
worker; `--workers N` runs N worker processes (`run_workers`), each loading the model once and
listening on its own SO_REUSEPORT socket so the kernel spreads connections over them.

Routes (docs/serve.md, engine/serving/static/openapi.json):

    GET  /v1/users/{user_id}/page?device=&at=&country=   one page, the bytes of `rowrank page`
    POST /v1/pages                                       {"requests": [...]} -> {"pages": [...]}
    GET  /preview/{user_id}?device=&at=&country=         the page as HTML, for people
    POST /v1/admin/reload                                hot swap (Bearer ROWRANK_ADMIN_TOKEN)
    GET  /healthz  /readyz  /metrics  /openapi.json

Model swap: the live engine is one attribute of `ModelHolder`. A request reads it once and
builds its whole page with that engine; a reload builds the new engine beside the old one and
then rebinds the attribute (a single reference assignment, atomic under the GIL). In-flight
requests finish on the old model, later ones get the new one, none sees a half-loaded model.
With several workers, the worker that took the reload writes the new model directory to a
small state file and the others follow within `STATE_POLL_SECONDS`.

Fail open: a ranker that raises drops its rows (the engine does this; counted here from the page
trace); a page that cannot be built is replaced by `engine.fallback_page(ctx)`; when even that
fails the answer is 503 with a JSON error. Bad input is always a 4xx with
`{"error": {"code": ..., "message": ...}}`, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import hmac
import html
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.data.columns import DEVICES
from engine.errors import BadRequestError
from engine.request.context import RequestContext, parse_device, parse_time
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout
from engine.serving.impression_log import ImpressionLogger
from engine.serving.impression_log import Scope as LogScope
from engine.serving.processes import exit_with_parent, freeze_loaded_objects

log = logging.getLogger("rowrank.serve")

MAX_BATCH = 100  # pages per POST /v1/pages; more is 413
MAX_BODY_BYTES = 1 << 20  # a batch of 100 requests is ~15 KB; anything near 1 MB is abuse
MAX_USER_ID_CHARS = 256
QUERY_FIELDS = ("device", "at", "country")
BATCH_FIELDS = ("user_id", *QUERY_FIELDS)
COUNTRY_RE = re.compile(r"[A-Z]{2}")
STATE_POLL_SECONDS = 0.5
WORKER_MIN_UPTIME_SECONDS = 10.0  # a worker dying sooner is not restarted: the server stops
ENV_WORKER_MIN_UPTIME = "ROWRANK_WORKER_MIN_UPTIME"  # overrides WORKER_MIN_UPTIME_SECONDS
# Concurrent page builds per worker (the rest wait in the event loop). Page building is
# CPU-bound Python: a second thread only fights for the GIL. `ROWRANK_PAGE_THREADS=4 python
# bench/bench_serve_load.py` against the default: 1 worker 62 vs 77 pages/s (page build 53 vs
# 12 ms), 2 workers p99 137 vs 80 ms at the same 142-143 pages/s.
PAGE_THREADS = 1
# A keep-alive connection is closed at its first answer after this many seconds open (0:
# never), as nginx's keepalive_time does. Workers' SO_REUSEPORT sockets spread connections, not
# requests: a client holding a few long-lived connections can find them all hashed onto one
# worker while the other idles. Closing makes the client reconnect and be hashed again. By time,
# not by request count: a count lets connections on an idle worker reach it first and re-roll,
# while those crowded on a busy one crawl toward it, so crowded splits last longest (measured:
# docs/serve.md). One TCP handshake a second per connection costs nothing beside page builds.
KEEPALIVE_SECONDS = 1.0
ENV_KEEPALIVE_SECONDS = "ROWRANK_KEEPALIVE_SECONDS"  # overrides KEEPALIVE_SECONDS
# Page build + serialization, seconds. The target is p99 < 50 ms, so resolution sits below it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JSON = "application/json"
ENV_ADMIN_TOKEN = "ROWRANK_ADMIN_TOKEN"
ENV_PAGE_THREADS = "ROWRANK_PAGE_THREADS"  # overrides PAGE_THREADS
ENV_CONFIG = "ROWRANK_SERVE_CONFIG"  # JSON ServeConfig handed to each worker process

ROUTE_PAGE = "/v1/users/{user_id}/page"
ROUTE_BATCH = "/v1/pages"
ROUTE_RELOAD = "/v1/admin/reload"
ROUTE_PREVIEW = "/preview/{user_id}"


class EngineLike(Protocol):
    """What the service needs from `engine.pipeline.Engine`."""

    model_version: str

    def page(
        self, user_id: str, device: str = ..., at: Any = ..., country: str | None = ...
    ) -> Any: ...

    def fallback_page(self, ctx: RequestContext) -> Any: ...


Loader = Callable[[Path], EngineLike]


def default_loader(model_dir: Path) -> EngineLike:
    """engine.load, then one page built and dropped (Engine.warm_up): the compiled loops are
    ready before /readyz says so, at start-up and on reload, not on a client's request."""
    import engine

    eng = engine.load(model_dir)
    eng.warm_up()
    return eng


# ----- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 2xx, with the JSON error body the client gets."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(exc: ApiError) -> Response:
    return Response(
        error_body(exc.code, exc.message), exc.status, headers=exc.headers, media_type=JSON
    )


# ----- request parsing --------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One validated page request (the HTTP edge's view; the engine builds the context)."""

    user_id: str
    device: str = "tv"
    at: str | None = None  # ISO 8601 as sent; validated, passed on unchanged
    country: str | None = None


def check_user_id(user_id: Any, where: str = "user_id") -> str:
    if not isinstance(user_id, str) or not user_id:
        raise ApiError(400, "bad_user_id", f"{where} must be a non-empty string, got {user_id!r}")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise ApiError(
            400,
            "bad_user_id",
            f"{where} has {len(user_id)} characters; at most {MAX_USER_ID_CHARS} are allowed",
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in user_id):
        raise ApiError(400, "bad_user_id", f"{where} {user_id!r} contains control characters")
    return user_id


def parse_fields(
    user_id: Any, fields: Mapping[str, Any], where: str, *, allowed: Sequence[str] = QUERY_FIELDS
) -> PageRequest:
    """Validate one request's fields; every error names the bad value and what is allowed."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(allowed)}",
        )
    uid = check_user_id(user_id, f"{where}: user_id")
    values: dict[str, str | None] = {}
    for name in QUERY_FIELDS:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"bad_{name}", f"{where}: {name} must be a string, got {value!r}")
        values[name] = value
    device = values["device"]
    at = values["at"]
    country = values["country"]
    try:
        device = parse_device("tv" if device is None else device)
        if at is not None:
            parse_time(at)
    except BadRequestError as exc:
        code = "bad_device" if device not in DEVICES else "bad_time"
        raise ApiError(400, code, f"{where}: {exc}") from None
    if country is not None and not COUNTRY_RE.fullmatch(country):
        raise ApiError(
            400,
            "bad_country",
            f"{where}: country {country!r} is not a two-letter upper-case ISO 3166 code "
            "(e.g. US, DE)",
        )
    return PageRequest(uid, device, at, country)


def parse_query(request: Request, *, blank_is_absent: bool = False) -> dict[str, str]:
    """The query string as a dict: strict UTF-8, each field at most once."""
    qs = request.scope.get("query_string", b"")
    try:
        pairs = parse_qsl(qs.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "bad_query", "the query string is not valid percent-encoded UTF-8"
        ) from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise ApiError(400, "duplicate_field", f"query field {k!r} is given more than once")
        if not (blank_is_absent and v == ""):
            out[k] = v
    return out


# ----- metrics ----------------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Prometheus counters, written by hand (text format 0.0.4). One set per worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.ranker_failures: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.fallback_pages = 0
        self.failed_pages = 0  # neither the page nor the fallback could be built: 503
        self.pages = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def count_request(self, route: str, method: str, status: int) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1

    def observe_page(self, seconds: float, failed_rankers: Iterable[str], fallback: bool) -> None:
        i = 0
        while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
            i += 1
        with self._lock:
            self.pages += 1
            self.latency_counts[i] += 1
            self.latency_sum += seconds
            self.fallback_pages += fallback
            for name in failed_rankers:
                self.ranker_failures[name] += 1

    def count_failed_page(self) -> None:
        with self._lock:
            self.failed_pages += 1

    def count_reload(self, result: str) -> None:
        with self._lock:
            self.reloads[result] += 1

    def render(self, holder: ModelHolder, logger: ImpressionLogger | None) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("rowrank_http_requests_total", "counter", "HTTP requests by route and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(
                    f'rowrank_http_requests_total{{route="{_label(route)}",method="{method}",'
                    f'status="{status}"}} {n}'
                )
            head(
                "rowrank_page_seconds",
                "histogram",
                "Time to build and serialize one page (engine + JSON), fallbacks included.",
            )
            cumulative = 0
            for le, n in zip((*LATENCY_BUCKETS, "+Inf"), self.latency_counts, strict=True):
                cumulative += n
                out.append(f'rowrank_page_seconds_bucket{{le="{le}"}} {cumulative}')
            out.append(f"rowrank_page_seconds_sum {self.latency_sum:.6f}")
            out.append(f"rowrank_page_seconds_count {self.pages}")
            head(
                "rowrank_ranker_failures_total",
                "counter",
                "Rankers that raised while building a page (their rows were dropped).",
            )
            for name, n in sorted(self.ranker_failures.items()):
                out.append(f'rowrank_ranker_failures_total{{ranker="{_label(name)}"}} {n}')
            head(
                "rowrank_fallback_pages_total",
                "counter",
                "Fallback pages served (the ranked page failed, or no ranker had a row).",
            )
            out.append(f"rowrank_fallback_pages_total {self.fallback_pages}")
            head(
                "rowrank_page_failures_total",
                "counter",
                "Requests answered 503 because neither the page nor the fallback could be built.",
            )
            out.append(f"rowrank_page_failures_total {self.failed_pages}")
            head("rowrank_model_reloads_total", "counter", "Model reloads by result.")
            for result, n in sorted(self.reloads.items()):
                out.append(f'rowrank_model_reloads_total{{result="{result}"}} {n}')
        head("rowrank_model_info", "gauge", "The model this worker serves (value always 1).")
        eng = holder.engine
        if eng is not None:
            out.append(
                f'rowrank_model_info{{model_version="{_label(str(eng.model_version))}",'
                f'model_dir="{_label(str(holder.model_dir))}"}} 1'
            )
        head("rowrank_model_ready", "gauge", "1 when a model is loaded and pages are served.")
        out.append(f"rowrank_model_ready {int(eng is not None)}")
        if logger is not None:
            head("rowrank_impression_pages_total", "counter", "Served pages by impression outcome.")
            out.append(f'rowrank_impression_pages_total{{outcome="logged"}} {logger.pages_logged}')
            out.append(
                f'rowrank_impression_pages_total{{outcome="dropped"}} {logger.pages_dropped}'
            )
            head("rowrank_impression_rows_total", "counter", "Impression rows written to Parquet.")
            out.append(f"rowrank_impression_rows_total {logger.rows_written}")
            head("rowrank_impression_write_errors_total", "counter", "Part files not written.")
            out.append(f"rowrank_impression_write_errors_total {logger.write_errors}")
        return "\n".join(out) + "\n"


def failed_rankers(page: Any) -> list[str]:
    """Ranker instance names the page trace records as failed (a trace without them: none)."""
    trace = getattr(page, "trace", None) or {}
    failed = trace.get("failed_rankers") or trace.get("rankers_failed") or ()
    if isinstance(failed, Mapping):
        return [str(k) for k in failed]
    return [str(f.get("ranker", f)) if isinstance(f, Mapping) else str(f) for f in failed]


# ----- the model holder: one reference, swapped atomically --------------------------------------


class ModelHolder:
    """The live engine and where it came from. `engine` is rebound, never mutated."""

    def __init__(self, model_dir: Path, root: Path, loader: Loader) -> None:
        self.model_dir = model_dir.resolve()
        self.root = root.resolve()
        self.loader = loader
        self.engine: EngineLike | None = None
        self.load_error: str | None = None
        self.generation = 0  # of the shared state file; 0 = the initial model
        self._reload_lock = threading.Lock()

    def require(self) -> EngineLike:
        eng = self.engine  # read once: the whole request uses this engine
        if eng is None:
            detail = f": {self.load_error}" if self.load_error else " (still loading)"
            raise ApiError(503, "not_ready", f"no model is loaded{detail}")
        return eng

    def resolve(self, requested: str | None) -> Path:
        """A model directory inside the allowed root (relative paths are taken from the root)."""
        if requested is None:
            return self.model_dir
        if not isinstance(requested, str) or not requested or "\x00" in requested:
            raise ApiError(400, "bad_model_dir", f"model_dir must be a path, got {requested!r}")
        path = Path(requested)
        try:
            path = (path if path.is_absolute() else self.root / path).resolve()
            inside = path.is_relative_to(self.root)
            is_dir = inside and path.is_dir()  # nothing outside the root is even looked at
        except (OSError, RuntimeError) as exc:  # a name too long; a symlink loop (RuntimeError)
            shown = requested if len(requested) <= 200 else requested[:200] + "..."
            raise ApiError(
                400,
                "bad_model_dir",
                f"model_dir {shown!r} cannot be resolved: {getattr(exc, 'strerror', None) or exc}",
            ) from None
        if not inside:
            raise ApiError(
                400,
                "model_dir_outside_root",
                f"model_dir {requested!r} resolves outside the models root {self.root}; "
                "only directories inside it can be loaded",
            )
        if not is_dir:
            raise ApiError(
                422, "model_dir_not_found", f"model_dir {requested!r} is not a directory"
            )
        return path

    def load_initial(self) -> None:
        """Load the starting model (run in a background thread at start-up)."""
        try:
            self.engine = self.loader(self.model_dir)
            self.load_error = None
            freeze_loaded_objects()
            log.info("model %s loaded from %s", self.engine.model_version, self.model_dir)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model in %s: %s", self.model_dir, self.load_error)

    def swap(
        self,
        path: Path,
        *,
        blocking: bool = False,
        publish: Callable[[Path], int] | None = None,
        generation: int | None = None,
    ) -> tuple[EngineLike | None, EngineLike] | None:
        """Load `path` beside the live engine, then rebind. Returns (old, new).

        `publish` (a taken reload) announces the directory to the other workers and returns
        the new generation; `generation` (a followed reload) is the one being followed, and
        the call returns None when this worker already serves it. Raises ApiError 409 while
        another reload runs, 422 when the directory does not load (the old engine serves on)."""
        if not self._reload_lock.acquire(blocking=blocking):
            raise ApiError(409, "reload_in_progress", "another reload is running; retry later")
        gc.unfreeze()  # the model the last swap replaced can be collected now
        try:
            if generation is not None and generation <= self.generation:
                return None
            try:
                new = self.loader(path)
            except Exception as exc:
                raise ApiError(
                    422,
                    "model_load_failed",
                    f"cannot load {path}: {type(exc).__name__}: {exc}; the previous model "
                    "keeps serving",
                ) from exc
            if publish is not None:
                generation = publish(path)
            old = self.engine
            # One rebinding of `engine` is the swap; readers never see a half-loaded model.
            self.engine, self.model_dir, self.load_error = new, path, None
            if generation is not None:
                self.generation = generation
            return old, new
        finally:
            freeze_loaded_objects()
            self._reload_lock.release()


class SharedModelState:
    """The model directory every worker should serve: a JSON file plus a lock file, shared by
    the workers of one `rowrank serve`. Generations only grow."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "model.json"
        self.lock_path = directory / "model.lock"

    def read(self) -> tuple[int, str | None]:
        try:
            doc = orjson.loads(self.path.read_bytes())
            return int(doc["generation"]), str(doc["model_dir"])
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable model state %s: %s", self.path, exc)
            return 0, None

    def publish(self, model_dir: Path) -> int:
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.read()[0] + 1
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps({"generation": generation, "model_dir": str(model_dir)}))
            os.replace(tmp, self.path)
            return generation


# ----- the service ------------------------------------------------------------------------------


@dataclass
class ServeConfig:
    """Everything a worker needs to build the app (JSON-able: handed to worker processes)."""

    model_dir: str
    models_root: str | None = None
    impressions_dir: str | None = None
    impressions_scope: str = "visible"
    state_dir: str | None = None  # set when several workers share reloads
    max_batch: int = MAX_BATCH

    def to_json(self) -> str:
        return orjson.dumps(self.__dict__).decode()

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**orjson.loads(text))


@dataclass
class Built:
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
        # The engine serves its own fallback page when no ranker has a row: count both kinds.
        fallback = fallback or bool(getattr(page, "fallback", False))
        self.metrics.observe_page(time.perf_counter() - t0, failed_rankers(page), fallback)
        page_id = None
        if log_impression and self.logger is not None:
            page_id = uuid.uuid4().hex
            self.logger.log(page, page_id, layout_for(eng, page.context.device))
        return Built(body, page, fallback, page_id)

    def build_many(self, eng: EngineLike, reqs: Sequence[PageRequest]) -> list[Built]:
        return [self.build(eng, r) for r in reqs]


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


def _service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers=dict(headers or {}), media_type=JSON)


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


async def _build(svc: Service, func: Callable[..., Any], *args: Any) -> Any:
    """Page work in the threadpool, at most `PAGE_THREADS` at once per worker: pages are
    CPU-bound under one GIL, so more threads only interleave them and stretch every latency."""
    return await anyio.to_thread.run_sync(func, *args, limiter=svc.limiter)


# ----- routes -----------------------------------------------------------------------------------


async def get_page(request: Request) -> Response:
    svc = _service(request)
    req = parse_fields(request.path_params["user_id"], parse_query(request), "query")
    eng = svc.holder.require()
    built: Built = await _build(svc, svc.build, eng, req)
    headers = {"x-model-version": str(eng.model_version)}
    if built.page_id is not None:
        headers["x-page-id"] = built.page_id
    return Response(built.body, headers=headers, media_type=JSON)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the request body exceeds {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_json", f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


async def post_pages(request: Request) -> Response:
    svc = _service(request)
    doc = _json_object(await read_body(request), "the request body")
    extra = sorted(set(doc) - {"requests"})
    if extra:
        raise ApiError(400, "unknown_field", f"body: unknown field {extra[0]!r}; allowed: requests")
    items = doc.get("requests")
    if not isinstance(items, list):
        raise ApiError(
            400, "bad_requests", f'body: "requests" must be a list of objects, got {items!r:.80}'
        )
    if len(items) > svc.max_batch:
        raise ApiError(
            413,
            "batch_too_large",
            f"{len(items)} requests in one batch; at most {svc.max_batch} are allowed",
        )
    reqs = []
    for i, item in enumerate(items):
        where = f"requests[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, "bad_requests", f"{where} must be an object, got {item!r:.80}")
        fields = {k: v for k, v in item.items() if k != "user_id"}
        if "user_id" not in item:
            raise ApiError(400, "bad_user_id", f"{where}: user_id is required")
        reqs.append(parse_fields(item["user_id"], fields, where))
    eng = svc.holder.require()
    built: list[Built] = await _build(svc, svc.build_many, eng, reqs)
    body = b'{"pages":[' + b",".join(b.body for b in built) + b"]}"
    headers = {"x-model-version": str(eng.model_version)}
    if svc.logger is not None:
        headers["x-page-ids"] = ",".join(b.page_id or "" for b in built)
    return Response(body, headers=headers, media_type=JSON)


async def healthz(request: Request) -> Response:
    return _json({"status": "alive"})


async def readyz(request: Request) -> Response:
    holder = _service(request).holder
    eng = holder.engine
    if eng is None:
        raise ApiError(
            503, "not_ready", f"no model is loaded: {holder.load_error or 'still loading'}"
        )
    return _json(
        {
            "status": "ready",
            "model_version": str(eng.model_version),
            "generation": holder.generation,
            "pid": os.getpid(),  # which worker answered (several share one port)
        }
    )


async def metrics(request: Request) -> Response:
    svc = _service(request)
    return Response(
        svc.metrics.render(svc.holder, svc.logger),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


async def openapi(request: Request) -> Response:
    return Response(openapi_json(), media_type=JSON)


async def reload_model(request: Request) -> Response:
    svc = _service(request)
    try:
        return await _reload(request, svc)
    except ApiError as exc:
        result = {401: "unauthorized", 403: "unauthorized", 409: "busy"}.get(exc.status, "rejected")
        svc.metrics.count_reload("failed" if exc.code == "model_load_failed" else result)
        raise


async def _reload(request: Request, svc: Service) -> Response:
    if not svc.admin_token:
        raise ApiError(
            403,
            "reload_disabled",
            f"model reload is disabled: set {ENV_ADMIN_TOKEN} before starting the server",
        )
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), svc.admin_token.encode()
    ):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong admin token: send Authorization: Bearer <token>",
            headers={"www-authenticate": "Bearer"},
        )
    body = await read_body(request)
    doc = _json_object(body, "the request body") if body.strip() else {}
    extra = sorted(set(doc) - {"model_dir"})
    if extra:
        raise ApiError(
            400, "unknown_field", f"body: unknown field {extra[0]!r}; allowed: model_dir"
        )
    holder = svc.holder
    path = holder.resolve(doc.get("model_dir"))
    publish = svc.state.publish if svc.state is not None else None
    swapped = await _run(partial(holder.swap, path, publish=publish))
    assert swapped is not None
    old, new = swapped
    svc.metrics.count_reload("ok")
    log.info(
        "model swapped: %s -> %s (%s)", getattr(old, "model_version", None), new.model_version, path
    )
    return _json(
        {
            "model_version": str(new.model_version),
            "previous_model_version": None if old is None else str(old.model_version),
            "model_dir": str(path),
            "generation": holder.generation,
        }
    )


# ----- preview ----------------------------------------------------------------------------------


@cache
def _static(name: str) -> bytes:
    return resources.files("engine.serving").joinpath("static", name).read_bytes()


async def preview_css(request: Request) -> Response:
    return Response(_static("preview.css"), media_type="text/css; charset=utf-8")


async def preview_form(request: Request) -> Response:
    """The preview form's target: `/preview?user=U&device=..` redirects to `/preview/U?..`."""
    q = parse_query(request, blank_is_absent=True)
    user = q.pop("user", None)
    if user is None:
        return _html(_render_preview_page(None, None, {}, None), 200)
    check_user_id(user, "user")
    target = f"/preview/{quote(user, safe='')}"
    if q:
        target += "?" + urlencode(q)
    return RedirectResponse(target, status_code=303)


async def preview(request: Request) -> Response:
    svc = _service(request)
    user_id = request.path_params["user_id"]
    q: dict[str, str] = {}
    try:  # every error of this route is the HTML form with the message (openapi.json)
        q = parse_query(request, blank_is_absent=True)
        req = parse_fields(user_id, q, "query")
        eng = svc.holder.require()
        built: Built = await _build(svc, partial(svc.build, eng, req, log_impression=False))
    except ApiError as exc:
        return _html(_render_preview_page(user_id, None, q, exc.message, eng=None), exc.status)
    return _html(_render_preview_page(user_id, built, q, None, eng=eng), 200)


def _html(text: str, status: int) -> Response:
    return Response(text.encode(), status, media_type="text/html; charset=utf-8")


TIMES_OF_DAY = (("morning", 8), ("afternoon", 14), ("evening", 20), ("late night", 23))


def _render_preview_page(
    user_id: str | None,
    built: Built | None,
    query: Mapping[str, str],
    error: str | None,
    *,
    eng: EngineLike | None = None,
) -> str:
    e = html.escape
    device = query.get("device", "tv")
    at_text = query.get("at", "")
    country = query.get("country", "")
    page = built.page if built is not None else None
    if page is not None:
        local = page.context.local_time
        device = page.context.device
        at_text = local.strftime("%Y-%m-%dT%H:%M")
    options = "".join(
        f'<option value="{e(d)}"{" selected" if d == device else ""}>{e(d)}</option>'
        for d in DEVICES
    )
    presets = ""
    if page is not None and user_id is not None:
        links = []
        day = page.context.local_time
        for label, hour in TIMES_OF_DAY:
            at = day.replace(hour=hour, minute=0, second=0, microsecond=0).isoformat()
            params = {"device": device, "at": at, **({"country": country} if country else {})}
            href = f"/preview/{quote(user_id, safe='')}?{urlencode(params)}"
            links.append(f'<a class="preset" href="{e(href)}">{e(label)}</a>')
        presets = '<nav class="presets">Time of day: ' + " ".join(links) + "</nav>"
    body = _render_rows(page, eng) if page is not None else ""
    summary = ""
    if page is not None:
        ctx = page.context
        summary = (
            f'<p class="summary">{len(page.rows)} rows for <b>{e(page.user_id)}</b> on '
            f"<b>{e(ctx.device)}</b> at <b>{e(ctx.local_time.isoformat())}</b> "
            f"(weekday {ctx.weekday}, hour {ctx.hour}), model {e(str(page.model_version))}"
            f"{' — <b>fallback page</b>' if page.fallback else ''}</p>"
        )
    return Template(_static("preview.html").decode()).substitute(
        title=e(f"rowrank preview — {user_id}" if user_id else "rowrank preview"),
        user=e(user_id or ""),
        device_options=options,
        at=e(at_text),
        country=e(country),
        presets=presets,
        error=f'<p class="error" role="alert">{e(error)}</p>' if error else "",
        summary=summary,
        rows=body,
    )


def _title_meta(eng: EngineLike | None, title_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(genres, year) per title from the engine's History; blanks when it has none."""
    history = getattr(eng, "history", None)
    if history is None:
        return [("", "")] * len(title_ids)
    out = []
    for tid in title_ids:
        i = history.title_index(tid)
        if i < 0:
            out.append(("", ""))
            continue
        genres = ", ".join(
            g for g, on in zip(history.genre_names, history.title_genres[i], strict=True) if on
        )
        year = history.release_year[i]
        out.append((genres, "" if year != year else str(int(year))))  # NaN: unknown year
    return out


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _render_rows(page: Any, eng: EngineLike | None) -> str:
    e = html.escape
    parts = []
    for r, row in enumerate(page.rows):
        meta = _title_meta(eng, [it.title_id for it in row.items])
        cards = []
        for pos, (it, (genres, year)) in enumerate(zip(row.items, meta, strict=True)):
            tip = f"score {it.score:.4g} · {it.title_id} · position {pos}"
            progress = ""
            if it.progress is not None:
                pct = max(0.0, min(1.0, float(it.progress))) * 100
                tip += f" · {pct:.0f}% watched"
                progress = f'<div class="progress"><span style="width:{pct:.0f}%"></span></div>'
            cards.append(
                f'<li class="card" title="{e(tip)}" data-title-id="{e(it.title_id)}">'
                f'<span class="name">{e(it.name)}</span>'
                f'<span class="meta"><span class="genres">{e(genres)}</span>'
                f'<span class="year">{e(year)}</span></span>{progress}</li>'
            )
        evidence = ""
        if row.evidence:
            pairs = "; ".join(f"{k}: {_short(v)}" for k, v in row.evidence.items())
            evidence = f'<span class="evidence">{e(pairs)}</span>'
        parts.append(
            f'<section class="row" data-row-id="{e(row.row_id)}" data-kind="{e(row.kind)}">'
            f'<h2 title="{e(f"row score {row.score:.4g} · ranker {row.ranker} · row {r}")}">'
            f'{e(row.title)} <span class="kind">{e(row.kind)}</span></h2>{evidence}'
            f'<ol class="cards">{"".join(cards)}</ol></section>'
        )
    if not parts:
        return '<p class="empty">This page has no rows.</p>'
    return "\n".join(parts)


# ----- OpenAPI ----------------------------------------------------------------------------------


@cache
def openapi_spec() -> dict[str, Any]:
    """engine/serving/static/openapi.json with the page schema (engine/request/page.schema.json)
    embedded as components.schemas.Page; its internal $refs are rewritten to point inside the
    embedding."""
    spec: dict[str, Any] = orjson.loads(_static("openapi.json"))
    page = orjson.loads(resources.files("engine.request").joinpath("page.schema.json").read_bytes())
    page.pop("$schema", None)
    page.pop("$id", None)
    spec["components"]["schemas"]["Page"] = _rebase_refs(page, "#/components/schemas/Page/")
    return spec


@cache
def openapi_json() -> bytes:
    return orjson.dumps(openapi_spec())


def _rebase_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                base + v[2:]
                if k == "$ref" and isinstance(v, str) and v.startswith("#/")
                else _rebase_refs(v, base)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(v, base) for v in node]
    return node


# ----- the ASGI edge: raw-path check + request metrics -------------------------------------------


class Edge:
    """Outermost app layer: rejects a path that is not UTF-8, counts every answer by route,
    and asks the client to close a connection once it has been open `keepalive_seconds`."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        routes: Mapping[Any, str],
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        self.keepalive_seconds = keepalive_seconds
        self._opened: dict[tuple[Any, Any], float] = {}  # (client host, port) -> first answer

    def _last_on_connection(self, scope: Scope) -> bool:
        """True when this answer should be the connection's last (it has been open long
        enough); a connection's clock starts at its first answer."""
        client = scope.get("client")
        if not self.keepalive_seconds or not client:
            return False
        key, now = (client[0], client[1]), time.monotonic()
        opened = self._opened.setdefault(key, now)
        if now - opened >= self.keepalive_seconds:
            del self._opened[key]
            return True
        if len(self._opened) >= 10_000:  # connections the client closed leave entries behind
            self._opened.clear()
            self._opened[key] = opened
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self._last_on_connection(scope):  # uvicorn closes after this answer
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        route = "unmatched"
        try:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                route = "invalid_path"
                await error_response(
                    ApiError(400, "bad_path", "the request path is not valid UTF-8 once decoded")
                )(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
            route = self.routes.get(scope.get("endpoint"), "unmatched")
        finally:
            self.metrics.count_request(route, scope.get("method", "?"), status)


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {
        404: f"no route for {request.url.path!r}; see /openapi.json",
        405: f"{request.method} is not allowed on {request.url.path!r}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(
        ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), message, exc.headers)
    )


def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ApiError(500, "internal", "internal error; see the server log"))


def create_app(
    model_dir: str | os.PathLike[str],
    *,
    models_root: str | os.PathLike[str] | None = None,
    admin_token: str | None = None,
    impressions_dir: str | os.PathLike[str] | None = None,
    impressions_scope: LogScope = "visible",
    state_dir: str | os.PathLike[str] | None = None,
    max_batch: int = MAX_BATCH,
    loader: Loader = default_loader,
    keepalive_seconds: float | None = None,
) -> ASGIApp:
    """The ASGI app. The model loads in a background thread at start-up (/readyz says when).

    `admin_token` defaults to the environment's ROWRANK_ADMIN_TOKEN; none disables reload.
    `models_root` (default: the parent of `model_dir`) bounds what a reload may load.
    `keepalive_seconds` defaults to ROWRANK_KEEPALIVE_SECONDS, else KEEPALIVE_SECONDS."""
    model_path = Path(model_dir)
    root = Path(models_root) if models_root is not None else model_path.resolve().parent
    holder = ModelHolder(model_path, root, loader)
    token = admin_token if admin_token is not None else os.environ.get(ENV_ADMIN_TOKEN) or None
    logger = (
        ImpressionLogger(Path(impressions_dir), scope=impressions_scope)
        if impressions_dir is not None
        else None
    )
    state = SharedModelState(Path(state_dir)) if state_dir is not None else None
    svc = Service(holder, token, max_batch, logger, state)
    page_threads = int(os.environ.get(ENV_PAGE_THREADS) or PAGE_THREADS)

    routes = [
        Route(ROUTE_PAGE, get_page, methods=["GET"]),
        Route(ROUTE_BATCH, post_pages, methods=["POST"]),
        Route(ROUTE_PREVIEW, preview, methods=["GET"]),
        Route("/preview", preview_form, methods=["GET"]),
        Route("/preview.css", preview_css, methods=["GET"]),
        Route(ROUTE_RELOAD, reload_model, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc.limiter = anyio.CapacityLimiter(page_threads)
        if logger is not None:
            logger.start()
        if state is not None:
            generation, shared_dir = state.read()
            if shared_dir is not None:  # a worker (re)started after a reload: follow it
                holder.model_dir, holder.generation = Path(shared_dir), generation
        threading.Thread(target=holder.load_initial, name="model-load", daemon=True).start()
        poll = asyncio.create_task(_follow_state(holder, state, svc.metrics)) if state else None
        try:
            yield
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if logger is not None:
                await anyio.to_thread.run_sync(logger.close)

    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _server_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.service = svc
    if keepalive_seconds is None:
        keepalive_seconds = float(os.environ.get(ENV_KEEPALIVE_SECONDS) or KEEPALIVE_SECONDS)
    return Edge(app, svc.metrics, {r.endpoint: r.path for r in routes}, keepalive_seconds)


async def _follow_state(holder: ModelHolder, state: SharedModelState, metrics: Metrics) -> None:
    """Workers that did not take a reload pick it up from the shared state file."""
    attempted = holder.generation
    while True:
        await asyncio.sleep(STATE_POLL_SECONDS)
        generation, model_dir = await anyio.to_thread.run_sync(state.read)
        if model_dir is None or generation <= max(holder.generation, attempted):
            continue  # up to date, or that generation failed here already (not retried)
        if holder.engine is None:
            continue  # the initial load is still running
        attempted = generation
        try:
            follow = partial(holder.swap, Path(model_dir), blocking=True, generation=generation)
            if await anyio.to_thread.run_sync(follow) is not None:
                metrics.count_reload("followed")
                log.info("followed reload to %s (generation %d)", model_dir, generation)
        except ApiError as exc:
            metrics.count_reload("failed")
            log.error("cannot follow reload to %s: %s", model_dir, exc.message)


def _log_to_stderr() -> None:
    """rowrank's own log lines (model loaded, reloads, page failures) on stderr, in every
    worker process (uvicorn configures only its own loggers)."""
    root = logging.getLogger("rowrank")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(levelname)s:    [%(process)d] %(name)s: %(message)s")
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def app_from_env() -> ASGIApp:
    """uvicorn factory for worker processes: the config comes in ROWRANK_SERVE_CONFIG."""
    cfg = ServeConfig.from_json(os.environ[ENV_CONFIG])
    _log_to_stderr()
    scope: LogScope = "page" if cfg.impressions_scope == "page" else "visible"
    return create_app(
        cfg.model_dir,
        models_root=cfg.models_root,
        impressions_dir=cfg.impressions_dir,
        impressions_scope=scope,
        state_dir=cfg.state_dir,
        max_batch=cfg.max_batch,
    )


def serve(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the server until SIGINT/SIGTERM (a clean shutdown flushes impression logs)."""
    import tempfile

    import uvicorn

    try:  # a taken port is a one-line error (exit 2), before any model is loaded
        probe = _listen(host, port, reuse_port=False)
    except OSError as exc:
        raise BadRequestError(f"--host/--port: {exc.strerror}") from exc
    port = probe.getsockname()[1]  # --port 0: the free port picked here, for every worker
    probe.close()
    if workers <= 1:
        uvicorn.run(app_from_cfg(cfg), host=host, port=port, access_log=False, log_level="info")
        return
    with tempfile.TemporaryDirectory(prefix="rowrank-serve-") as tmp:
        cfg.state_dir = tmp
        os.environ[ENV_CONFIG] = cfg.to_json()
        run_workers(host, port, workers)


def run_workers(host: str, port: int, workers: int) -> None:
    """`workers` processes, each with its own listening socket on host:port (SO_REUSEPORT), so
    the kernel spreads connections over them. uvicorn's own `workers=` shares one socket, and
    the first idle worker accepted a whole burst of keep-alive connections while the other sat
    idle: at commit ca13c22, `ROWRANK_PAGE_THREADS=1 python bench/bench_serve_load.py` gave 2
    workers no more than 1 (118 vs 117 pages/s; one worker built 39 of 1,229 pages). A worker
    that dies is restarted; SIGINT or SIGTERM stops them all gracefully (each flushes its
    impression log)."""
    import multiprocessing
    import signal

    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    started: dict[int, float] = {}  # worker index -> when its current process started
    crashed: list[str] = []
    min_uptime = float(os.environ.get(ENV_WORKER_MIN_UPTIME) or WORKER_MIN_UPTIME_SECONDS)

    def start(i: int) -> Any:
        proc = spawn.Process(target=_worker_main, args=(host, port), daemon=False)
        proc.start()
        started[i] = time.monotonic()
        return proc

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(workers)]
    where = f"[{host}]" if ":" in host else host
    print(f"rowrank serve: {workers} workers on http://{where}:{port} (Ctrl-C to stop)", flush=True)
    try:
        while not stopping.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                what = f"worker {proc.pid} exited with code {proc.exitcode}"
                if time.monotonic() - started[i] < min_uptime:
                    # Dying right after start (a model that does not load, a bind that fails)
                    # would only repeat: stop the server instead of restarting in a loop.
                    crashed.append(f"{what} within {min_uptime:g} s of starting")
                    stopping.set()
                    break
                log.error("%s; restarting it", what)
                procs[i] = start(i)
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # uvicorn re-raises the signal it stopped on once its shutdown is done: -SIGTERM is clean.
    failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if crashed or failed:
        why = crashed[0] if crashed else f"worker(s) exited with code(s) {failed}"
        raise SystemExit(f"rowrank serve: {why}; see the worker log above")


def _worker_main(host: str, port: int) -> None:
    """One worker process of `run_workers` (the config comes in ROWRANK_SERVE_CONFIG)."""
    import uvicorn

    # Its own process group: a Ctrl-C in the terminal reaches the parent only, which stops each
    # worker with one SIGTERM (a second signal would make uvicorn skip the graceful shutdown).
    os.setpgrp()
    exit_with_parent()
    sock = _listen(host, port, reuse_port=True)
    config = uvicorn.Config(
        "engine.serving.http:app_from_env", factory=True, access_log=False, log_level="info"
    )
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int, *, reuse_port: bool) -> Any:
    """A listening TCP socket on host:port; OSError names the address when it cannot bind."""
    import socket

    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    return sock


def app_from_cfg(cfg: ServeConfig) -> ASGIApp:
    os.environ[ENV_CONFIG] = cfg.to_json()
    return app_from_env()


def run_cli(args: Any) -> int:
    """`rowrank serve` (arguments: engine.cli._serve_args)."""
    from engine.errors import ModelLoadError

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"{model_dir} is not a directory: pass a model directory from `rowrank train`"
        )
    if args.workers < 1:
        raise BadRequestError(f"--workers must be at least 1, got {args.workers}")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        models_root=args.models_root,
        impressions_dir=args.log_impressions,
        impressions_scope=args.log_scope,
    )
    serve(cfg, host=args.host, port=args.port, workers=args.workers)
    return 0


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a free port of 127.0.0.1 (tests,
    notebooks). `with ServerThread(app) as base_url: ...` starts and stops it (lifespan runs)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.sock = _listen(host, 0, reuse_port=False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: in-flight requests finish, then lifespan shutdown (impression flush)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
