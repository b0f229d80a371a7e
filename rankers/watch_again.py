"""Watch It Again: titles the member finished a while ago and is likely to replay.

Rewatching is title-specific (kids' films get replayed, thrillers rarely) and member-specific
(some members rewatch, most do not), so both are learned from the history:

    rate(title)  = (rewatchers + k * prior) / (finishers + k)     for titles
    rate(member) = (rewatched + k * prior) / (finished + k)       for members

where a rewatch is any play of a title after the member first finished it, and the prior is the
average rate of the title's group (kids' titles, maturity <= `kids_maturity`, or the rest).

    score = rate(title) * rate(member) / prior * (1 + log1p(plays after the first finish))

Eligible: titles the member finished (progress >= FINISHED_PROGRESS) and has not touched for
`min_days` (`kids_min_days` for kids' titles, which are replayed sooner). Episodes only for
kids' series, one tile per series. `keeps_finished` is True: finished titles are the point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import FINISHED_PROGRESS, US_PER_DAY, History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import (
    check_fitted,
    first_per_series,
    group_bounds,
    history_fingerprint,
    load_state,
    make_row,
    save_state,
    top_k,
)

STATE_VERSION = 1
_DEFAULT_PRIOR = 0.05  # rewatch rate assumed before any finisher is seen


class WatchAgainConfig(RankerConfig):
    """Keys of a `type = "watch_again"` instance."""

    min_days: float = Field(
        default=30.0, ge=0, description="days since the last play, adult titles"
    )
    kids_min_days: float = Field(
        default=3.0, ge=0, description="days since the last play, kids' titles"
    )
    kids_maturity: int = Field(default=7, description="titles rated at most this are kids' titles")
    prior_strength: float = Field(default=5.0, gt=0, description="k: pseudo-finishers of the prior")
    max_titles: int = Field(default=30, ge=1)
    label: str = "Watch It Again"


class WatchAgainRanker:
    """One row of finished titles worth replaying."""

    type_name = "watch_again"
    Config = WatchAgainConfig
    keeps_finished = True
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device = False

    def __init__(self, name: str, config: WatchAgainConfig) -> None:
        self.name = name
        self.config = config

    def fit(self, history: History) -> Self:
        c = self.config
        kids = history.maturity <= c.kids_maturity
        p_user, p_title, last_ts, finished, rewatches = _pairs(history, history.cutoff_us)
        fin = finished.astype(np.float64)
        rew = (finished & (rewatches > 0)).astype(np.float64)
        prior = np.full(2, _DEFAULT_PRIOR)
        for g in (0, 1):
            in_group = kids[p_title] == bool(g)
            if fin[in_group].sum() > 0:
                prior[g] = rew[in_group].sum() / fin[in_group].sum()
        # Keep priors away from 0 so the member factor rate / prior stays finite.
        prior = np.maximum(prior, 1e-3)
        k = c.prior_strength
        n_t, n_u = history.n_titles, history.n_users
        t_prior = prior[kids.astype(np.int64)]
        t_fin = np.bincount(p_title, weights=fin, minlength=n_t)
        t_rew = np.bincount(p_title, weights=rew, minlength=n_t)
        self.title_rate_ = (t_rew + k * t_prior) / (t_fin + k)
        all_prior = float(rew.sum() / fin.sum()) if fin.sum() > 0 else _DEFAULT_PRIOR
        self.prior_ = max(all_prior, 1e-3)
        u_fin = np.bincount(p_user, weights=fin, minlength=n_u)
        u_rew = np.bincount(p_user, weights=rew, minlength=n_u)
        self.user_rate_ = (u_rew + k * self.prior_) / (u_fin + k)
        self._index(history, p_user, p_title, last_ts, finished, rewatches)
        return self

    def _index(
        self,
        history: History,
        p_user: np.ndarray,
        p_title: np.ndarray,
        last_ts: np.ndarray,
        finished: np.ndarray,
        rewatches: np.ndarray,
    ) -> None:
        """Each member's finished titles (pairs come grouped by member), sliced per request."""
        users, self.done_title_, self.done_last_ts_, self.done_wait_us_, self.done_rewatches_ = (
            self._finished(history, p_user, p_title, last_ts, finished, rewatches)
        )
        self.done_offsets_ = np.searchsorted(users, np.arange(history.n_users + 1))
        self.history_ = history_fingerprint(history)

    def _qualifies(self, history: History, p_title: np.ndarray, finished: np.ndarray) -> np.ndarray:
        # Episodes only for kids' series; the rest never qualify, so they are dropped early.
        kids = history.maturity[p_title] <= self.config.kids_maturity
        return finished & ((history.series[p_title] < 0) | kids)

    def _finished(
        self,
        history: History,
        p_user: np.ndarray,
        p_title: np.ndarray,
        last_ts: np.ndarray,
        finished: np.ndarray,
        rewatches: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(member, title, last play, wait before offering, rewatches) of the pairs that
        qualify."""
        c = self.config
        keep = self._qualifies(history, p_title, finished)
        kids = history.maturity[p_title[keep]] <= c.kids_maturity
        return (
            p_user[keep],
            p_title[keep].astype(np.int32),
            last_ts[keep],
            np.where(kids, c.kids_min_days, c.min_days) * US_PER_DAY,
            rewatches[keep],
        )

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "title_rate_")
        c = self.config
        user = history.user_index(request.user_id)
        if user < 0:
            return []
        at = max(request.at_us, history.cutoff_us)
        if user == history.live_member:
            # Plays after the cut-off (engine.events): this member's finished titles now.
            _, done_title, done_last_ts, done_wait_us, done_rewatches = self._finished(
                history, *_pairs(history, at)
            )
        else:
            s = slice(self.done_offsets_[user], self.done_offsets_[user + 1])
            done_title, done_last_ts = self.done_title_[s], self.done_last_ts_[s]
            done_wait_us, done_rewatches = self.done_wait_us_[s], self.done_rewatches_[s]
        ok = at - done_last_ts >= done_wait_us
        if not ok.any():
            return []
        titles, rewatches = done_title[ok], done_rewatches[ok]
        # A member new to the model has the prior rate (a factor of 1).
        rate = float(self.user_rate_[user]) if user < len(self.user_rate_) else self.prior_
        member = rate / self.prior_
        score = self.title_rate_[titles] * member * (1.0 + np.log1p(rewatches))
        order = top_k(score, len(titles))
        order = order[first_per_series(history, titles[order])][: c.max_titles]
        return [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=c.label,
                titles=titles[order],
                scores=score[order],
                evidence={"member_rewatch_rate": round(rate, 4)},
            )
        ]

    def save(self, directory: Path) -> None:
        check_fitted(self, "title_rate_")
        save_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={"title_rate": self.title_rate_, "user_rate": self.user_rate_},
            meta={"prior": self.prior_},
        )

    def load(self, directory: Path, history: History) -> Self:
        arrays, meta = load_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=("title_rate", "user_rate"),
        )
        if not isinstance(meta.get("prior"), float):
            raise ModelLoadError(f"{directory}: {self.name} state lacks its prior rewatch rate")
        self.title_rate_ = arrays["title_rate"].astype(np.float64)
        self.user_rate_ = arrays["user_rate"].astype(np.float64)
        self.prior_ = float(meta["prior"])
        self._index(history, *_pairs(history, history.cutoff_us))
        return self


def _pairs(
    history: History, before_us: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (member, title) pair played before `before_us`: member, title, last play time,
    finished?, plays after the first finish."""
    keep = history.play_ts < before_us
    return _group(
        history.play_user[keep],
        history.play_title[keep],
        history.play_ts[keep],
        history.play_progress[keep],
        history.n_titles,
    )


def _group(
    user: np.ndarray, title: np.ndarray, ts: np.ndarray, progress: np.ndarray, n_titles: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group plays (in (user, ts) order) by (user, title)."""
    if len(user) == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e, e, e.astype(bool), e
    key = user.astype(np.int64) * n_titles + title
    o = np.argsort(key, kind="stable")  # each group stays in time order
    ks = key[o]
    starts, ends = group_bounds(ks)
    done = progress[o] >= FINISHED_PROGRESS
    finished = np.logical_or.reduceat(done, starts)
    # Plays after the first finished one: position of the first finish within each group.
    pos = np.arange(len(o))
    first_done = np.minimum.reduceat(np.where(done, pos, len(o)), starts)
    after = np.where(finished, ends - 1 - first_done, 0)
    return (
        ks[starts] // n_titles,
        ks[starts] % n_titles,
        ts[o][ends - 1],
        finished,
        after,
    )
