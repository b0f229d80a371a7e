"""POST /v1/events: a batch of play events in, on disk before the 2xx (engine.events).

Body `{"events": [{event_id, user_id, title_id, ts, device, seconds_watched, progress,
rating?}, ...]}`, at most MAX_EVENTS_PER_BATCH events and MAX_BODY_BYTES. The batch is
all-or-nothing: the first bad event is a 422 naming its index, field and value, and nothing of
the batch is written. A 200 `{"accepted": n, "duplicates": m}` means the accepted events are in
the fsynced log; a retried `event_id` counts as a duplicate and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine.events.schema import MAX_BODY_BYTES, EventError, validate_batch
from engine.events.state import LiveState
from engine.serving.api_errors import JSON, ApiError
from engine.serving.model_holder import EngineLike, Loader, ModelHolder
from engine.serving.params import json_object, read_body
from engine.serving.service import service_of

ROUTE_EVENTS = "/v1/events"

log = logging.getLogger("rowrank.serve")


def with_live(loader: Loader, live: LiveState) -> Loader:
    """`loader`, with the live layer attached to every engine it loads (start-up and reloads),
    so pages of any model read the members' live plays."""

    def load(model_dir: Any) -> EngineLike:
        eng = loader(model_dir)
        if hasattr(eng, "live"):
            eng.live = live
        return eng

    return load


# How often a server worker takes the live plays between pages (`follow_live_state`): at 5,000
# events/s a tick takes about 100, so a page finds at most a tick's worth to apply first.
FOLLOW_SECONDS = 0.02


def follow_live_state(holder: ModelHolder, stop: threading.Event) -> None:
    """A worker's follower thread, until `stop`: every FOLLOW_SECONDS the loaded engine takes the
    plays other processes appended (`Engine.follow_live`). Without it each page would first
    read and apply every event since the worker's previous page, which under a stream of
    events is most of the page's latency. A failure is logged, and the page that meets it
    answers with it."""
    while not stop.wait(FOLLOW_SECONDS):
        follow = getattr(holder.engine, "follow_live", None)
        if follow is None:
            continue
        try:
            follow()
        except Exception:
            log.exception("reading the event log between pages failed")
            stop.wait(1.0)  # not a log line every tick


def event_error(exc: EventError) -> Response:
    body = {
        "error": {
            "code": "bad_event",
            "message": str(exc),
            "index": exc.index,
            "field": exc.field,
            "value": exc.value,
        }
    }
    # A value that came in as JSON goes back as JSON; anything else as its repr.
    try:
        data = orjson.dumps(body)
    except TypeError:
        body["error"]["value"] = repr(exc.value)
        data = orjson.dumps(body)
    return Response(data, 422, media_type=JSON)


async def post_events(request: Request) -> Response:
    svc = service_of(request)
    live: LiveState | None = getattr(svc, "live", None)
    if live is None:
        raise ApiError(
            404, "events_disabled", "this server takes no events: start it with `rowrank serve`"
        )
    doc = json_object(await read_body(request, MAX_BODY_BYTES), "the request body")
    extra = sorted(set(doc) - {"events"})
    if extra:
        raise ApiError(400, "unknown_field", f"body: unknown field {extra[0]!r}; allowed: events")
    items = doc.get("events")
    if not isinstance(items, list):
        raise ApiError(
            400, "bad_events", f'body: "events" must be a list of objects, got {items!r:.80}'
        )
    eng = svc.holder.require()
    history = getattr(eng, "history", None)
    if history is None:
        raise ApiError(503, "not_ready", "the loaded model has no catalog to check titles against")
    try:
        events = validate_batch(
            items, lambda t: history.title_index(t) >= 0, int(time.time() * 1_000_000)
        )
    except EventError as exc:
        return event_error(exc)
    done = await anyio.to_thread.run_sync(live.append, events)
    return Response(
        orjson.dumps({"accepted": done.accepted, "duplicates": done.duplicates}), media_type=JSON
    )
