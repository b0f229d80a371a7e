"""Continue Watching: titles the member started and has not finished, and for series the next
episode after the last finished one, ordered by how likely the member is to resume each.

Candidates, per movie or per series (one tile per series: the last episode touched):
- the last played title, when its progress is at least `min_progress` and it was never played
  to FINISHED_PROGRESS;
- for a series whose last played episode is finished, the next episode (progress 0 unless
  already started), when it exists and is not finished.

Order: a small logistic model on a few features (hours since the title was last played, where
the member stopped, early abandon, plays of other titles since, next-episode, same device as
the last play, sessions on the title, recency rank). It is fitted on the history itself: at
several past times t, each member's candidates as of t are labelled by whether the member
played them in the following `label_window_days` (only members who played anything in that
window: a page request means the member is there). Every window ends before the cut-off.
`model = "recency"` gives plain most-recent-first; bench/bench_continue_watching.py compares
the two on the simulated world.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import FINISHED_PROGRESS, US_PER_DAY, US_PER_HOUR, History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import (
    check_fitted,
    group_bounds,
    group_starts,
    history_fingerprint,
    load_state,
    make_row,
    save_state,
    top_k,
)

STATE_VERSION = 1
FEATURES: tuple[str, ...] = (
    "bias",
    "log_hours_since",
    "progress",
    "early_abandon",
    "log_plays_since",
    "next_episode",
    "same_device",
    "log_sessions",
    "log_recency_rank",
)
# Used when the history is too small to fit (fewer than MIN_TRAIN_POSITIVES resumes or
# non-resumes): weight on recency only, i.e. most-recent-first. A hand-set mix of all features
# did worse than plain recency on the simulated world (bench/bench_continue_watching.py).
FALLBACK_WEIGHTS = np.array([0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
MIN_TRAIN_POSITIVES = 30


class ContinueWatchingConfig(RankerConfig):
    """Keys of a `type = "continue_watching"` instance."""

    # The resume-probability model, or plain most-recent-first.
    model: Literal["logistic", "recency"] = "logistic"
    # Below this progress a play is a peek, not a start.
    min_progress: float = Field(default=0.02, ge=0, lt=FINISHED_PROGRESS)
    max_titles: int = Field(default=20, ge=1)
    # Titles untouched for longer than this leave the row.
    max_age_days: float = Field(default=90.0, gt=0)
    # Training: a candidate is positive when played within label_window_days of a past cut
    # time; n_windows cut times, window_step_days apart, the last one label_window_days
    # before the history's cut-off.
    label_window_days: float = Field(default=7.0, gt=0)
    n_windows: int = Field(default=4, ge=1)
    window_step_days: float = Field(default=7.0, gt=0)
    # Ridge penalty of the logistic fit (the intercept is not penalized).
    l2: float = Field(default=1.0, ge=0)
    label: str = "Continue Watching"


@dataclass(frozen=True)
class _Candidates:
    """Continue-watching candidates of many members as of one time, with their features."""

    user: np.ndarray  # int32
    title: np.ndarray  # int32
    progress: np.ndarray  # float32, where to resume
    last_ts: np.ndarray  # int64, last play of the title (or of the finished episode before it)
    last_device: np.ndarray  # int8
    next_episode: np.ndarray  # bool
    sessions: np.ndarray  # int64, plays of the title or series
    plays_since: np.ndarray  # int64, the member's plays after last_ts


class ContinueWatchingRanker:
    """One row: started, unfinished titles and next episodes, likeliest resume first."""

    type_name = "continue_watching"
    Config = ContinueWatchingConfig
    keeps_finished = False
    # Rows differ by device (the same-device feature): never reused across devices.
    uses_device = True

    def __init__(self, name: str, config: ContinueWatchingConfig) -> None:
        self.name = name
        self.config = config

    def fit(self, history: History) -> Self:
        c = self.config
        self._prepare(history)
        self.weights_ = FALLBACK_WEIGHTS.copy()
        self.fitted_on_ = 0
        if c.model == "recency":
            return self
        x, y = training_set(history, self.next_episode_, c)
        if int(y.sum()) >= MIN_TRAIN_POSITIVES and int((1 - y).sum()) >= MIN_TRAIN_POSITIVES:
            self.weights_ = fit_logistic(x, y, c.l2)
            self.fitted_on_ = len(y)
        return self

    def _prepare(self, history: History) -> None:
        """Every member's candidates as of the cut-off, computed once for all members by the
        same code that builds the training set (no train/serve skew); a request slices them."""
        self.next_episode_ = next_episodes(history)
        self.history_ = history_fingerprint(history)
        all_plays = np.arange(len(history.play_ts))
        # Candidates come out grouped by member in increasing order (sorted by member, entity).
        self.candidates_ = candidates_as_of(
            history, all_plays, history.cutoff_us, self.next_episode_, self.config
        )
        self.candidate_offsets_ = np.searchsorted(
            self.candidates_.user, np.arange(history.n_users + 1)
        )

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "weights_")
        c = self.config
        user = history.user_index(request.user_id)
        if user < 0:
            return []
        at = max(request.at_us, history.cutoff_us)
        if user == history.live_member:
            # Plays after the cut-off (engine.events): this member's candidates from their
            # plays now, by the code that computes everyone's at fit time.
            s = history.user_plays(user)
            cand = candidates_as_of(history, np.arange(s.start, s.stop), at, self.next_episode_, c)
        else:
            lo, hi = self.candidate_offsets_[user], self.candidate_offsets_[user + 1]
            cand = _take(self.candidates_, slice(lo, hi))
        if len(cand.user) == 0:
            return []
        fresh = cand.last_ts >= at - int(c.max_age_days * US_PER_DAY)
        if not fresh.any():
            return []
        cand = _take(cand, fresh)
        if c.model == "recency":
            score = 1.0 / (1.0 + (at - cand.last_ts) / US_PER_HOUR)
        else:
            x = features(cand, at, np.full(len(cand.user), request.device_code, dtype=np.int8))
            score = _sigmoid(x @ self.weights_)
        order = top_k(score, c.max_titles)
        return [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=c.label,
                titles=cand.title[order],
                scores=score[order],
                progress=cand.progress[order],
                evidence={"model": c.model, "fitted_on": self.fitted_on_},
            )
        ]

    def save(self, directory: Path) -> None:
        check_fitted(self, "weights_")
        save_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={"weights": self.weights_},
            meta={"features": list(FEATURES), "fitted_on": self.fitted_on_},
        )

    def load(self, directory: Path, history: History) -> Self:
        arrays, meta = load_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=("weights",),
        )
        if meta.get("features") != list(FEATURES) or arrays["weights"].shape != (len(FEATURES),):
            raise ModelLoadError(
                f"{directory}: {self.name} was saved with features {meta.get('features')}, "
                f"this rowrank uses {list(FEATURES)}: retrain with `rowrank train`."
            )
        self.weights_ = arrays["weights"].astype(np.float64)
        self.fitted_on_ = int(meta.get("fitted_on", 0))
        self._prepare(history)
        return self


# ----- candidates and features (vectorized over members; also used by the benchmark) ---------


def next_episodes(history: History) -> np.ndarray:
    """Per title, the index of the next episode of its series (-1: none, or not an episode)."""
    nxt = np.full(history.n_titles, -1, dtype=np.int32)
    ep = np.flatnonzero(history.series >= 0)
    if len(ep) < 2:
        return nxt
    order = ep[np.lexsort((ep, history.episode[ep], history.series[ep]))]
    same = history.series[order[:-1]] == history.series[order[1:]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def candidates_as_of(
    history: History,
    plays: np.ndarray,
    t_us: int,
    next_episode: np.ndarray,
    config: ContinueWatchingConfig,
) -> _Candidates:
    """Candidates from `plays` (indices into the play arrays, in (user, ts) order) before t."""
    plays = plays[history.play_ts[plays] < t_us]
    if len(plays) == 0:
        return _empty_candidates()
    n_t = history.n_titles
    user = history.play_user[plays].astype(np.int64)
    title = history.play_title[plays]
    prog = history.play_progress[plays]
    # One group per (member, title); stable sort keeps each group in time order.
    pair = user * n_t + title
    o = np.argsort(pair, kind="stable")
    pair_s = pair[o]
    starts, ends = group_bounds(pair_s)
    last = o[ends - 1]  # position (in `plays`) of each pair's last play
    p_key = pair_s[starts]
    p_user, p_title = user[last], title[last]
    p_max = np.maximum.reduceat(prog[o], starts)
    p_done = p_max >= FINISHED_PROGRESS
    # One tile per movie or series: the pair touched last.
    series = history.series[p_title]
    ent = np.where(series >= 0, n_t + series.astype(np.int64), p_title.astype(np.int64))
    ent_key = p_user * (n_t + int(history.series.max(initial=-1)) + 1) + ent
    eo = np.lexsort((last, ent_key))
    ent_s = ent_key[eo]
    e_starts, e_ends = group_bounds(ent_s)
    e_last = eo[e_ends - 1]  # the pair touched last in each entity
    sessions = ends - starts
    ent_sessions = np.add.reduceat(sessions[eo], e_starts)

    lp = last[e_last]  # that pair's last play
    last_prog = prog[lp]
    done = p_done[e_last]
    resume = ~done & (last_prog >= config.min_progress)
    nxt = next_episode[p_title[e_last]]
    # The next episode qualifies unless the member already finished it.
    nxt_key = p_user[e_last] * n_t + np.maximum(nxt, 0)
    pos = np.minimum(np.searchsorted(p_key, nxt_key), len(p_key) - 1)
    seen = (p_key[pos] == nxt_key) & (nxt >= 0)
    go_next = done & (nxt >= 0) & ~(seen & p_done[pos])
    keep = resume | go_next
    nxt_prog = np.where(seen, prog[last[pos]], 0.0)
    # Plays by the member after this one: plays are in (user, ts) order, so it is the distance
    # to the member's last play.
    user_end = np.searchsorted(user, user[lp], side="right") - 1
    return _Candidates(
        user=p_user[e_last][keep].astype(np.int32),
        title=np.where(go_next, nxt, p_title[e_last])[keep].astype(np.int32),
        progress=np.where(go_next, nxt_prog, last_prog)[keep].astype(np.float32),
        last_ts=history.play_ts[plays[lp]][keep],
        last_device=history.play_device[plays[lp]][keep],
        next_episode=go_next[keep],
        sessions=ent_sessions[keep],
        plays_since=(user_end - lp)[keep],
    )


def features(cand: _Candidates, t_us: int, device: np.ndarray) -> np.ndarray:
    """The model matrix (len(FEATURES) columns) for candidates seen at `t_us` on `device`."""
    hours = np.maximum(t_us - cand.last_ts, 0) / US_PER_HOUR
    # Recency rank within each member (0 = the most recent), candidates grouped by member.
    order = np.lexsort((-cand.last_ts, cand.user))
    first = group_starts(cand.user[order])
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.float64)
    rank[order] = np.arange(len(order)) - group_start
    return np.column_stack(
        [
            np.ones(len(hours)),
            np.log1p(hours),
            cand.progress,
            cand.progress < 0.15,
            np.log1p(cand.plays_since),
            cand.next_episode,
            (cand.last_device == device) & (device >= 0),
            np.log1p(cand.sessions),
            np.log1p(rank),
        ]
    ).astype(np.float64)


def training_set(
    history: History, next_episode: np.ndarray, config: ContinueWatchingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) over past cut times: was each candidate played within the label window?"""
    xs, ys = [], []
    window = int(config.label_window_days * US_PER_DAY)
    step = int(config.window_step_days * US_PER_DAY)
    all_plays = np.arange(len(history.play_ts))
    pair_all = history.play_user.astype(np.int64) * history.n_titles + history.play_title
    for k in range(config.n_windows):
        t = history.cutoff_us - window - k * step
        if t <= int(history.play_ts.min(initial=t)):
            break
        cand = candidates_as_of(history, all_plays, t, next_episode, config)
        in_window = (history.play_ts >= t) & (history.play_ts < t + window)
        # The device of each member's first play in the window stands in for the request's.
        w_idx = np.flatnonzero(in_window)
        w_user = history.play_user[w_idx]
        first = group_starts(w_user)
        dev = np.full(history.n_users, -2, dtype=np.int8)  # -2: member absent in the window
        dev[w_user[first]] = history.play_device[w_idx[first]]
        present = dev[cand.user] != -2
        if not present.any():
            continue
        cand = _take(cand, present)
        played = np.unique(pair_all[w_idx])
        key = cand.user.astype(np.int64) * history.n_titles + cand.title
        xs.append(features(cand, t, dev[cand.user]))
        ys.append(np.isin(key, played).astype(np.float64))
    if not xs:
        return np.empty((0, len(FEATURES))), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """Ridge logistic regression by Newton's method (a handful of features: exact and fast)."""
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), dtype=np.float64)


def _empty_candidates() -> _Candidates:
    i32, i64 = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
    return _Candidates(
        user=i32,
        title=i32,
        progress=np.empty(0, dtype=np.float32),
        last_ts=i64,
        last_device=np.empty(0, dtype=np.int8),
        next_episode=np.empty(0, dtype=bool),
        sessions=i64,
        plays_since=i64,
    )


def _take(cand: _Candidates, keep: np.ndarray | slice) -> _Candidates:
    return _Candidates(**{k: v[keep] for k, v in cand.__dict__.items()})
