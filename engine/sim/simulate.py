"""`rowrank simulate`: a streaming world with ground truth (docs/simulation.md).

`sample_world` draws the world's parameters (catalog, users, trending bursts); `simulate` runs it
day by day and writes a dataset (titles, users, plays, impressions) plus the world in
`OUT_DIR/ground_truth/` (engine/sim/world.py holds the model and the `GroundTruth` API).

All randomness flows from one `numpy.random.Generator` seeded once; children are spawned from it
(world, one per user chunk), so the same seed gives byte-identical files.

Users are simulated in chunks of `WorldParams.panel_users`, each for the whole period, so memory
stays bounded. The logging policy's popularity statistics (top picks, trending, genre rows) come
from the plays of the first chunk (the "panel"), computed at each day start from earlier days only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from engine.data.columns import (
    DEVICES,
    IMPRESSIONS,
    MATURITY_LEVELS,
    PLAYS,
    SCHEMA,
    TITLE_KINDS,
    Col,
)
from engine.data.dataset import Dataset, save_dataset
from engine.data.history import FINISHED_PROGRESS, US_PER_DAY, to_us
from engine.errors import ConfigError
from engine.request.layout import DEFAULT_LAYOUTS
from engine.sim.world import (
    COUNTRIES,
    G_HORROR,
    G_KIDS,
    G_THRILLER,
    GENRES,
    HOUR_US,
    MOVIE,
    ROW_KINDS,
    SERIES,
    PlayLog,
    State,
    World,
    WorldParams,
    browse,
)

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
SOURCE = "rowrank-simulate"
GROUND_TRUTH_DIR = "ground_truth"
SECOND_US = 1_000_000
YEAR_US = 365 * US_PER_DAY
G = len(GENRES)
N_COUNTRIES = len(COUNTRIES)
N_MAT = len(MATURITY_LEVELS)
# Policy list kinds inside the per-day table: top picks, trending, new_releases, then one per genre.
L_TOP, L_TREND, L_NEW = 0, 1, 2
N_LISTS = 3 + G
# Candidate rows of a logged page, in the policy's default order (codes index ROW_KINDS).
K_CW, K_TOP, K_TREND, K_PVR, K_BYW, K_NEW, K_WA = range(7)
DEFAULT_ROWS = (K_CW, K_TOP, K_TREND, K_PVR, K_BYW, K_NEW, K_PVR, K_WA)
MAX_R = max(lay.visible_rows for lay in DEFAULT_LAYOUTS.values())
MAX_C = max(lay.visible_titles for lay in DEFAULT_LAYOUTS.values())
VIS_ROWS = np.array([DEFAULT_LAYOUTS[d].visible_rows for d in DEVICES])
VIS_COLS = np.array([DEFAULT_LAYOUTS[d].visible_titles for d in DEVICES])
SEARCH_BATCH = 256  # search sessions scored together
SEARCH_POOL = 2000  # titles a search draws from (the whole catalog when it is this small)

GENRE_P = np.array([0.09, 0.16, 0.17, 0.10, 0.07, 0.08, 0.12, 0.08, 0.07, 0.06])
SERIES_GENRE_P = np.array([0.12, 0.15, 0.17, 0.08, 0.04, 0.10, 0.07, 0.05, 0.06, 0.16])
COUNTRY_P = np.array([0.34, 0.12, 0.11, 0.10, 0.14, 0.19])
# P(maturity level | primary genre), over MATURITY_LEVELS (0, 7, 13, 16, 18).
MATURITY_P = np.array(
    [
        [0.5, 0.5, 0.0, 0.0, 0.0],  # Kids
        [0.05, 0.15, 0.45, 0.25, 0.10],  # Comedy
        [0.02, 0.08, 0.35, 0.35, 0.20],  # Drama
        [0.0, 0.0, 0.30, 0.40, 0.30],  # Thriller
        [0.0, 0.0, 0.0, 0.40, 0.60],  # Horror
        [0.30, 0.30, 0.30, 0.10, 0.0],  # Documentary
        [0.0, 0.05, 0.45, 0.35, 0.15],  # Action
        [0.0, 0.05, 0.45, 0.35, 0.15],  # Romance
        [0.0, 0.10, 0.50, 0.30, 0.10],  # Sci-Fi
        [0.0, 0.30, 0.50, 0.20, 0.0],  # Reality
    ]
)
ADJECTIVES = (
    "Silent",
    "Crimson",
    "Hidden",
    "Last",
    "Broken",
    "Golden",
    "Midnight",
    "Wild",
    "Lost",
    "Bright",
    "Frozen",
    "Secret",
    "Distant",
    "Burning",
    "Quiet",
    "Hollow",
    "Iron",
    "Paper",
    "Velvet",
    "Electric",
    "Northern",
    "Little",
    "Endless",
    "Savage",
    "Gentle",
    "Final",
    "Stolen",
    "Sunny",
    "Dark",
    "Glass",
)
NOUNS = (
    "River",
    "Empire",
    "Garden",
    "Signal",
    "Harbor",
    "Kingdom",
    "Witness",
    "Orbit",
    "Frontier",
    "Whisper",
    "Island",
    "Storm",
    "Mirror",
    "Legacy",
    "Station",
    "Circus",
    "Forest",
    "Protocol",
    "Reunion",
    "Summer",
    "Ghost",
    "Engine",
    "Tide",
    "Crown",
    "Horizon",
    "Promise",
    "Valley",
    "Machine",
    "Detective",
    "Dragon",
)


# ----- sampling the world ------------------------------------------------------------------------


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of `probs` (n, k) by inverse CDF (rows need not sum to 1)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _effect_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """hour x genre logit offsets, weekend x genre, session traffic by hour, device by hour."""
    hours = np.arange(24)
    hg = np.zeros((24, G), dtype=np.float32)
    kids = GENRES.index("Kids")
    hg[(hours >= 6) & (hours <= 18), kids] = 0.9
    hg[(hours >= 21) | (hours <= 5), kids] = -1.3
    late = (hours >= 21) | (hours <= 2)
    day = (hours >= 6) & (hours <= 17)
    hg[late, G_HORROR], hg[(hours >= 3) & (hours <= 5), G_HORROR], hg[day, G_HORROR] = (
        0.9,
        0.3,
        -1.0,
    )
    hg[late, G_THRILLER], hg[day, G_THRILLER] = 0.5, -0.5
    doc = GENRES.index("Documentary")
    hg[(hours >= 9) & (hours <= 17), doc], hg[(hours >= 22) | (hours <= 3), doc] = 0.3, -0.2
    hg[(hours >= 20) & (hours <= 23), GENRES.index("Romance")] = 0.3
    hg[(hours >= 17) & (hours <= 21), GENRES.index("Reality")] = 0.25
    hg[(hours >= 19) & (hours <= 23), GENRES.index("Action")] = 0.2
    weekend_genre = np.zeros(G, dtype=np.float32)
    weekend_genre[kids], weekend_genre[doc] = 0.35, -0.2
    weekday = np.array(
        [1.0, 0.6, 0.35, 0.2, 0.15, 0.2, 0.45, 0.8, 0.9, 0.8, 0.8, 0.9,
         1.2, 1.1, 0.9, 1.0, 1.3, 1.8, 2.6, 3.4, 4.0, 4.1, 3.3, 2.0]
    )  # fmt: skip
    weekend = weekday.copy()
    weekend[8:18] *= 1.7
    weekend[[23, 0, 1]] *= 1.3
    traffic = np.stack([weekday / weekday.sum(), weekend / weekend.sum()]).astype(np.float32)
    dh = np.ones((24, len(DEVICES)), dtype=np.float32)
    tv, mobile, tablet, web = (DEVICES.index(d) for d in ("tv", "mobile", "tablet", "web"))
    dh[18:24, tv], dh[7:17, tv] = 1.6, 0.6
    dh[6:10, mobile], dh[12:14, mobile], dh[[23, 0, 1, 2], mobile], dh[18:23, mobile] = (
        1.6,
        1.4,
        1.4,
        0.8,
    )
    dh[7:20, tablet] = 1.2
    dh[9:18, web] = 1.4
    return hg, weekend_genre, traffic, dh


def sample_world(
    n_users: int,
    n_titles: int,
    days: int,
    rng: np.random.Generator,
    *,
    seed: int = 0,
    start: datetime = START,
    params: WorldParams | None = None,
) -> World:
    """Draw a world: catalog (movies + series episodes), users, trending bursts, policy tables."""
    if n_users < 1 or n_titles < 10 or days < 1:
        raise ValueError("a world needs at least 1 user, 10 titles and 1 day")
    params = params or WorldParams()
    start_us = to_us(start)
    r_cat, r_users, r_bursts, r_policy = rng.spawn(4)
    cat: dict[str, Any] = _sample_catalog(n_titles, days, start_us, params, r_cat)
    users: dict[str, Any] = _sample_users(n_users, days, start_us, params, r_users)
    bursts: dict[str, Any] = _sample_bursts(cat, days, start_us, r_bursts)
    hg, wg, traffic, dh = _effect_tables()
    neighbors = _policy_neighbors(cat, params.list_length, r_policy)
    return World(
        params=params,
        start_us=start_us,
        days=days,
        seed=seed,
        **cat,
        **users,
        **bursts,
        hour_genre=hg,
        weekend_genre=wg,
        hour_traffic=traffic,
        device_hour=dh,
        policy_neighbors=neighbors,
    )


def _sample_catalog(
    n: int, days: int, start_us: int, params: WorldParams, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    # Works: movies (1 title) and series (3-12 episode titles); ~45% of titles are episodes.
    target = round(0.45 * n)
    sizes: list[int] = []
    while sum(sizes) < target:
        sizes.append(min(int(rng.integers(3, 13)), target - sum(sizes)))
    n_movies = n - sum(sizes)
    size = np.array([1] * n_movies + sizes, dtype=np.int64)
    is_series = np.array([False] * n_movies + [True] * len(sizes))
    perm = rng.permutation(len(size))
    size, is_series = size[perm], is_series[perm]
    n_works = len(size)

    genre_probs = np.where(is_series[:, None], SERIES_GENRE_P, GENRE_P)
    primary = _pick(rng, genre_probs)
    compat = np.tile(GENRE_P, (G, 1))
    compat[np.arange(G), np.arange(G)] = 0.0
    compat[:, G_KIDS] = 0.0
    compat[[1, 6, 8], G_KIDS] = 0.04  # family comedy / action / sci-fi
    compat[G_KIDS] = 0.0
    compat[G_KIDS, [1, 5, 6, 8]] = 0.25
    second = np.where(rng.random(n_works) < 0.5, _pick(rng, compat[primary]), -1)
    genres = np.zeros((n_works, G), dtype=bool)
    genres[np.arange(n_works), primary] = True
    has2 = second >= 0
    genres[np.flatnonzero(has2), second[has2]] = True
    kids = genres[:, G_KIDS]
    mat_p = np.where(kids[:, None], MATURITY_P[G_KIDS], MATURITY_P[primary])
    maturity = np.array(MATURITY_LEVELS, dtype=np.int8)[_pick(rng, mat_p)]

    movie_len = np.where(kids, rng.uniform(80, 105, n_works), rng.uniform(80, 150, n_works))
    ep_len = np.where(kids, rng.uniform(20, 30, n_works), rng.uniform(22, 48, n_works))
    popularity = rng.normal(0.0, 1.2, n_works)
    factors = rng.normal(0.0, 0.53, (n_works, params.latent_dim))
    start_year = datetime.fromtimestamp(start_us / 1e6, UTC).year
    new = rng.random(n_works) < 0.12
    added = np.where(
        new,
        start_us + (rng.random(n_works) * days * US_PER_DAY),
        start_us - rng.random(n_works) * 5 * YEAR_US,
    ).astype(np.int64)
    age = np.floor(rng.exponential(7.0, n_works)).astype(np.int64)
    added_year = np.array(
        [datetime.fromtimestamp(a / 1e6, UTC).year for a in added.tolist()], dtype=np.int64
    )
    year = np.where(
        new, start_year - (rng.random(n_works) < 0.2), np.minimum(start_year - age, added_year)
    )
    year = np.maximum(year, 1950)
    everywhere = rng.random(n_works) < 0.7
    some = rng.random((n_works, N_COUNTRIES)) < 0.45
    none = ~some.any(axis=1)
    some[np.flatnonzero(none), rng.integers(0, N_COUNTRIES, int(none.sum()))] = True
    available = everywhere[:, None] | some

    # Expand works into titles.
    w = np.repeat(np.arange(n_works), size)
    first = np.repeat(np.cumsum(size) - size, size)
    ep_no = np.arange(n) - first + 1
    series_no = np.cumsum(is_series) - 1
    t_series = np.where(is_series[w], series_no[w], -1).astype(np.int32)
    episode = np.where(is_series[w], ep_no, -1).astype(np.int32)
    idx = np.arange(n, dtype=np.int32)
    prev_ep = np.where(episode > 1, idx - 1, -1).astype(np.int32)
    last_ep = first + size[w] - 1
    next_ep = np.where((episode >= 1) & (idx < last_ep), idx + 1, -1).astype(np.int32)
    jitter = rng.uniform(-3.0, 3.0, n)
    duration = np.where(
        is_series[w], np.clip(ep_len[w] + jitter, 20.0, 50.0), np.clip(movie_len[w], 80, 150)
    )
    pop = popularity[w] - 0.1 * np.maximum(episode - 1, 0)
    adj = rng.integers(0, len(ADJECTIVES), n_works)
    noun = rng.integers(0, len(NOUNS), n_works)
    work_names = [
        f"{ADJECTIVES[a]} {NOUNS[b]}" for a, b in zip(adj.tolist(), noun.tolist(), strict=True)
    ]
    names = [
        f"{work_names[wi]}: Episode {e}" if e > 0 else work_names[wi]
        for wi, e in zip(w.tolist(), episode.tolist(), strict=True)
    ]
    width = max(5, len(str(n)))
    return {
        "title_ids": np.array([f"t{i:0{width}d}" for i in range(n)]),
        "title_names": np.array(names),
        "title_kind": np.where(is_series[w], SERIES, MOVIE).astype(np.int8),
        "title_genres": genres[w],
        "release_year": year[w].astype(np.int32),
        "duration_min": np.round(duration).astype(np.float32),
        "maturity": maturity[w],
        "available": available[w],
        "added_us": added[w],
        "series": t_series,
        "episode": episode,
        "prev_episode": prev_ep,
        "next_episode": next_ep,
        "popularity": pop.astype(np.float32),
        "title_factors": factors[w].astype(np.float32),
    }


def _sample_users(
    n: int, days: int, start_us: int, params: WorldParams, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    country = _pick(rng, np.tile(COUNTRY_P, (n, 1))).astype(np.int8)
    kids = rng.random(n) < 0.08
    adult_mat = np.array([13, 16, 18], dtype=np.int8)[
        _pick(rng, np.tile([0.1, 0.15, 0.75], (n, 1)))
    ]
    mat = np.where(kids, np.int8(7), adult_mat).astype(np.int8)
    aff = rng.normal(0.0, 0.7, (n, G))
    fav = _pick(rng, np.tile(GENRE_P, (n, 1)))
    aff[np.arange(n), fav] += 1.3
    aff[:, G_KIDS] += np.where(kids, 2.8, -1.0)
    aff[:, G_HORROR] -= np.where(kids, 2.0, 0.0)
    aff[:, G_THRILLER] -= np.where(kids, 1.5, 0.0)
    factors = rng.normal(0.0, 0.53, (n, params.latent_dim))
    adult_mix = rng.dirichlet([1.6, 1.3, 0.5, 0.7], n)
    kids_mix = rng.dirichlet([2.0, 0.5, 1.5, 0.3], n)
    mix = np.where(kids[:, None], kids_mix, adult_mix)
    # Heavy-tailed activity: median 0.25 sessions a day (under two a week), a tail of daily users.
    activity = np.clip(np.exp(rng.normal(np.log(0.25), 1.0, n)), 0.01, 6.0)
    joins = rng.random(n) < 0.15
    created = np.where(
        joins,
        start_us + rng.random(n) * days * US_PER_DAY,
        start_us - rng.random(n) * 3 * YEAR_US,
    ).astype(np.int64)
    width = max(6, len(str(n)))
    return {
        "user_ids": np.array([f"u{i:0{width}d}" for i in range(n)]),
        "user_country": country,
        "user_maturity_max": mat,
        "user_created_us": created,
        "genre_affinity": aff.astype(np.float32),
        "user_factors": factors.astype(np.float32),
        "device_mix": mix.astype(np.float32),
        "activity": activity.astype(np.float32),
        "binge_z": rng.normal(0.0, 0.8, n).astype(np.float32),
    }


def _sample_bursts(
    cat: dict[str, np.ndarray], days: int, start_us: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Trending bursts: per country and day, a few titles spike for 2-6 days."""
    n = len(cat["title_ids"])
    rate = 0.4 * np.sqrt(max(1.0, n / 2000))
    entry = cat["episode"] <= 1
    base = np.exp(0.5 * cat["popularity"].astype(np.float64))
    out: dict[str, list[int | float]] = {k: [] for k in ("t", "c", "s", "d", "a")}
    for day in range(days):
        day_us = start_us + day * US_PER_DAY
        added = cat["added_us"]
        fresh = 1.0 + 5.0 * ((added <= day_us) & (added > day_us - 14 * US_PER_DAY))
        for c in range(N_COUNTRIES):
            k = int(rng.poisson(rate))
            ok = entry & cat["available"][:, c] & (added <= day_us)
            if k == 0 or not ok.any():
                continue
            w = np.where(ok, base * fresh, 0.0)
            titles = rng.choice(n, size=min(k, int(ok.sum())), replace=False, p=w / w.sum())
            for t in titles.tolist():
                out["t"].append(t)
                out["c"].append(c)
                out["s"].append(day)
                out["d"].append(int(rng.integers(2, 7)))
                out["a"].append(float(rng.uniform(1.5, 2.8)))
    return {
        "burst_title": np.array(out["t"], dtype=np.int32),
        "burst_country": np.array(out["c"], dtype=np.int8),
        "burst_start_day": np.array(out["s"], dtype=np.int32),
        "burst_days": np.array(out["d"], dtype=np.int32),
        "burst_amplitude": np.array(out["a"], dtype=np.float32),
    }


def _policy_neighbors(
    cat: dict[str, np.ndarray], length: int, rng: np.random.Generator
) -> np.ndarray:
    """The logging policy's "because you watched" lists: entry titles (movies, first episodes)
    closest by metadata (genre cosine, same kind, release year), a little random tie-breaking."""
    n = len(cat["title_ids"])
    entry_idx = np.flatnonzero(cat["episode"] <= 1)
    g = cat["title_genres"][entry_idx].astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    kind = cat["title_kind"][entry_idx]
    year = cat["release_year"][entry_idx].astype(np.float32)
    noise = rng.random((len(entry_idx),), dtype=np.float32) * 0.1
    k = min(length, len(entry_idx) - 1)
    table = np.full((len(entry_idx), length), -1, dtype=np.int32)
    for lo in range(0, len(entry_idx), 1024):
        hi = min(lo + 1024, len(entry_idx))
        sim = g[lo:hi] @ g.T + 0.25 * (kind[lo:hi, None] == kind[None, :])
        sim -= 0.01 * np.abs(year[lo:hi, None] - year[None, :])
        sim += noise[None, :]
        sim[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        table[lo:hi, :k] = entry_idx[np.take_along_axis(top, order, axis=1)]
    # Every title uses its series' entry list.
    entry_of = _entry_of(cat["episode"])
    pos = np.searchsorted(entry_idx, entry_of)
    assert len(pos) == n
    return table[pos]


def _entry_of(episode: np.ndarray) -> np.ndarray:
    """Index of each title's entry title (itself for movies, episode 1 for episodes)."""
    idx = np.arange(len(episode))
    return (idx - np.maximum(episode - 1, 0)).astype(np.int64)


# ----- the logging policy's global lists ---------------------------------------------------------


def _policy_lists(world: World, counts: np.ndarray, day: int) -> np.ndarray:
    """Per (country, maturity level, list kind) the policy's ranked titles for `day`, from
    panel plays of earlier days only. Returns int32 (C * M * N_LISTS, L), -1 padded."""
    length = world.params.list_length
    day_us = world.start_us + day * US_PER_DAY
    entry = world.episode <= 1
    entry_of = _entry_of(world.episode)
    n = world.n_titles

    # Plays aggregate on the entry title: a series is shown by its first episode.
    def by_entry(c: np.ndarray) -> np.ndarray:
        out = np.zeros((N_COUNTRIES, n), dtype=np.float64)
        for ci in range(N_COUNTRIES):
            out[ci] = np.bincount(entry_of, weights=c[ci], minlength=n)
        return out

    last7 = by_entry(counts[max(0, day - 7) : day].sum(axis=0))
    last28 = by_entry(counts[max(0, day - 28) : day].sum(axis=0))
    yday = by_entry(counts[day - 1]) if day >= 1 else np.zeros_like(last7)
    before = by_entry(counts[max(0, day - 8) : max(0, day - 1)].sum(axis=0)) / 7.0
    trend_score = np.where(yday >= 2, (yday - before) / np.sqrt(before + 1.0), -np.inf)
    newest = -world.added_us.astype(np.float64)
    table = np.full((N_COUNTRIES * N_MAT * N_LISTS, length), -1, dtype=np.int32)
    mats = np.array(MATURITY_LEVELS)
    for ci in range(N_COUNTRIES):
        ok = entry & world.available[:, ci] & (world.added_us <= day_us)
        scores = [last7[ci], trend_score[ci], np.zeros(n)] + [
            np.where(world.title_genres[:, g], last28[ci], -np.inf) for g in range(G)
        ]
        for lk, score in enumerate(scores):
            keep = ok & np.isfinite(score)
            idx = np.flatnonzero(keep)
            # Highest score first, newer titles first on ties, then index.
            order = idx[np.lexsort((idx, newest[idx], -score[idx]))]
            if lk == L_TREND:
                order = order[score[order] > 0]
            for mi, mat in enumerate(mats):
                pick = order[world.maturity[order] <= mat][:length]
                table[(ci * N_MAT + mi) * N_LISTS + lk, : len(pick)] = pick
    return table


# ----- per-user state during the simulation ------------------------------------------------------


class _Index:
    """Sorted keys (row of users, title) of the slots of some users, for vectorised lookups."""

    def __init__(self, slots: _Slots, users: np.ndarray) -> None:
        self.n_titles = slots.n_titles
        self.n = len(users)
        self.keys = np.zeros(0, dtype=np.int64)
        self.flat = np.zeros(0, dtype=np.int64)
        if len(users) == 0:
            return
        k_eff = max(int(slots.count[users].max()), 1)
        sub = slots.title[users, :k_eff]
        r, c = np.nonzero(sub >= 0)
        keys = r.astype(np.int64) * self.n_titles + sub[r, c]
        order = np.argsort(keys)
        self.keys = keys[order]
        self.flat = (users[r].astype(np.int64) * slots.k + c)[order]

    def find(self, titles: np.ndarray) -> np.ndarray:
        """Flat slot index of each (users[i], titles[i, ...]), -1 when never played."""
        titles = np.asarray(titles)
        out = np.full(titles.shape, -1, dtype=np.int64)
        if len(self.keys) == 0:
            return out
        q = np.arange(self.n, dtype=np.int64).reshape((-1,) + (1,) * (titles.ndim - 1))
        q = q * self.n_titles + titles
        pos = np.clip(np.searchsorted(self.keys, q), 0, len(self.keys) - 1)
        hit = (self.keys[pos] == q) & (titles >= 0)
        out[hit] = self.flat[pos[hit]]
        return out


class _Slots:
    """Each user's titles touched so far (a row of K slots, grown on demand): the simulator's
    exact copy of what `PlayLog.state` derives from the plays."""

    def __init__(self, n_users: int, n_titles: int, k: int = 16) -> None:
        self.n_titles = n_titles
        self.count = np.zeros(n_users, dtype=np.int64)
        self.title = np.full((n_users, k), -1, dtype=np.int32)
        self.last_us = np.zeros((n_users, k), dtype=np.int64)
        self.progress = np.zeros((n_users, k), dtype=np.float32)
        self.abandoned = np.zeros((n_users, k), dtype=bool)
        self.finished = np.zeros((n_users, k), dtype=bool)

    @property
    def k(self) -> int:
        return self.title.shape[1]

    def _grow(self) -> None:
        pad = ((0, 0), (0, self.k))
        self.title = np.pad(self.title, pad, constant_values=-1)
        self.last_us = np.pad(self.last_us, pad)
        self.progress = np.pad(self.progress, pad)
        self.abandoned = np.pad(self.abandoned, pad)
        self.finished = np.pad(self.finished, pad)

    def index(self, users: np.ndarray) -> _Index:
        """A lookup of (users[i], title) -> slot, valid until the next `record`."""
        return _Index(self, users)

    def find(self, users: np.ndarray, titles: np.ndarray) -> np.ndarray:
        return self.index(users).find(titles)

    def finished_mask(self, ix: _Index, titles: np.ndarray) -> np.ndarray:
        """Whether each (users[i], titles[i, j]) was ever finished."""
        s = ix.find(titles)
        return (s >= 0) & self.finished.reshape(-1)[np.maximum(s, 0)]

    def state(self, ix: _Index, titles: np.ndarray, prev: np.ndarray | None) -> State:
        """State of (users[i], titles[i, j]); `prev` = previous episodes (None: not needed)."""
        s = ix.find(titles)
        ps = ix.find(prev) if prev is not None else np.full(titles.shape, -1, dtype=np.int64)
        hit, phit = s >= 0, ps >= 0
        s, ps = np.maximum(s, 0), np.maximum(ps, 0)
        last = self.last_us.reshape(-1)
        fin = self.finished.reshape(-1)
        return State(
            started=hit,
            last_progress=np.where(hit, self.progress.reshape(-1)[s], np.float32(0.0)),
            last_abandoned=hit & self.abandoned.reshape(-1)[s],
            last_us=np.where(hit, last[s], 0),
            finished=hit & fin[s],
            prev_finished=phit & fin[ps],
            prev_last_us=np.where(phit, last[ps], 0),
        )

    def record(
        self,
        users: np.ndarray,
        titles: np.ndarray,
        ts: np.ndarray,
        progress: np.ndarray,
        abandoned: np.ndarray,
    ) -> None:
        """Apply plays (one per user at most) in time order."""
        if len(users) == 0:
            return
        k_eff = max(int(self.count[users].max()), 1)
        match = self.title[users, :k_eff] == titles[:, None]
        has = match.any(axis=1)
        col = np.where(has, match.argmax(axis=1), self.count[users])
        while int(col.max()) >= self.k:
            self._grow()
        self.title[users, col] = titles
        self.last_us[users, col] = ts
        self.progress[users, col] = progress
        self.abandoned[users, col] = abandoned
        self.finished[users, col] |= progress >= FINISHED_PROGRESS
        self.count[users] += ~has


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


# ----- one chunk of users over the whole period --------------------------------------------------


@dataclass
class _Out:
    """Columns collected while simulating (lists of arrays, concatenated at the end)."""

    p_user: list[np.ndarray]
    p_title: list[np.ndarray]
    p_ts: list[np.ndarray]
    p_device: list[np.ndarray]
    p_seconds: list[np.ndarray]
    p_progress: list[np.ndarray]
    p_abandoned: list[np.ndarray]
    p_source: list[np.ndarray]  # 0 page, 1 search, 2 binge (post-play)
    i_user: list[np.ndarray]
    i_ts: list[np.ndarray]
    i_device: list[np.ndarray]
    i_day: list[np.ndarray]
    i_round: list[np.ndarray]
    i_row: list[np.ndarray]
    i_kind: list[np.ndarray]
    i_code: list[np.ndarray]
    i_pos: list[np.ndarray]
    i_title: list[np.ndarray]
    i_played: list[np.ndarray]

    @classmethod
    def empty(cls) -> _Out:
        return cls(**{f: [] for f in cls.__dataclass_fields__})

    def cat(self, name: str, dtype: type) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


class _ChunkRun:
    """Simulates users [u0, u1) day by day (rounds = each user's k-th session of the day)."""

    def __init__(
        self,
        world: World,
        u0: int,
        u1: int,
        rng: np.random.Generator,
        counts: np.ndarray | None,
    ) -> None:
        self.w, self.u0, self.n = world, u0, u1 - u0
        self.p = world.params
        self.rng = rng
        self.counts = counts  # panel: (days, C, T) plays per day, country, title
        self.slots = _Slots(self.n, world.n_titles)
        self.gcount = np.zeros((self.n, G), dtype=np.float32)
        self.last_fin = np.full(self.n, -1, dtype=np.int64)
        self.busy = np.zeros(self.n, dtype=np.int64)
        self.out = _Out.empty()
        ug = np.arange(u0, u1)
        self.country = world.user_country[ug].astype(np.int64)
        self.mat_level = np.searchsorted(np.array(MATURITY_LEVELS), world.user_maturity_max[ug])
        self.beta = np.asarray(self.p.col_continue)
        self.code_pvr = len(ROW_KINDS)
        self.code_byw = len(ROW_KINDS) + G

    # ----- a day -------------------------------------------------------------------------------

    def run_day(self, day: int, lists: np.ndarray) -> None:
        w, rng = self.w, self.rng
        day_us = w.start_us + day * US_PER_DAY
        weekend = ((day_us // US_PER_DAY + 3) % 7) >= 5
        lam = w.activity[self.u0 : self.u0 + self.n] * (self.p.weekend_activity if weekend else 1.0)
        per_user = rng.poisson(lam)
        su = np.repeat(np.arange(self.n), per_user)
        cdf = np.cumsum(w.hour_traffic[int(weekend)])
        hour = np.minimum(np.searchsorted(cdf, rng.random(len(su)) * cdf[-1]), 23)
        ts = day_us + hour * HOUR_US + (rng.random(len(su)) * HOUR_US).astype(np.int64)
        order = np.lexsort((ts, su))
        su, ts = su[order], ts[order]
        starts = np.cumsum(per_user) - per_user
        rank = np.arange(len(su)) - starts[su]
        for k in range(int(rank.max()) + 1 if len(rank) else 0):
            sel = rank == k
            users, t = su[sel], ts[sel]
            t = np.maximum(t, self.busy[users] + 120 * SECOND_US)
            ok = (t < day_us + US_PER_DAY) & (t >= w.user_created_us[users + self.u0])
            if ok.any():
                self._round(users[ok], t[ok], day, k, lists)

    def _round(self, users: np.ndarray, t: np.ndarray, day: int, k: int, lists: np.ndarray) -> None:
        w, rng = self.w, self.rng
        ug = users + self.u0
        hour = (t // HOUR_US) % 24
        device = _pick(rng, w.device_mix[ug] * w.device_hour[hour]).astype(np.int64)
        search = rng.random(len(users)) < self.p.search_share
        starts_u: list[np.ndarray] = []
        starts_t: list[np.ndarray] = []
        starts_ts: list[np.ndarray] = []
        starts_d: list[np.ndarray] = []
        starts_src: list[np.ndarray] = []
        pg = np.flatnonzero(~search)
        if len(pg):
            su, stitle, sts = self._pages(users[pg], t[pg], device[pg], day, k, lists)
            starts_u.append(su)
            starts_t.append(stitle)
            starts_ts.append(sts)
            starts_d.append(self._dev_of(users[pg], device[pg], su))
            starts_src.append(np.zeros(len(su), dtype=np.int8))
        sr = np.flatnonzero(search)
        for lo in range(0, len(sr), SEARCH_BATCH):
            part = sr[lo : lo + SEARCH_BATCH]
            su, stitle, sts = self._search(users[part], t[part], device[part])
            starts_u.append(su)
            starts_t.append(stitle)
            starts_ts.append(sts)
            starts_d.append(self._dev_of(users[part], device[part], su))
            starts_src.append(np.ones(len(su), dtype=np.int8))
        if not starts_u:
            return
        u_all = np.concatenate(starts_u)
        order = np.argsort(u_all, kind="stable")
        self._watch(
            u_all[order],
            np.concatenate(starts_t)[order],
            np.concatenate(starts_ts)[order],
            np.concatenate(starts_d)[order],
            np.concatenate(starts_src)[order],
        )

    @staticmethod
    def _dev_of(users: np.ndarray, device: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """Device of each picked user (users are unique within a round)."""
        order = np.argsort(users)
        return device[order][np.searchsorted(users[order], picked)]

    # ----- the logged homepage -----------------------------------------------------------------

    def _pages(
        self,
        users: np.ndarray,
        t: np.ndarray,
        device: np.ndarray,
        day: int,
        k: int,
        lists: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, p, rng = self.w, self.p, self.rng
        n = len(users)
        ug = users + self.u0
        country = self.country[users]
        length = p.list_length
        ix = self.slots.index(users)
        base = (country * N_MAT + self.mat_level[users]) * N_LISTS
        cand = np.full((n, len(DEFAULT_ROWS), length), -1, dtype=np.int64)
        cand[:, 1] = lists[base + L_TOP]
        cand[:, 2] = lists[base + L_TREND]
        g1, g2 = self._user_genres(users)
        cand[:, 3] = lists[base + 3 + g1]
        cand[:, 6] = lists[base + 3 + g2]
        cand[:, 5] = lists[base + L_NEW]
        lf = self.last_fin[users]
        cand[:, 4] = np.where(lf[:, None] >= 0, w.policy_neighbors[np.maximum(lf, 0)], -1)
        cand[:, 0] = self._continue_watching(users, ix, t, country, length)
        cand[:, 7] = self._watch_again(users, length)
        # Availability now, and no finished titles outside continue watching / watch again.
        ok = w.available_mask(ug, cand.reshape(n, -1), t, country).reshape(cand.shape)
        fin = self.slots.finished_mask(ix, cand.reshape(n, -1)).reshape(cand.shape)
        fin[:, [0, 7]] = False
        cand = np.where(ok & ~fin, cand, -1)
        row_code = np.tile(np.array(DEFAULT_ROWS, dtype=np.int64), (n, 1))
        row_code[:, 3] = self.code_pvr + g1
        row_code[:, 6] = self.code_pvr + g2
        row_code[:, 4] = self.code_byw + np.maximum(lf, 0)
        # Row order: default, or uniformly random with probability eps_row_order.
        shuffle = rng.random(n) < p.eps_row_order
        order = np.tile(np.arange(len(DEFAULT_ROWS)), (n, 1))
        order[shuffle] = np.argsort(rng.random((int(shuffle.sum()), len(DEFAULT_ROWS))), axis=1)
        n_rows, n_cols = VIS_ROWS[device], VIS_COLS[device]
        view = np.full((n, MAX_R, MAX_C), -1, dtype=np.int64)
        view_code = np.full((n, MAX_R), -1, dtype=np.int64)
        view_kind = np.full((n, MAX_R), -1, dtype=np.int64)
        filled = np.zeros(n, dtype=np.int64)
        shown = view.reshape(n, -1)  # a view of `view`: titles already on screen
        ar = np.arange(n)
        for j in range(len(DEFAULT_ROWS)):
            src = order[:, j]
            row = cand[ar, src]
            dup = (row[:, :, None] == shown[:, None, :]).any(axis=2)
            row = np.where(dup, -1, row)
            row = np.take_along_axis(row, np.argsort(row < 0, axis=1, kind="stable"), axis=1)
            row = row[:, :MAX_C]
            row = np.where(np.arange(MAX_C)[None, :] < n_cols[:, None], row, -1)
            place = (row[:, 0] >= 0) & (filled < n_rows)
            idx = np.flatnonzero(place)
            view[idx, filled[idx]] = row[idx]
            view_code[idx, filled[idx]] = row_code[idx, src[idx]]
            view_kind[idx, filled[idx]] = np.array(DEFAULT_ROWS)[src[idx]]
            filled += place
        # Within-row order: uniformly random with probability eps_title_order per row.
        keys = np.where(view >= 0, np.arange(MAX_C)[None, None, :], MAX_C + 1).astype(np.float64)
        flip = (rng.random((n, MAX_R)) < p.eps_title_order) & (view_code >= 0)
        rand = rng.random((n, MAX_R, MAX_C))
        keys = np.where(flip[:, :, None] & (view >= 0), rand, keys)
        view = np.take_along_axis(view, np.argsort(keys, axis=2, kind="stable"), axis=2)

        a = self._attraction(users, ix, view.reshape(n, -1), device, t, country)
        a = a.reshape(view.shape)
        r, c, looked = browse(a, self.beta[device], p.row_stop, rng)
        # Log exactly what the viewport showed.
        ii, rr, cc = np.nonzero(view >= 0)
        o = self.out
        o.i_user.append(ug[ii].astype(np.int32))
        o.i_ts.append(t[ii])
        o.i_device.append(device[ii].astype(np.int8))
        o.i_day.append(np.full(len(ii), day, dtype=np.int16))
        o.i_round.append(np.full(len(ii), k, dtype=np.int16))
        o.i_row.append(rr.astype(np.int16))
        o.i_kind.append(view_kind[ii, rr].astype(np.int8))
        o.i_code.append(view_code[ii, rr])
        o.i_pos.append(cc.astype(np.int16))
        o.i_title.append(view[ii, rr, cc].astype(np.int32))
        o.i_played.append((r[ii] == rr) & (c[ii] == cc))
        hit = np.flatnonzero(r >= 0)
        titles = view[hit, r[hit], c[hit]]
        play_ts = t[hit] + (5 + 3 * looked[hit]) * SECOND_US
        return users[hit], titles, play_ts

    def _user_genres(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's two personalised genre rows: most played genres, else random ones."""
        gc = self.gcount[users]
        noise = self.rng.random(gc.shape) * 1e-3
        top = np.argsort(-(gc + noise), axis=1)[:, :2]
        cold = gc.sum(axis=1) == 0
        rand = np.argsort(self.rng.random((len(users), G)), axis=1)[:, :2]
        top = np.where(cold[:, None], rand, top)
        return top[:, 0], top[:, 1]

    def _continue_watching(
        self, users: np.ndarray, ix: _Index, t: np.ndarray, country: np.ndarray, length: int
    ) -> np.ndarray:
        """In-progress titles and next episodes of finished ones, most recent first."""
        w, s = self.w, self.slots
        k_eff = max(int(s.count[users].max()), 1)
        title = s.title[users, :k_eff].astype(np.int64)
        prog = s.progress[users, :k_eff]
        last = s.last_us[users, :k_eff]
        inprog = (title >= 0) & (prog < FINISHED_PROGRESS)
        nxt = np.where((title >= 0) & ~inprog, w.next_episode[np.maximum(title, 0)], -1)
        nxt = np.where(ix.find(nxt) >= 0, -1, nxt)  # already started
        cand = np.concatenate([np.where(inprog, title, -1), nxt], axis=1)
        score = np.concatenate([last, last], axis=1).astype(np.float64)
        ok = w.available_mask(users + self.u0, cand, t, country)
        cand = np.where(ok, cand, -1)
        order = np.argsort(np.where(cand >= 0, -score, np.inf), axis=1, kind="stable")
        out = np.take_along_axis(cand, order, axis=1)[:, :length]
        return np.pad(out, ((0, 0), (0, length - out.shape[1])), constant_values=-1)

    def _watch_again(self, users: np.ndarray, length: int) -> np.ndarray:
        s = self.slots
        k_eff = max(int(s.count[users].max()), 1)
        title = s.title[users, :k_eff].astype(np.int64)
        done = (title >= 0) & (s.progress[users, :k_eff] >= FINISHED_PROGRESS)
        cand = np.where(done, title, -1)
        score = np.where(done, -s.last_us[users, :k_eff].astype(np.float64), np.inf)
        out = np.take_along_axis(cand, np.argsort(score, axis=1, kind="stable"), axis=1)[:, :length]
        return np.pad(out, ((0, 0), (0, length - out.shape[1])), constant_values=-1)

    def _attraction(
        self,
        users: np.ndarray,
        ix: _Index,
        titles: np.ndarray,
        device: np.ndarray,
        t: np.ndarray,
        country: np.ndarray,
    ) -> np.ndarray:
        """True play probability of (n, m) titles: the same equations as GroundTruth."""
        w = self.w
        ug = users + self.u0
        logit = w.static_logits(ug, titles, device, t, country)
        prev = np.where(titles >= 0, w.prev_episode[np.maximum(titles, 0)], -1)
        st = self.slots.state(ix, titles, prev)
        logit += w.state_logits(titles, st, t[:, None])
        ok = w.available_mask(ug, titles, t, country)
        return np.where(ok, _sigmoid(logit.astype(np.float64)), 0.0)

    # ----- search plays ------------------------------------------------------------------------

    def _search(
        self, users: np.ndarray, t: np.ndarray, device: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A title found by search: drawn in proportion to its true play probability among the
        whole catalog, or, past SEARCH_POOL titles, among a uniform random pool of that many
        (one pool per batch of searches) so a search costs the same at any catalog size."""
        w, s = self.w, self.slots
        n, n_t = len(users), w.n_titles
        ug = users + self.u0
        country = self.country[users]
        pool = np.arange(n_t)
        if n_t > SEARCH_POOL:
            pool = np.sort(self.rng.choice(n_t, SEARCH_POOL, replace=False))
        logit = w.static_logits(ug, pool, device, t, country)
        # Default state of an untouched title: only the skip penalty for later episodes.
        skip = np.where(w.episode > 1, np.float32(self.p.skip_episode), np.float32(0.0))
        logit += skip[pool][None, :]
        k_eff = max(int(s.count[users].max()), 1)
        touched = s.title[users, :k_eff].astype(np.int64)
        nxt = np.where(touched >= 0, w.next_episode[np.maximum(touched, 0)], -1)
        fix = np.concatenate([touched, nxt], axis=1)
        col = np.clip(np.searchsorted(pool, fix), 0, len(pool) - 1)
        fix = np.where((fix >= 0) & (pool[col] == fix), fix, -1)
        if (fix >= 0).any():
            prev = np.where(fix >= 0, w.prev_episode[np.maximum(fix, 0)], -1)
            exact = w.state_logits(fix, s.state(s.index(users), fix, prev), t[:, None])
            rr, cc = np.nonzero(fix >= 0)
            # Duplicate (row, title) pairs carry the same value, so plain assignment is exact.
            logit[rr, col[rr, cc]] += exact[rr, cc] - skip[fix[rr, cc]]
        ok = w.available_mask(ug, pool, t, country)
        a = np.where(ok, 1.0 / (1.0 + np.exp(-logit)), np.float32(0.0))
        cdf = np.cumsum(a, axis=1, dtype=np.float64)
        total = cdf[:, -1]
        pick = np.minimum((cdf < (self.rng.random(n) * total)[:, None]).sum(axis=1), len(pool) - 1)
        has = total > 0
        play_ts = t + ((20 + 40 * self.rng.random(n)) * SECOND_US).astype(np.int64)
        return users[has], pool[pick[has]], play_ts[has]

    # ----- watching ----------------------------------------------------------------------------

    def _watch(
        self,
        users: np.ndarray,
        titles: np.ndarray,
        ts: np.ndarray,
        device: np.ndarray,
        source: np.ndarray,
    ) -> None:
        """Watch the started titles; finished episodes may roll into the next (binge)."""
        w, p, rng = self.w, self.p, self.rng
        hour = (ts // HOUR_US) % 24
        weekend = ((ts // US_PER_DAY + 3) % 7) >= 5
        median = np.asarray(p.budget_median_min)[device]
        median = median * np.where(hour < 5, p.budget_late_night, 1.0)
        median = median * np.where(weekend, p.budget_weekend, 1.0)
        budget = median * np.exp(rng.normal(0.0, p.budget_sigma, len(users)))
        binge_p = _sigmoid(_logit(np.asarray(p.binge_base)[device]) + w.binge_z[users + self.u0])
        for step in range(p.binge_max_chain + 1):
            keep = ts < w.end_us
            users, titles, ts, device = users[keep], titles[keep], ts[keep], device[keep]
            source, budget, binge_p = source[keep], budget[keep], binge_p[keep]
            if len(users) == 0:
                return
            ug = users + self.u0
            st = self.slots.state(self.slots.index(users), titles[:, None], None)
            in_prog = st.started[:, 0] & (st.last_progress[:, 0] < FINISHED_PROGRESS)
            start = np.where(in_prog, st.last_progress[:, 0], 0.0).astype(np.float64)
            dur = w.duration_min[titles].astype(np.float64)
            match = w.taste(ug, titles)
            abandon = rng.random(len(users)) < _sigmoid(p.abandon_bias - p.abandon_match * match)
            frac = rng.beta(1.4, 2.6, len(users))
            end_fin = np.maximum(rng.uniform(0.92, 1.0, len(users)), start + 0.01)
            fits = budget >= (1.0 - start) * dur
            end = np.where(
                abandon, start + (1.0 - start) * frac, np.where(fits, end_fin, start + budget / dur)
            )
            end = np.clip(end, 0.0, 1.0)
            abandoned = abandon & (end < FINISHED_PROGRESS)
            seconds = (end - start) * dur * 60.0
            budget = budget - (end - start) * dur
            o = self.out
            o.p_user.append(ug.astype(np.int32))
            o.p_title.append(titles.astype(np.int32))
            o.p_ts.append(ts)
            o.p_device.append(device.astype(np.int8))
            o.p_seconds.append(seconds.astype(np.float32))
            o.p_progress.append(end.astype(np.float32))
            o.p_abandoned.append(abandoned)
            o.p_source.append(source.astype(np.int8))
            self.slots.record(users, titles, ts, end.astype(np.float32), abandoned)
            self.gcount[users] += w.genre_weight_matrix[titles]  # users are unique here
            done = end >= FINISHED_PROGRESS
            self.last_fin[users[done]] = titles[done]
            end_ts = ts + (seconds * SECOND_US).astype(np.int64)
            self.busy[users] = np.maximum(self.busy[users], end_ts)
            if self.counts is not None:
                play_day = (ts - w.start_us) // US_PER_DAY
                inside = play_day < w.days
                np.add.at(
                    self.counts,
                    (play_day[inside], self.country[users[inside]], titles[inside]),
                    1.0,
                )
            # Binge: a finished episode rolls into the next one while budget remains.
            nxt = np.where(done, w.next_episode[titles], -1)
            nts = end_ts + 15 * SECOND_US
            go = (nxt >= 0) & (budget >= 10.0)
            if step == p.binge_max_chain or not go.any():
                return
            ok = w.available_mask(ug, nxt[:, None], nts, self.country[users])[:, 0]
            seen = self.slots.finished_mask(self.slots.index(users), nxt[:, None])[:, 0]
            go &= ok & ~seen & (rng.random(len(users)) < binge_p)
            users, titles, ts, device = users[go], nxt[go], nts[go], device[go]
            budget, binge_p = budget[go], binge_p[go]
            source = np.full(len(users), 2, dtype=np.int8)

    # ----- output ------------------------------------------------------------------------------

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, np.ndarray]]:
        """(plays, impressions) in the dataset schema, and the raw play arrays for the log."""
        w, o = self.w, self.out
        user = o.cat("p_user", np.int32)
        ts = o.cat("p_ts", np.int64)
        title = o.cat("p_title", np.int32)
        order = np.lexsort((title, ts, user))
        raw = {
            "user": user[order],
            "title": title[order],
            "ts": ts[order],
            "progress": o.cat("p_progress", np.float32)[order],
            "abandoned": o.cat("p_abandoned", bool)[order],
            "source": o.cat("p_source", np.int8)[order],
        }
        device = o.cat("p_device", np.int8)[order]
        plays = pl.DataFrame(
            {
                Col.USER_ID: _gather(w.user_ids, raw["user"]),
                Col.TITLE_ID: _gather(w.title_ids, raw["title"]),
                Col.TS: _timestamps(raw["ts"]),
                Col.DEVICE: _gather(np.array(DEVICES), device),
                Col.SECONDS_WATCHED: o.cat("p_seconds", np.float32)[order],
                Col.PROGRESS: raw["progress"],
            }
        )
        iu = o.cat("i_user", np.int32)
        its = o.cat("i_ts", np.int64)
        irow = o.cat("i_row", np.int16)
        ipos = o.cat("i_pos", np.int16)
        order = np.lexsort((ipos, irow, its, iu))
        iu, its, irow, ipos = iu[order], its[order], irow[order], ipos[order]
        row_ids = np.array(
            list(ROW_KINDS)
            + [f"pvr_genre:{g}" for g in GENRES]
            + [f"because_you_watched:{t}" for t in w.title_ids.tolist()]
        )
        users_s = _gather(w.user_ids, iu)
        page_id = pl.DataFrame(
            {
                "u": users_s,
                "d": o.cat("i_day", np.int16)[order],
                "k": o.cat("i_round", np.int16)[order],
            }
        ).select(
            pl.format("{}-{}-{}", "u", pl.col("d").cast(pl.String).str.zfill(3), "k").alias("p")
        )["p"]
        impressions = pl.DataFrame(
            {
                Col.PAGE_ID: page_id,
                Col.USER_ID: users_s,
                Col.TS: _timestamps(its),
                Col.DEVICE: _gather(np.array(DEVICES), o.cat("i_device", np.int8)[order]),
                Col.ROW_INDEX: irow,
                Col.ROW_KIND: _gather(np.array(ROW_KINDS), o.cat("i_kind", np.int8)[order]),
                Col.ROW_ID: _gather(row_ids, o.cat("i_code", np.int64)[order]),
                Col.POSITION: ipos,
                Col.TITLE_ID: _gather(w.title_ids, o.cat("i_title", np.int32)[order]),
                Col.PLAYED: o.cat("i_played", bool)[order],
            }
        )
        return _conform(PLAYS, plays), _conform(IMPRESSIONS, impressions), raw


def _gather(values: np.ndarray, idx: np.ndarray) -> pl.Series:
    """Strings by index without Python objects per row."""
    return pl.Series(values.astype(str)).gather(pl.Series(idx.astype(np.int64)))


def _timestamps(us: np.ndarray) -> pl.Series:
    return pl.Series(us.astype(np.int64)).cast(pl.Datetime("us", "UTC"))


def _conform(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Cast to the schema dtypes, columns in schema order."""
    return frame.select(
        [pl.col(c.name).cast(c.dtype) for c in SCHEMA[table] if c.name in frame.columns]
    )


# ----- tables and the whole run ------------------------------------------------------------------


def world_tables(world: World) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The titles and users tables of a world, in the dataset schema."""
    genre_lists = [[GENRES[g] for g in np.flatnonzero(row)] for row in world.title_genres.tolist()]
    country_lists = [[COUNTRIES[c] for c in np.flatnonzero(row)] for row in world.available]
    series_ids = np.array([f"s{s:05d}" if s >= 0 else "" for s in world.series.tolist()])
    titles = pl.DataFrame(
        {
            Col.TITLE_ID: world.title_ids.astype(str),
            Col.NAME: world.title_names.astype(str),
            Col.KIND: _gather(np.array(TITLE_KINDS), world.title_kind),
            Col.GENRES: genre_lists,
            Col.RELEASE_YEAR: world.release_year,
            Col.DURATION_MIN: world.duration_min,
            Col.MATURITY: world.maturity,
            Col.COUNTRIES: country_lists,
            Col.ADDED_AT: _timestamps(world.added_us),
            Col.SERIES_ID: pl.Series(series_ids).replace("", None),
            Col.EPISODE: pl.Series(world.episode).replace(-1, None),
        },
        schema_overrides={Col.GENRES: pl.List(pl.String), Col.COUNTRIES: pl.List(pl.String)},
    )
    users = pl.DataFrame(
        {
            Col.USER_ID: world.user_ids.astype(str),
            Col.COUNTRY: _gather(np.array(COUNTRIES), world.user_country),
            Col.MATURITY_MAX: world.user_maturity_max,
            Col.CREATED_AT: _timestamps(world.user_created_us),
        }
    )
    return _conform("titles", titles), _conform("users", users)


@dataclass(frozen=True)
class SimulationSummary:
    """What `simulate` wrote, with its wall time."""

    out_dir: Path
    users: int
    titles: int
    days: int
    seed: int
    plays: int
    impressions: int
    pages: int
    page_plays: int
    search_plays: int
    binge_plays: int
    chunks: int
    seconds: float

    def describe(self) -> str:
        return (
            f"simulated {self.users:,} users x {self.titles:,} titles x {self.days} days "
            f"(seed {self.seed}) in {self.seconds:.1f} s: {self.plays:,} plays "
            f"({self.page_plays:,} from the page, {self.search_plays:,} search, "
            f"{self.binge_plays:,} next-episode), {self.pages:,} pages, "
            f"{self.impressions:,} impressions -> {self.out_dir}"
        )


def simulate(
    out_dir: Path,
    *,
    users: int = 5000,
    titles: int = 2000,
    days: int = 60,
    seed: int = 0,
    start: datetime = START,
    params: WorldParams | None = None,
    progress: bool | None = None,
) -> SimulationSummary:
    """Generate a world, simulate it, write the dataset and `ground_truth/` into `out_dir`.

    `progress=None` shows the bar on a terminal only.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    world_rng, sim_rng = rng.spawn(2)
    world = sample_world(users, titles, days, world_rng, seed=seed, start=start, params=params)
    chunk = max(1, world.params.panel_users)
    bounds = [(lo, min(lo + chunk, users)) for lo in range(0, users, chunk)]
    chunk_rngs = sim_rng.spawn(len(bounds))
    titles_df, users_df = world_tables(world)
    clock = datetime.fromtimestamp(world.end_us / 1e6, UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = out_dir / ".parts"
    multi = len(bounds) > 1
    if multi:
        parts.mkdir(exist_ok=True)
    daily_lists: list[np.ndarray] = []
    logs: dict[str, list[np.ndarray]] = {}
    counts_total = {"plays": 0, "impressions": 0, "pages": 0, 0: 0, 1: 0, 2: 0}
    frames: tuple[pl.DataFrame, pl.DataFrame] | None = None
    bar = tqdm(
        total=len(bounds) * days,
        desc="simulate",
        unit="day",
        file=sys.stderr,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    for ci, (lo, hi) in enumerate(bounds):
        panel = ci == 0
        counts = np.zeros((days, N_COUNTRIES, world.n_titles), dtype=np.float32) if panel else None
        run = _ChunkRun(world, lo, hi, chunk_rngs[ci], counts)
        for day in range(days):
            if panel:
                assert counts is not None
                daily_lists.append(_policy_lists(world, counts, day))
            run.run_day(day, daily_lists[day])
            bar.update(1)
        plays, impressions, raw = run.frames()
        for key, arr in raw.items():
            logs.setdefault(key, []).append(arr)
        counts_total["plays"] += plays.height
        counts_total["impressions"] += impressions.height
        counts_total["pages"] += impressions[Col.PAGE_ID].n_unique()
        for src in (0, 1, 2):
            counts_total[src] += int((raw["source"] == src).sum())
        if multi:
            plays.write_parquet(parts / f"plays-{ci:05d}.parquet", statistics=False)
            impressions.write_parquet(parts / f"impressions-{ci:05d}.parquet", statistics=False)
        else:
            frames = (plays, impressions)
        del run, plays, impressions
    bar.close()

    if multi:
        empty_plays = pl.DataFrame(schema={c.name: c.dtype for c in SCHEMA[PLAYS] if c.required})
        save_dataset(Dataset(titles_df, users_df, empty_plays, None, clock, source=SOURCE), out_dir)
        for table in (PLAYS, IMPRESSIONS):
            files = sorted(parts.glob(f"{table}-*.parquet"))
            pl.scan_parquet(files).sink_parquet(out_dir / f"{table}.parquet", statistics=False)
        shutil.rmtree(parts)
    else:
        assert frames is not None
        save_dataset(
            Dataset(titles_df, users_df, frames[0], frames[1], clock, source=SOURCE), out_dir
        )
    log = PlayLog.build(
        users,
        np.concatenate(logs["user"]),
        np.concatenate(logs["title"]),
        np.concatenate(logs["ts"]),
        np.concatenate(logs["progress"]),
        np.concatenate(logs["abandoned"]),
    )
    world.save(out_dir / GROUND_TRUTH_DIR, log)
    return SimulationSummary(
        out_dir=out_dir,
        users=users,
        titles=titles,
        days=days,
        seed=seed,
        plays=counts_total["plays"],
        impressions=counts_total["impressions"],
        pages=counts_total["pages"],
        page_plays=counts_total[0],
        search_plays=counts_total[1],
        binge_plays=counts_total[2],
        chunks=len(bounds),
        seconds=time.perf_counter() - t0,
    )


def chunked_params(panel_users: int) -> WorldParams:
    """Default parameters with another chunk size (tests use it to exercise chunking)."""
    return replace(WorldParams(), panel_users=panel_users)


# ----- command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `rowrank simulate`."""
    p.add_argument("out_dir", help="directory to write (dataset + ground_truth/)")
    p.add_argument("--users", type=_positive, default=5000, help="members (default 5000)")
    p.add_argument("--titles", type=_positive, default=2000, help="catalog titles (default 2000)")
    p.add_argument("--days", type=_positive, default=60, help="simulated days (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def cli(args: argparse.Namespace) -> int:
    """Run `rowrank simulate`; the progress bar goes to stderr on a terminal."""
    if args.titles < 10:
        raise ConfigError(f"--titles {args.titles}: a world needs at least 10 titles")
    summary = simulate(
        Path(args.out_dir), users=args.users, titles=args.titles, days=args.days, seed=args.seed
    )
    print(summary.describe())
    return 0


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return n
