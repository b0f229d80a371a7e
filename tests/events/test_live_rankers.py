"""Rankers' per-member state for a member with live plays: PVR's ALS member vector is folded in
from the member's plays (no retrain), close to the one training solved; Watch again and
Continue Watching read the member-local History instead of what they precomputed."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from engine.data.history import History
from engine.events.member_history import member_history
from engine.events.schema import PlayEvent
from engine.pipeline import Engine
from rankers.pvr import PVRConfig, PVRRanker, member_titles


def test_als_fold_in_matches_the_trained_member_vectors(eng: Engine) -> None:
    h: History = eng.history
    cfg = PVRConfig(method="als", factors=8, als_iterations=8, user_half_life_days=0)
    pvr = PVRRanker("pvr_als", cfg).fit(h)
    model = pvr.model_
    counts = np.diff(h.user_offsets)
    corr = []
    for user in np.argsort(-counts)[:20]:
        titles, w = member_titles(h, int(user), at_us=h.cutoff_us)
        pos = pvr.signals_.eval_pos[titles]
        keep = pos >= 0
        trained = model.raw(int(user), pos[keep], w[keep])
        folded = model.fold_in(pos[keep], w[keep], cfg.als_reg, cfg.als_alpha)
        corr.append(np.corrcoef(trained, folded)[0, 1])
    assert np.median(corr) > 0.9, corr


def test_a_new_member_gets_als_scores_from_live_plays(eng: Engine) -> None:
    h = eng.history
    pvr = PVRRanker("pvr_als", PVRConfig(method="als", factors=8, als_iterations=4)).fit(h)
    at = h.cutoff_us + 3_600_000_000
    plays = [
        PlayEvent(f"a{k}", "someone-new", str(h.title_ids[t]), h.cutoff_us + k, "tv", 60.0, 1.0)
        for k, t in enumerate(np.argsort(-np.bincount(h.play_title, minlength=h.n_titles))[:5])
    ]
    mh = member_history(h, "someone-new", plays)
    user = mh.user_index("someone-new")
    assert user == h.n_users == mh.live_member
    scores = pvr.scores(user, mh, at)
    cold = pvr.scores(-1, h, at)
    assert np.isfinite(scores).all() and not np.allclose(scores, cold)


def test_watch_again_reads_a_live_finish(eng: Engine, member: str) -> None:
    """A kids' movie finished live, a day after the cut-off: offered again once its wait is
    over, which the ranker's precomputed per-member lists could not know."""
    ranker = next(r for r in eng.rankers.values() if getattr(r, "type_name", "") == "watch_again")
    h = eng.history
    played = set(h.play_title[h.user_plays(h.user_index(member))].tolist())
    movie = next(
        t
        for t in range(h.n_titles)
        if h.series[t] < 0 and h.maturity[t] <= ranker.config.kids_maturity and t not in played
    )
    finished = datetime.fromtimestamp(h.cutoff_us / 1e6).astimezone() + timedelta(days=1)
    ctx = eng.context(member, "tv", finished + timedelta(days=ranker.config.kids_min_days + 1))
    ev = PlayEvent(
        "wa", member, str(h.title_ids[movie]), int(finished.timestamp() * 1e6), "tv", 5e3, 1.0
    )
    before = {int(t) for row in ranker.propose(ctx, h) for t in row.titles}
    after = {
        int(t) for row in ranker.propose(ctx, member_history(h, member, [ev])) for t in row.titles
    }
    assert movie in after and movie not in before
