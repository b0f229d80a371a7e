"""Golden pages: the tiny model's JSON pages for a few members and contexts, byte for byte.

The tiny world and model are deterministic (seeded simulation, one-thread deterministic
LightGBM), so any difference is a behaviour change. When it is intended, regenerate and review
the diff:

    ROWRANK_REGEN_GOLDEN=1 .venv/bin/pytest tests/request/test_golden_pages.py
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.pipeline import Engine

GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("ROWRANK_REGEN_GOLDEN") == "1"

# (file stem, which member, device, hours after the day following the cut-off)
CASES = [
    ("heavy_member_tv_evening", "most_plays", "tv", 21),
    ("member_mobile_late_night", "tenth", "mobile", 23),
    ("new_member_web_daytime", "unknown", "web", 13),
]


@pytest.fixture(scope="module")
def eng(tiny_model: Path) -> Engine:
    return engine.load(tiny_model)


_VERSION = re.compile(rb'"model_version":"([0-9a-f]+)"')


def _member(eng: Engine, which: str) -> tuple[str, str | None]:
    h = eng.history
    if which == "most_plays":
        return str(h.user_ids[int(np.argmax(np.diff(h.user_offsets)))]), None
    if which == "tenth":
        return str(h.user_ids[10]), None
    return "golden-new-member", eng.store.countries[0]


@pytest.mark.parametrize(("stem", "which", "device", "hour"), CASES)
def test_golden_page(eng: Engine, stem: str, which: str, device: str, hour: int) -> None:
    user, country = _member(eng, which)
    day = datetime.fromtimestamp(eng.history.cutoff_us / 1e6, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=1)
    got = eng.page(user, device, day + timedelta(hours=hour), country).to_json()
    path = GOLDEN / f"{stem}.json"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(got)
    assert path.exists(), f"{path} is missing: run ROWRANK_REGEN_GOLDEN=1 pytest {__file__}"
    want = path.read_bytes()
    # The model version hashes the dataset's Parquet files, whose bytes name the polars that
    # wrote them: it is checked against the model loaded, everything else byte for byte.
    version = _VERSION.search(got)
    assert version is not None and version[1] == eng.model_version.encode()
    got, want = (
        _VERSION.sub(b'"model_version":"*"', got),
        _VERSION.sub(b'"model_version":"*"', want),
    )
    assert got == want, (
        f"page {stem} changed; if intended, regenerate with ROWRANK_REGEN_GOLDEN=1 and review "
        "the diff"
    )
