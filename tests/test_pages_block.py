"""`Engine.pages`, the block path precompute and `POST /v1/pages` run, against `Engine.page_for`:
the same JSON bytes for every request, on a world of 1,000 members (2 devices x 2 times), and the
single path's failure policy kept per request inside a block."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_SEED, tiny_engine_config
from test_pipeline import _with_ranker

import engine
from engine.candidates import CandidateRow
from engine.data.history import History
from engine.pipeline import Engine, LastProposals
from engine.request.context import RequestContext

MEMBERS = 1000


@pytest.fixture(scope="module")
def block_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world with MEMBERS members (few titles and days, so it trains in seconds)."""
    from engine.sim.simulate import simulate
    from engine.training.train import train

    out = tmp_path_factory.mktemp("block_world")
    simulate(out / "world", users=MEMBERS, titles=150, days=14, seed=TINY_SEED, progress=False)
    train(out / "world", out / "model", engine_config=tiny_engine_config(), progress=False)
    return out / "model"


def _contexts(eng: Engine, users: list[str]) -> list[RequestContext]:
    """Each member on tv and mobile at two times, member-major (precompute's order); a member
    the model does not know takes the first country."""
    cut = datetime.fromtimestamp(eng.history.cutoff_us // 1_000_000, UTC)
    times = [cut + timedelta(hours=20), cut + timedelta(days=1, hours=8, minutes=30)]
    known = set(eng.history.user_ids.tolist())
    return [
        eng.context(u, d, t, None if u in known else eng.store.countries[0])
        for u in users
        for t in times
        for d in ("tv", "mobile")
    ]


def test_block_pages_equal_single_pages_byte_for_byte(block_model: Path) -> None:
    eng = engine.load(block_model)
    users = [str(u) for u in eng.history.user_ids]
    assert len(users) >= MEMBERS
    ctxs = _contexts(eng, [*users, "block-new-member"])
    single = [eng.page_for(c).to_json() for c in ctxs]
    fresh = engine.load(block_model)  # nothing carried over from the single pages
    # Ragged blocks: a member's pages split across two blocks as well as inside one.
    block = []
    for start in range(0, len(ctxs), 997):
        block += [p.to_json() for p in fresh.pages(ctxs[start : start + 997])]
    assert len(block) == len(single) == 4 * (len(users) + 1)
    differ = [i for i, (a, b) in enumerate(zip(single, block, strict=True)) if a != b]
    assert not differ, f"{len(differ)} pages differ, first for {ctxs[differ[0]]}"
    # The pages are real pages: most members get ranked rows, not the fallback.
    assert sum(b'"fallback":false' in p for p in block) > 0.9 * len(block)


def test_a_block_of_one_is_the_single_page(eng: Engine, member: str, at: str) -> None:
    ctx = eng.context(member, "tv", at)
    assert eng.pages([ctx])[0].to_json() == eng.page_for(ctx).to_json()
    assert eng.pages([]) == []


class _BlockFails:
    """Wraps a ranker; `propose_block` raises, `propose` works (the engine retries it)."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.proposed = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose_block(self, requests: Any, history: History) -> list[list[CandidateRow]]:
        raise RuntimeError("the block failed")

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        self.proposed += 1
        return self._inner.propose(request, history)


class _FailsFor:
    """Wraps a ranker; raises for one member, in `propose` and in `propose_block` alike."""

    def __init__(self, inner: Any, victim: str) -> None:
        self._inner, self._victim = inner, victim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        if request.user_id == self._victim:
            raise KeyError("no state for this member")
        return self._inner.propose(request, history)

    def propose_block(self, requests: Any, history: History) -> list[list[CandidateRow]]:
        return [self.propose(r, history) for r in requests]


def test_a_failing_propose_block_is_retried_per_request(eng: Engine, at: str) -> None:
    users = [str(u) for u in eng.history.user_ids[:20]]
    ctxs = [eng.context(u, d, at) for u in users for d in ("tv", "web")]
    want = [eng.page_for(c).to_json() for c in ctxs]
    wrapped = _BlockFails(eng.rankers["top_picks"])
    got = [p.to_json() for p in _with_ranker(eng, "top_picks", wrapped).pages(ctxs)]
    assert got == want
    assert wrapped.proposed == len(users)  # once per member: its rows do not use the device


def test_a_ranker_failing_one_member_fails_only_their_pages(eng: Engine, at: str) -> None:
    users = [str(u) for u in eng.history.user_ids[:12]]
    victim = users[5]
    broken = _with_ranker(eng, "top_picks", _FailsFor(eng.rankers["top_picks"], victim))
    ctxs = [eng.context(u, d, at) for u in users for d in ("tv", "mobile")]
    pages = broken.pages(ctxs)
    for ctx, page in zip(ctxs, pages, strict=True):
        failed = page.trace["failed_rankers"]
        if ctx.user_id == victim:
            error = "KeyError: 'no state for this member'"
            assert failed == [{"ranker": "top_picks", "error": error}]
            assert all(r.ranker != "top_picks" for r in page.rows)
        else:
            assert failed == []
            assert page.to_json() == eng.page_for(ctx).to_json()


def test_a_propose_block_of_the_wrong_length_is_a_programmer_error(eng: Engine, at: str) -> None:
    class Short(_FailsFor):
        def propose_block(self, requests: Any, history: History) -> list[list[CandidateRow]]:
            return super().propose_block(requests, history)[:-1]

    users = [str(u) for u in eng.history.user_ids[:3]]
    broken = _with_ranker(eng, "top_picks", Short(eng.rankers["top_picks"], ""))
    with pytest.raises(engine.errors.RankerContractError, match="propose_block"):
        broken.pages([eng.context(u, "tv", at) for u in users])


def test_block_rows_are_computed_once_per_member_and_time(eng: Engine, at: str) -> None:
    """Device-independent rankers run once per (member, time, country) of a block, and a
    reused entry of the engine's LastProposals is taken as on the single path."""
    users = [str(u) for u in eng.history.user_ids[:8]]
    ctxs = [eng.context(u, d, at) for u in users for d in ("tv", "mobile", "web")]
    calls: list[str] = []

    class Counting(_FailsFor):
        def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
            calls.append(request.user_id)
            return super().propose(request, history)

    counted = _with_ranker(eng, "trending_24h", Counting(eng.rankers["trending_24h"], ""))
    assert LastProposals.shares(eng.rankers["trending_24h"])
    counted.pages(ctxs)
    assert sorted(calls) == sorted(users)
    rows = counted.pages(ctxs[-1:])  # the last member again: their rows are reused
    assert sorted(calls) == sorted(users) and rows[0].rows
    assert [p.to_json() for p in counted.pages(ctxs[:3])] == [
        eng.page_for(c).to_json() for c in ctxs[:3]
    ]
