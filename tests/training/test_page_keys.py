"""Page keys (engine/training/page_keys.py): `rowrank train` lays out Top Picks' rows the way the
held-out window's pages score best, under the reading the impressions show."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import engine
from engine.config import EngineConfig
from engine.data.columns import Col
from engine.training import train as train_module
from engine.training.page_keys import MIN_SLOT_IMPRESSIONS, slot_play_rates
from engine.training.train import train
from engine.training.tune import MIN_GAIN


def test_slot_play_rates_by_hand() -> None:
    n = MIN_SLOT_IMPRESSIONS
    # (row, position): (0,0) played 1 in 2, (0,1) 1 in 4, (1,0) 1 in 8; (1,1) too rare to count.
    slots = [(0, 0, 2), (0, 1, 4), (1, 0, 8)]
    rows, pos, played = [], [], []
    for r, c, every in slots:
        rows += [r] * n
        pos += [c] * n
        played += [i % every == 0 for i in range(n)]
    rows += [1] * (n - 1)
    pos += [1] * (n - 1)
    played += [True] * (n - 1)
    imp = pl.LazyFrame(
        {Col.ROW_INDEX: rows, Col.POSITION: pos, Col.PLAYED: played},
        schema={Col.ROW_INDEX: pl.Int16, Col.POSITION: pl.Int16, Col.PLAYED: pl.Boolean},
    )
    rates = slot_play_rates(imp)
    assert rates is not None
    np.testing.assert_allclose(rates, [[1.0, 0.5], [0.25, 0.0]])
    assert slot_play_rates(None) is None


def _trained(world: Path, cfg: EngineConfig, out: Path) -> dict:
    return train(world, out, engine_config=cfg, progress=False)


def test_page_keys_follow_how_members_read(
    tiny_world, tiny_config: EngineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny world's impressions: a play at the head of row 2 is about as likely as at row
    # 1's second slot, so dealing Top Picks' order over its rows (rank 3 heads row 2) scores
    # better on the held-out pages, and is served.
    m = _trained(tiny_world.path, tiny_config, tmp_path / "read")
    keys = m["page_keys"]
    assert keys["reader"] == "slot play rates" and keys["pages"] > 100
    given, dealt = keys["trials"]
    assert given["keys"] == {} and dealt["keys"] == {"top_picks": {"more_deal": True}}
    assert dealt["gain"] > given["gain"] * (1 + MIN_GAIN)
    assert keys["chosen"] == {"top_picks": {"more_deal": True}}
    eng = engine.load(tmp_path / "read")
    assert eng.config.rankers["top_picks"].config.more_deal is True  # type: ignore[attr-defined]
    assert eng.rankers["top_picks"].config.more_deal is True  # type: ignore[attr-defined]
    # Served: the first continuation row holds the learned order's 3rd title at its head (the
    # learned order is the first row's head, then its 2nd slot, then the next row's head).
    at = datetime.fromtimestamp(eng.history.cutoff_us / 1e6, UTC)
    user = str(eng.history.user_ids[int(np.argmax(np.diff(eng.history.user_offsets)))])
    ctx = eng.context(user, "tv", at)
    rows = eng.rankers["top_picks"].propose(ctx, eng.history)
    assert rows[0].scores[0] >= rows[1].scores[0] >= rows[0].scores[2]
    assert rows[0].scores[1] >= rows[1].scores[0]

    # A reader who never leaves the first row (and reads it all): dealing moves titles out of
    # it, the held-out pages score lower, and the rows stay as configured.
    monkeypatch.setattr(train_module, "slot_play_rates", lambda _imp: np.ones((1, 40)))
    m = _trained(tiny_world.path, tiny_config, tmp_path / "first-row")
    given, dealt = m["page_keys"]["trials"]
    assert dealt["gain"] < given["gain"]
    assert m["page_keys"]["chosen"] == {}
    assert engine.load(tmp_path / "first-row").rankers["top_picks"].config.more_deal is False  # type: ignore[attr-defined]


def test_without_impressions_the_page_keys_read_pages_as_n2dcg(
    tiny_world, tiny_config: EngineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No impressions to measure the reading from (MovieLens): N2DCG's reader is assumed, and the
    # choice follows its figures.
    monkeypatch.setattr(train_module, "slot_play_rates", lambda _imp: None)
    m = _trained(tiny_world.path, tiny_config, tmp_path / "model")
    keys = m["page_keys"]
    assert keys["reader"] == "N2DCG" and keys["slot_play_rates"] is None
    given, dealt = keys["trials"]
    assert 0 < given["gain"] <= 1 and 0 < dealt["gain"] <= 1
    wins = dealt["gain"] - given["gain"] > given["gain"] * MIN_GAIN
    assert keys["chosen"] == ({"top_picks": {"more_deal": True}} if wins else {})
