"""The learned Top Picks ranker: its windows hold out exactly what they say, its popularity is
point in time, and what it learns reaches the row."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from test_ranker_contract import CUTOFF, make_dataset

from engine.data.history import History, drop_last_plays, truncate_history
from engine.request.context import RequestContext
from rankers._common import PlayTimes
from rankers.top_picks import (
    FEATURES,
    Generators,
    TopPicksConfig,
    TopPicksRanker,
    candidates_and_features,
)


@pytest.fixture(scope="module")
def history() -> History:
    return History.from_dataset(make_dataset(seed=3), CUTOFF)


def test_drop_last_plays_drops_exactly_each_members_last_plays(history: History) -> None:
    h, dropped = drop_last_plays(history, 4)
    n_u = np.diff(history.user_offsets)
    assert np.array_equal(np.diff(h.user_offsets), np.maximum(n_u - 4, 0))
    for u in range(history.n_users):
        s = history.user_plays(u)
        kept = history.play_ts[s][~dropped[s]]
        gone = history.play_ts[s][dropped[s]]
        # what is kept is the member's earliest plays; nothing kept is later than a dropped play
        assert len(gone) == min(4, n_u[u])
        assert len(kept) == 0 or len(gone) == 0 or kept.max() <= gone.min()
        assert np.array_equal(h.play_title[h.user_plays(u)], history.play_title[s][~dropped[s]])


def test_play_counts_are_as_of_the_request_time(history: History) -> None:
    times = PlayTimes.of_plays(history)
    rng = np.random.default_rng(0)
    for at in rng.integers(history.play_ts.min(), history.play_ts.max(), 20):
        at = int(at) // 1_000_000 * 1_000_000  # whole seconds: the index's resolution
        want = np.bincount(history.play_title[history.play_ts < at], minlength=history.n_titles)
        assert np.array_equal(times.before(at), want)


def test_features_ignore_plays_after_the_request(history: History) -> None:
    """A page asked at T sees the member's and everyone's plays before T only: the features
    at T equal those computed on the History cut at T."""
    cfg = TopPicksConfig(candidates=30)
    u = int(np.argmax(np.diff(history.user_offsets)))
    ts = history.play_ts[history.user_plays(u)]
    at = int(ts[len(ts) // 2]) // 1_000_000 * 1_000_000
    gens = Generators.fit(history, cfg)
    cand, X = candidates_and_features(gens, history, u, at, cfg)
    truncated = truncate_history(history, at)
    cut_gens = Generators(
        gens.ease, gens.knn, gens.signals, PlayTimes.of_plays(truncated), gens.knn_sparse
    )
    cand_cut, X_cut = candidates_and_features(cut_gens, truncated, u, at, cfg)
    assert np.array_equal(cand, cand_cut)
    assert np.array_equal(X, X_cut, equal_nan=True)
    assert X.shape == (len(cand), len(FEATURES))


def test_the_row_follows_the_learned_model(history: History) -> None:
    ranker = TopPicksRanker("top_picks", TopPicksConfig(windows=2, holdout=3, trees=40)).fit(
        history
    )
    assert ranker.training_["groups"] > 10
    assert ranker.forest_ is not None
    u = 5
    at = CUTOFF + timedelta(hours=1)
    ctx = RequestContext(str(history.user_ids[u]), "tv", at, None)
    (row,) = ranker.propose(ctx, history)
    cand, X = candidates_and_features(ranker.generators_, history, u, ctx.at_us, ranker.config)
    s = ranker.forest_.raw(X)
    # the row holds the candidates with the model's best scores (ties at its end either way)
    s32 = s.astype(row.scores.dtype)
    np.testing.assert_array_equal(row.scores, np.sort(s32)[::-1][: len(row.titles)])
    np.testing.assert_array_equal(row.scores, s32[np.searchsorted(cand, row.titles)])
    assert np.isin(row.titles, cand).all() and len(set(row.titles.tolist())) == len(row.titles)
    # nothing the member already played is proposed
    played = set(history.play_title[history.user_plays(u)].tolist())
    assert not played & set(row.titles.tolist())


def test_more_rows_continue_the_learned_order(history: History) -> None:
    cfg = TopPicksConfig(windows=1, holdout=3, trees=20, row_length=8, candidates=20)
    one = TopPicksRanker("top_picks", cfg).fit(history)
    more = TopPicksRanker(
        "top_picks", cfg.model_copy(update={"more_titles": ("More Picks", "Even More")})
    ).fit(history)
    ctx = RequestContext(str(history.user_ids[5]), "tv", CUTOFF + timedelta(hours=1), None)
    (first,) = one.propose(ctx, history)
    rows = more.propose(ctx, history)
    assert [r.row_id for r in rows] == ["top_picks", "top_picks:more1", "top_picks:more2"]
    assert [r.kind for r in rows] == ["top_picks", "top_picks_more", "top_picks_more"]
    assert np.array_equal(rows[0].titles, first.titles)
    # one learned order cut in consecutive rows: no title twice, scores never rise
    titles = np.concatenate([r.titles for r in rows])
    scores = np.concatenate([r.scores for r in rows])
    assert len(set(titles.tolist())) == len(titles) == 24
    assert np.all(np.diff(scores) <= 0)


def test_a_shorter_step_overlaps_the_continuation_rows(history: History) -> None:
    """With `more_step` 5 and rows of 8, row k starts at rank 5k of the same order, so the
    titles ranked 6-8 that a 5-title-wide screen would cut from a row lead the next one."""
    cfg = TopPicksConfig(windows=1, holdout=3, trees=20, row_length=8, candidates=20)
    keys = {"more_titles": ("More Picks", "Even More"), "more_step": 5}
    ranker = TopPicksRanker("top_picks", cfg.model_copy(update=keys)).fit(history)
    ctx = RequestContext(str(history.user_ids[5]), "tv", CUTOFF + timedelta(hours=1), None)
    first, more1, more2 = ranker.propose(ctx, history)
    order = np.concatenate([first.titles, more1.titles[3:], more2.titles[3:]])
    assert len(set(order.tolist())) == len(order) == 18
    assert np.array_equal(more1.titles[:3], first.titles[5:])
    assert np.array_equal(more2.titles[:3], more1.titles[5:])


def test_dealt_rows_share_the_learned_order_by_anti_diagonals(history: History) -> None:
    """With `more_deal`, the row and its 2 continuation rows hold the top 3 x 8 of one order:
    ranks 1-2 lead the row, rank 3 heads the first continuation row, rank 6 the second."""
    cfg = TopPicksConfig(windows=1, holdout=3, trees=20, row_length=8, candidates=20)
    plain = TopPicksRanker(
        "top_picks", cfg.model_copy(update={"more_titles": ("More Picks", "Even More")})
    ).fit(history)
    keys = {"more_titles": ("More Picks", "Even More"), "more_deal": True}
    dealt = TopPicksRanker("top_picks", cfg.model_copy(update=keys)).fit(history)
    ctx = RequestContext(str(history.user_ids[5]), "tv", CUTOFF + timedelta(hours=1), None)
    order = np.concatenate([r.titles for r in plain.propose(ctx, history)])
    first, more1, more2 = dealt.propose(ctx, history)
    assert [more1.kind, more2.kind] == ["top_picks_more"] * 2
    assert first.titles[:2].tolist() == order[:2].tolist()
    assert (more1.titles[0], more2.titles[0]) == (order[2], order[5])
    got = np.concatenate([first.titles, more1.titles, more2.titles])
    assert sorted(got.tolist()) == sorted(order.tolist())  # the same 24 titles, none twice
    for row in (first, more1, more2):  # each row keeps the order's ranking
        assert np.all(np.diff(row.scores) <= 0)


def test_genre_rows_are_the_learned_order_within_the_member_s_genres(history: History) -> None:
    cfg = TopPicksConfig(windows=1, holdout=3, trees=20, row_length=8, candidates=20)
    keys = {"max_genre_rows": 2, "min_row_titles": 1}
    ranker = TopPicksRanker("top_picks", cfg.model_copy(update=keys)).fit(history)
    u = 5
    ctx = RequestContext(str(history.user_ids[u]), "tv", CUTOFF + timedelta(hours=1), None)
    main, *genre = ranker.propose(ctx, history)
    assert 1 <= len(genre) <= 2 and all(r.kind == "top_picks_genre" for r in genre)
    # the member's largest genre by decayed share comes first
    share = ranker.generators_.signals.genre_share(history, u, ctx.at_us, cfg.genre_half_life_days)
    first = history.genre_names[int(np.argmax(share))]
    assert genre[0].row_id == f"top_picks:{first}" and genre[0].title == f"Top Picks in {first}"
    # each row: titles of its genre, best first, and the main row's titles of that genre lead it
    g = history.genre_names.index(first)
    assert history.title_genres[genre[0].titles, g].all()
    assert np.all(np.diff(genre[0].scores) <= 0)
    in_genre = [t for t in main.titles.tolist() if history.title_genres[t, g]]
    assert genre[0].titles[: len(in_genre)].tolist() == in_genre


def test_a_block_of_requests_gets_each_request_s_own_rows(history: History) -> None:
    """propose_block (one model call for the block, the title signals once per time) gives
    every request exactly the rows `propose` gives it alone, continuation rows included."""
    cfg = TopPicksConfig(windows=1, holdout=3, trees=20, row_length=8, candidates=20)
    ranker = TopPicksRanker(
        "top_picks", cfg.model_copy(update={"more_titles": ("More Picks",)})
    ).fit(history)
    times = [CUTOFF + timedelta(hours=1), CUTOFF + timedelta(days=2)]
    users = [str(u) for u in history.user_ids[:30]] + ["not-a-member"]
    ctxs = [RequestContext(u, "tv", t, None) for u in users for t in times]
    block = ranker.propose_block(ctxs, history)
    assert len(block) == len(ctxs) and sum(len(rows) == 2 for rows in block) > 20
    for ctx, rows in zip(ctxs, block, strict=True):
        alone = ranker.propose(ctx, history)
        assert [r.row_id for r in rows] == [r.row_id for r in alone]
        for a, b in zip(rows, alone, strict=True):
            assert np.array_equal(a.titles, b.titles) and np.array_equal(a.scores, b.scores)
            assert a.evidence == b.evidence
    assert ranker.propose_block([], history) == []
