"""The HTTP API's error answers: `ApiError` and its JSON body `{"error": {"code", "message"}}`."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

JSON = "application/json"


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
