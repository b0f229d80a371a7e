"""Trending Now: what members are playing right now, in the member's country.

Each play before the history cut-off counts 2^(-age / half_life) (age measured at the cut-off),
so a spike in the last hours outweighs last week's hit: with a 24 h half-life a play from 3 hours
ago counts 0.92, one from 3 days ago 0.125. The popularity is kept per country and globally; a
member's row blends the two, trusting the country in proportion to how much it has played
lately (a country with little recent data falls back to the global trend). A light personal
touch multiplies each title by (1 + personalization x the member's share of plays in its genres).

Two instances with different half-lives (e.g. 24 h and 7 d) are normal. Scores are decayed on
to the request time, so they shrink as the model ages: the same order, but a page model sees a
stale trend as a weaker one. Nothing at or after the cut-off is read from the History.

Served with live events, the counts also take the members' plays after the cut-off (`nearline`,
called by the engine every `[serving] nearline_seconds` with the plays since its last call):
the snapshot's counts and the live plays, decayed to the newest live play. A request for a
time before that play reads the snapshot's counts.

A request for a time before the cut-off (a benchmark replaying the past, a member-by-member
evaluation) gets the trend as of that time: the plays before it, decayed to it, and the member's
plays before it for the personal touch. What happened later is not known at that time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, LivePlays, RankerConfig
from engine.data.history import US_PER_HOUR, History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import (
    check_fitted,
    history_fingerprint,
    load_state,
    make_row,
    save_state,
    top_k,
)

STATE_VERSION = 1


class TrendingConfig(RankerConfig):
    """Keys of a `type = "trending"` instance."""

    # A play's weight halves every half_life_hours: 24 reacts within hours, 168 is "this week".
    half_life_hours: float = Field(default=24.0, gt=0)
    # Titles proposed; filters and dedupe trim the row later.
    max_titles: int = Field(default=40, ge=1)
    # Weight of the member's country against the world, at full trust in the country's data.
    country_weight: float = Field(default=0.6, ge=0, le=1)
    # Decayed plays at which a country earns half of country_weight (shrinkage for small ones).
    country_prior_plays: float = Field(default=30.0, ge=0)
    # A title is multiplied by (1 + personalization x the member's share of plays in its genres).
    personalization: float = Field(default=0.3, ge=0)
    # Decayed plays below which a title is not trending at all.
    min_score: float = Field(default=0.05, ge=0)
    label: str = "Trending Now"

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        # Not the half-life: it is what the row's label promises ("Trending Now", "This Week").
        return {"personalization": (0.0, 1.0), "country_weight": (0.0, 0.9)}


class TrendingRanker:
    """One row of titles with the most decayed plays in the member's country and worldwide."""

    type_name = "trending"
    Config = TrendingConfig
    keeps_finished = False
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device = False

    def __init__(self, name: str, config: TrendingConfig) -> None:
        self.name = name
        self.config = config

    def fit(self, history: History) -> Self:
        c = self.config
        age_h = (history.cutoff_us - history.play_ts).astype(np.float64) / US_PER_HOUR
        weight = np.exp2(-np.maximum(age_h, 0.0) / c.half_life_hours)
        countries, code = np.unique(history.user_country[history.play_user], return_inverse=True)
        n_t = history.n_titles
        flat = code.astype(np.int64) * n_t + history.play_title
        per_country = np.bincount(flat, weights=weight, minlength=len(countries) * n_t)
        self.countries_ = countries.astype(str)
        self.country_counts_ = per_country.reshape(len(countries), n_t)
        self.global_counts_ = self.country_counts_.sum(axis=0)
        self.history_ = history_fingerprint(history)
        self._prepare(history)
        return self

    def _prepare(self, history: History) -> None:
        self.cutoff_us_ = history.cutoff_us
        self.short_lists_ = self._short_lists(self.global_counts_, self.country_counts_)
        # (as of, short lists) with the live plays (`nearline`); None until it is called.
        self.nearline_: tuple[int, dict[str, tuple[np.ndarray, np.ndarray, float]]] | None = None
        # the live plays' own counts: (as of, per country, of members new to the snapshot)
        self._live: tuple[int, np.ndarray, np.ndarray] | None = None
        self._index_plays(history)

    def nearline(self, plays: LivePlays | None) -> None:
        """Add the live plays new since the last call to the counts, everything decayed to the
        newest live play so far (None: back to the snapshot's counts alone)."""
        check_fitted(self, "global_counts_")
        if plays is None:
            self.nearline_ = None
            self._live = None
            return
        half_life_us = self.config.half_life_hours * US_PER_HOUR
        n_c, n_t = self.country_counts_.shape
        if self._live is None:
            self._live = (self.cutoff_us_, np.zeros((n_c, n_t)), np.zeros(n_t))
        before_us, per_country, elsewhere = self._live
        as_of = max(plays.as_of_us, before_us)
        older = np.exp2(-(as_of - before_us) / half_life_us)
        pos = np.minimum(np.searchsorted(self.countries_, plays.country), max(n_c - 1, 0))
        known = self.countries_[pos] == plays.country if n_c else np.zeros(len(pos), bool)
        w = np.exp2(-(as_of - plays.ts_us) / half_life_us)
        flat = pos[known].astype(np.int64) * n_t + plays.title[known]
        per_country = per_country * older + np.bincount(
            flat, weights=w[known], minlength=n_c * n_t
        ).reshape(n_c, n_t)
        # plays of members new to the snapshot count in the world's trend only
        elsewhere = elsewhere * older + np.bincount(
            plays.title[~known], weights=w[~known], minlength=n_t
        )
        self._live = (as_of, per_country, elsewhere)
        snapshot = self.country_counts_ * np.exp2(-(as_of - self.cutoff_us_) / half_life_us)
        counts = snapshot + per_country
        self.nearline_ = (as_of, self._short_lists(counts.sum(axis=0) + elsewhere, counts))

    def _index_plays(self, history: History) -> None:
        """Plays in time order with their country's code, for trends as of a past time."""
        order = np.argsort(history.play_ts, kind="stable")
        country = history.user_country[history.play_user[order]]
        code = np.searchsorted(self.countries_, country)
        code = np.minimum(code, max(len(self.countries_) - 1, 0))
        self.play_ts_ = history.play_ts[order]
        self.play_key_ = code.astype(np.int64) * history.n_titles + history.play_title[order]

    def _short_list_at(
        self, country: str, at_us: int, n_titles: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """`short_lists_[country]` as of `at_us` (before the cut-off): the plays before it, each
        decayed by its age at `at_us`. Plays older than 30 half-lives weigh under 1e-9."""
        c = self.config
        half_life_us = c.half_life_hours * US_PER_HOUR
        lo = int(np.searchsorted(self.play_ts_, at_us - int(30 * half_life_us)))
        hi = int(np.searchsorted(self.play_ts_, at_us))
        w = np.exp2(-(at_us - self.play_ts_[lo:hi]) / half_life_us)
        n_c = max(len(self.countries_), 1)
        counts = np.bincount(self.play_key_[lo:hi], weights=w, minlength=n_c * n_titles)
        counts = counts.reshape(n_c, n_titles)
        base, trust = self._blend(country, counts.sum(axis=0), counts)
        cand = np.flatnonzero(base >= c.min_score)
        short = top_k(base, len(cand), cand)
        return short.astype(np.int32), base[short], trust

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "global_counts_")
        c = self.config
        user = history.user_index(request.user_id)
        country = request.country or (str(history.user_country[user]) if user >= 0 else "")
        counted_us = history.cutoff_us
        if request.at_us < history.cutoff_us:
            short, base, trust = self._short_list_at(country, request.at_us, history.n_titles)
        else:
            lists = self.short_lists_
            live = self.nearline_  # read once: a refresh on another thread replaces it whole
            if live is not None and request.at_us >= live[0]:
                counted_us, lists = live
            short, base, trust = lists.get(country) or lists[""]
        if len(short) == 0:
            return []
        affinity = _genre_affinity(history, user, short, request.at_us)
        score = base * (1.0 + c.personalization * affinity)
        order = top_k(score, c.max_titles)
        hours = max(request.at_us - counted_us, 0) / US_PER_HOUR
        scores = score[order] * np.exp2(-hours / c.half_life_hours)
        evidence = {"country": country, "country_trust": round(trust, 3), "age_hours": hours}
        return [
            make_row(
                ranker=self.name,
                kind=self.type_name,
                title=c.label,
                titles=short[order],
                scores=scores,
                evidence=evidence,
            )
        ]

    def _short_lists(
        self, glob: np.ndarray, per_country: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        """Per country (and "" = the world), the titles that can make the row, precomputed.

        Personalization multiplies a score by at most (1 + personalization), so a title whose
        base score is below the k-th best divided by that factor can never reach the top k:
        the short list keeps exactly the others (the request then only personalizes those)."""
        c = self.config
        lists: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for country in ["", *self.countries_.tolist()]:
            base, trust = self._blend(country, glob, per_country)
            cand = np.flatnonzero(base >= c.min_score)
            best = top_k(base, c.max_titles, cand)
            if len(best) == c.max_titles:
                reach = base[best[-1]] / (1.0 + c.personalization)
                cand = cand[base[cand] >= reach]
            short = top_k(base, len(cand), cand)
            lists[country] = (short.astype(np.int32), base[short], trust)
        return lists

    def _blend(
        self, country: str, glob: np.ndarray, per_country: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Decayed plays: the world's, pulled toward the country's in proportion to its data."""
        c = self.config
        pos = int(np.searchsorted(self.countries_, country))
        if not country or pos >= len(self.countries_) or self.countries_[pos] != country:
            return glob, 0.0
        local = per_country[pos]
        mass, g_mass = float(local.sum()), float(glob.sum())
        if mass <= 0 or g_mass <= 0:
            return glob, 0.0
        trust = c.country_weight * mass / (mass + c.country_prior_plays)
        # Blend shares, then scale back to world play counts so min_score keeps its meaning.
        return ((1 - trust) * glob / g_mass + trust * local / mass) * g_mass, trust

    def save(self, directory: Path) -> None:
        check_fitted(self, "global_counts_")
        save_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={"countries": self.countries_, "country_counts": self.country_counts_},
            meta={"half_life_hours": self.config.half_life_hours},
        )

    def load(self, directory: Path, history: History) -> Self:
        arrays, meta = load_state(
            directory,
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=("countries", "country_counts"),
        )
        if meta.get("half_life_hours") != self.config.half_life_hours:
            raise ModelLoadError(
                f"{directory}: {self.name} was fitted with half_life_hours="
                f"{meta.get('half_life_hours')}, the config says {self.config.half_life_hours}: "
                "retrain, or restore the config the model was trained with."
            )
        self.countries_ = arrays["countries"].astype(str)
        self.country_counts_ = arrays["country_counts"].astype(np.float64)
        self.global_counts_ = self.country_counts_.sum(axis=0)
        self.history_ = history_fingerprint(history)
        self._prepare(history)
        return self


def _genre_affinity(history: History, user: int, titles: np.ndarray, at_us: int) -> np.ndarray:
    """Per title, the member's share of plays (before `at_us`) in that title's genres, averaged
    over its genres (so a title in many genres is not favoured for that alone); 0 for new
    members."""
    if user < 0 or history.title_genres.shape[1] == 0:
        return np.zeros(len(titles))
    s = history.user_plays(user)
    played = history.play_title[s][history.play_ts[s] < at_us]
    if len(played) == 0:
        return np.zeros(len(titles))
    share = history.title_genres[played].sum(axis=0) / len(played)
    genres = history.title_genres[titles]
    return np.asarray((genres @ share) / np.maximum(genres.sum(axis=1), 1), dtype=np.float64)
