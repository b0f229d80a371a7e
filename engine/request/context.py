"""The request context a page is built for: who, on which device, when, where."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.data.columns import COUNTRY_CODE, DEVICES
from engine.errors import BadRequestError


@dataclass(frozen=True)
class RequestContext:
    """One page request. `at` is the member's local time as the client sent it (aware)."""

    user_id: str
    device: str
    at: datetime
    country: str | None = None

    @property
    def hour(self) -> int:
        return self.at.hour

    @property
    def weekday(self) -> int:
        """Monday = 0 ... Sunday = 6, in the member's local time."""
        return self.at.weekday()

    @property
    def is_weekend(self) -> bool:
        return self.weekday >= 5

    @property
    def device_code(self) -> int:
        return DEVICES.index(self.device)

    @property
    def at_us(self) -> int:
        return int(self.at.timestamp() * 1_000_000)


def parse_device(value: str) -> str:
    if value not in DEVICES:
        raise BadRequestError(f"unknown device {value!r}: use one of {', '.join(DEVICES)}")
    return value


def parse_country(value: str) -> str:
    """A request's country: a two-letter upper-case ISO 3166 code (the CLI's and the HTTP API's
    rule and words)."""
    if not re.fullmatch(COUNTRY_CODE, value):
        raise BadRequestError(
            f"country {value!r} is not a two-letter upper-case ISO 3166 code (e.g. US, DE)"
        )
    return value


def parse_time(value: str) -> datetime:
    """ISO 8601; without an offset the time is taken as UTC."""
    try:
        ts = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRequestError(
            f"malformed time {value!r}: use ISO 8601, e.g. 2026-11-27T21:00:00+01:00"
        ) from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    try:
        # Pages carry the time in UTC: 9999-12-31T23:59-12:00 parses but has no UTC year.
        ts.astimezone(UTC)
    except OverflowError:
        raise BadRequestError(
            f"time {value!r} is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None
    return ts
