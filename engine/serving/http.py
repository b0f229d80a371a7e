"""The HTTP service's Starlette app and its routes (`create_app`; uvicorn factory `app_from_env`).

Homepages as JSON, health, metrics and model hot swap; `app_from_env` is what every process of
`rowrank serve` runs.

Starlette on uvicorn. The engine is CPU-bound, so every page is built in the threadpool (the
event loop keeps answering /healthz while a page is being built), one page at a time per
worker (engine.serving.service). `rowrank serve` and its `--workers N` processes are started
by engine.serving.runner.

Routes (docs/serve.md, engine/serving/static/openapi.json):

    GET  /v1/users/{user_id}/page?device=&at=&country=   one page, the bytes of `rowrank page`
    POST /v1/pages                                       {"requests": [...]} -> {"pages": [...]}
    GET  /preview/{user_id}?device=&at=&country=         the page as HTML (engine.serving.preview)
    POST /v1/admin/reload                                hot swap (Bearer ROWRANK_ADMIN_TOKEN)
    POST /v1/events                                      play events in (serving.events_route)
    GET  /healthz  /readyz  /metrics  /openapi.json
    GET  /                                               links to all of the above

A page built more than `[serving] stale_after_days` past the model's data cut-off carries the
warning in the header x-rowrank-warning (engine.pipeline.Engine.staleness).

Where the rest lives, in engine/serving/: `params` parses requests at the edge, `model_holder`
holds the live model and swaps it, `service` builds a page with its fallback, `metrics` counts,
`edge` is the outermost ASGI layer, `static_files` serves openapi.json and the preview's files.

Bad input is always a 4xx with `{"error": {"code": ..., "message": ...}}` (engine.serving.
api_errors), never a traceback; a page that cannot be built even as a fallback is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from engine.serving.api_errors import JSON, ApiError, error_response
from engine.serving.edge import ENV_KEEPALIVE_SECONDS, KEEPALIVE_SECONDS, Edge
from engine.serving.impression_log import ImpressionLogger
from engine.serving.impression_log import Scope as LogScope
from engine.serving.model_holder import (
    Loader,
    ModelHolder,
    SharedModelState,
    default_loader,
    follow_shared_state,
)
from engine.serving.params import (
    MAX_BATCH,
    json_object,
    parse_batch,
    parse_fields,
    parse_query,
    read_body,
)
from engine.serving.preview import preview, preview_css, preview_form
from engine.serving.service import (
    ENV_PAGE_THREADS,
    PAGE_THREADS,
    Built,
    Service,
    build_in_thread,
    service_of,
)
from engine.serving.static_files import openapi_json

log = logging.getLogger("rowrank.serve")

ENV_ADMIN_TOKEN = "ROWRANK_ADMIN_TOKEN"
ENV_CONFIG = "ROWRANK_SERVE_CONFIG"  # JSON ServeConfig handed to each worker process

ROUTE_PAGE = "/v1/users/{user_id}/page"
ROUTE_BATCH = "/v1/pages"
ROUTE_RELOAD = "/v1/admin/reload"
ROUTE_PREVIEW = "/preview/{user_id}"
WARNING_HEADER = "x-rowrank-warning"  # a page's warnings (Page.warnings), e.g. stale data


@dataclass
class ServeConfig:
    """Everything a worker needs to build the app (JSON-able: handed to worker processes)."""

    model_dir: str
    models_root: str | None = None
    impressions_dir: str | None = None
    impressions_scope: str = "visible"
    state_dir: str | None = None  # set when several workers share reloads
    events_dir: str | None = None  # the event log's directory; None: POST /v1/events is off
    max_batch: int = MAX_BATCH

    def to_json(self) -> str:
        return orjson.dumps(self.__dict__).decode()

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**orjson.loads(text))


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers=dict(headers or {}), media_type=JSON)


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


async def get_page(request: Request) -> Response:
    svc = service_of(request)
    req = parse_fields(request.path_params["user_id"], parse_query(request), "query")
    eng = svc.holder.require()
    built: Built = await build_in_thread(svc, svc.build, eng, req)
    headers = {"x-model-version": str(eng.model_version), **warning_header([built])}
    if built.page_id is not None:
        headers["x-page-id"] = built.page_id
    return Response(built.body, headers=headers, media_type=JSON)


def warning_header(built: list[Built]) -> dict[str, str]:
    """{WARNING_HEADER: text} when a page has warnings: the first one, and for a batch how many
    pages have any (they differ only in the numbers, e.g. days past the cut-off)."""
    warned = [w for b in built for w in getattr(b.page, "warnings", ())[:1]]
    if not warned:
        return {}
    text = warned[0] if len(built) == 1 else f"{len(warned)} of {len(built)} pages: {warned[0]}"
    # Header values are Latin-1: anything else is replaced rather than failing the page.
    return {WARNING_HEADER: text.encode("latin-1", "replace").decode("latin-1")}


async def post_pages(request: Request) -> Response:
    svc = service_of(request)
    reqs = parse_batch(json_object(await read_body(request), "the request body"), svc.max_batch)
    eng = svc.holder.require()
    built: list[Built] = await build_in_thread(svc, svc.build_many, eng, reqs)
    body = b'{"pages":[' + b",".join(b.body for b in built) + b"]}"
    headers = {"x-model-version": str(eng.model_version), **warning_header(built)}
    if svc.logger is not None:
        headers["x-page-ids"] = ",".join(b.page_id or "" for b in built)
    return Response(body, headers=headers, media_type=JSON)


async def index(request: Request) -> Response:
    """Links to what the server offers, with a real member's preview once a model is loaded."""
    eng = service_of(request).holder.engine
    example = ""
    history = getattr(eng, "history", None)
    if history is not None and len(history.user_ids):
        user = str(history.user_ids[0])
        example = (
            f' (e.g. <a href="/preview/{quote(user, safe="")}">{html.escape(user)}</a>, '
            f"at a time near the data cut-off: add <code>?at=...</code>)"
        )
    model = f"model {html.escape(str(eng.model_version))}" if eng is not None else "no model yet"
    links = "".join(
        f'<li><a href="{href}">{html.escape(href)}</a>: {text}</li>'
        for href, text in (
            ("/preview", f"a member's page as HTML{example}"),
            ("/openapi.json", "the API (OpenAPI 3.1): pages as JSON, batches, model reload"),
            ("/healthz", "liveness"),
            ("/readyz", "readiness: which model is loaded"),
            ("/metrics", "Prometheus metrics"),
        )
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>rowrank</title>'
        '<link rel="stylesheet" href="/preview.css"></head><body><header><h1>rowrank</h1>'
        f"<p>{model}</p></header><main><ul>{links}</ul></main></body></html>"
    )
    return Response(body.encode(), media_type="text/html; charset=utf-8")


async def healthz(request: Request) -> Response:
    return _json({"status": "alive"})


async def readyz(request: Request) -> Response:
    holder = service_of(request).holder
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
    svc = service_of(request)
    return Response(
        svc.metrics.render(svc.holder, svc.logger),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


async def openapi(request: Request) -> Response:
    return Response(openapi_json(), media_type=JSON)


async def reload_model(request: Request) -> Response:
    svc = service_of(request)
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
    doc = json_object(body, "the request body") if body.strip() else {}
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
    events_dir: str | os.PathLike[str] | None = None,
) -> ASGIApp:
    """The ASGI app. The model loads in a background thread at start-up (/readyz says when).

    `admin_token` defaults to the environment's ROWRANK_ADMIN_TOKEN; none disables reload.
    `models_root` (default: the parent of `model_dir`) bounds what a reload may load.
    `keepalive_seconds` defaults to ROWRANK_KEEPALIVE_SECONDS, else KEEPALIVE_SECONDS.
    `events_dir` holds the event log (a directory or a redis:// URL): POST /v1/events writes
    it and every page reads the member's live plays from it (engine.events); None turns both
    off."""
    from engine.events.state import LiveState
    from engine.serving.events_route import (
        ROUTE_EVENTS,
        follow_live_state,
        post_events,
        with_live,
    )

    live = LiveState(events_dir) if events_dir is not None else None
    if live is not None:
        loader = with_live(loader, live)
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
    svc = Service(holder, token, max_batch, logger, state, live=live)
    svc.metrics.attach(holder, logger)  # every worker mirrors its model and impression log
    page_threads = int(os.environ.get(ENV_PAGE_THREADS) or PAGE_THREADS)

    routes = [
        Route(ROUTE_PAGE, get_page, methods=["GET"]),
        Route(ROUTE_BATCH, post_pages, methods=["POST"]),
        Route(ROUTE_EVENTS, post_events, methods=["POST"]),
        Route(ROUTE_PREVIEW, preview, methods=["GET"]),
        Route("/preview", preview_form, methods=["GET"]),
        Route("/preview.css", preview_css, methods=["GET"]),
        Route(ROUTE_RELOAD, reload_model, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", index, methods=["GET"]),
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
        following = threading.Event()
        follower = None
        if live is not None:
            follower = threading.Thread(
                target=follow_live_state, args=(holder, following), name="live", daemon=True
            )
            follower.start()
        poll = (
            asyncio.create_task(follow_shared_state(holder, state, svc.metrics)) if state else None
        )
        try:
            yield
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if logger is not None:
                await anyio.to_thread.run_sync(logger.close)
            if follower is not None:
                following.set()
                await anyio.to_thread.run_sync(follower.join)  # before the log it reads closes
            if live is not None:
                live.close()

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
        events_dir=cfg.events_dir,
    )
