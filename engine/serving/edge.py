"""The outermost ASGI layer: a UTF-8 path check, request counting, keep-alive connections closed.

`Edge` rejects a path that is not UTF-8, counts every answer by route in the metrics, and closes
keep-alive connections that have been open long enough (`KEEPALIVE_SECONDS`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.serving.api_errors import ApiError, error_response
from engine.serving.metrics import Metrics

# A keep-alive connection is closed at its first answer after this many seconds open (0:
# never), as nginx's keepalive_time does. Workers' SO_REUSEPORT sockets spread connections, not
# requests: a client holding a few long-lived connections can find them all hashed onto one
# worker while the other idles. Closing makes the client reconnect and be hashed again. By time,
# not by request count: a count lets connections on an idle worker reach it first and re-roll,
# while those crowded on a busy one crawl toward it, so crowded splits last longest (measured:
# docs/serve.md). One TCP handshake a second per connection costs nothing beside page builds.
KEEPALIVE_SECONDS = 1.0
ENV_KEEPALIVE_SECONDS = "ROWRANK_KEEPALIVE_SECONDS"  # overrides KEEPALIVE_SECONDS


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
