"""Parsing requests at the HTTP edge: path, query and JSON body into validated `PageRequest`s.

Every error is an `ApiError` 4xx naming the bad value and what is allowed; nothing here loads a
model or builds a page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request

from engine.data.columns import DEVICES
from engine.errors import BadRequestError
from engine.request.context import parse_country, parse_device, parse_time
from engine.serving.api_errors import ApiError

MAX_BATCH = 100  # pages per POST /v1/pages; more is 413
MAX_BODY_BYTES = 1 << 20  # a batch of 100 requests is ~15 KB; anything near 1 MB is abuse
MAX_USER_ID_CHARS = 256
QUERY_FIELDS = ("device", "at", "country")


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
    try:
        country = None if country is None else parse_country(country)
    except BadRequestError as exc:
        raise ApiError(400, "bad_country", f"{where}: {exc}") from None
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


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the request body exceeds {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_json", f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def parse_batch(doc: Mapping[str, Any], max_batch: int) -> list[PageRequest]:
    """The body of POST /v1/pages, `{"requests": [...]}`, at most `max_batch` of them."""
    extra = sorted(set(doc) - {"requests"})
    if extra:
        raise ApiError(400, "unknown_field", f"body: unknown field {extra[0]!r}; allowed: requests")
    items = doc.get("requests")
    if not isinstance(items, list):
        raise ApiError(
            400, "bad_requests", f'body: "requests" must be a list of objects, got {items!r:.80}'
        )
    if len(items) > max_batch:
        raise ApiError(
            413,
            "batch_too_large",
            f"{len(items)} requests in one batch; at most {max_batch} are allowed",
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
    return reqs
