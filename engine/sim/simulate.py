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
#
# A chunk of members is simulated day by day (`_ChunkRun`). A day's sessions (`_DaySessions`) run
# in rounds, round k being every member's k-th session of the day, so a round holds each member
# at most once and is simulated as whole arrays. A round's session opens either the logged
# homepage (`_build_page`, then `_browse_page`) or search (`_search`); the titles started then
# play out (`_watch`: `_play_outcome`, then `_next_episodes` for binge), which updates what the
# simulator remembers of each member (`_ChunkState`) and the log (`_Log`), which `_logged_tables`
# finally turns into the dataset's plays and impressions.
#
# Every unit draws from the chunk's one generator, in a fixed order: page (genre rows, row order,
# within-row order, browse), then search batches, then watching. That order is the seed's
# contract (the same seed gives byte-identical files), so a change in it is a change of output,
# not a refactor; units below say which draws they make.


@dataclass
class _ChunkState:
    """What the simulator remembers about members [u0, u0 + n) between sessions. Member indices
    in this section are chunk-local (add `u0` for the world's index)."""

    u0: int
    n: int
    slots: _Slots  # titles touched: progress, finished, last play (what PlayLog.state derives)
    gcount: np.ndarray  # (n, G) genre-weighted plays: the policy's personalised genre rows
    last_fin: np.ndarray  # last finished title, the "because you watched" seed (-1 none)
    busy: np.ndarray  # when the member's last play ends: a new session waits for it
    country: np.ndarray
    mat_level: np.ndarray  # index of the member's maximum maturity in MATURITY_LEVELS
    counts: np.ndarray | None  # panel chunk only: (days, C, T) plays feeding _policy_lists

    @classmethod
    def start(cls, world: World, u0: int, u1: int, counts: np.ndarray | None) -> _ChunkState:
        """Members before their first simulated day: nothing played yet."""
        n = u1 - u0
        ug = np.arange(u0, u1)
        return cls(
            u0=u0,
            n=n,
            slots=_Slots(n, world.n_titles),
            gcount=np.zeros((n, G), dtype=np.float32),
            last_fin=np.full(n, -1, dtype=np.int64),
            busy=np.zeros(n, dtype=np.int64),
            country=world.user_country[ug].astype(np.int64),
            mat_level=np.searchsorted(np.array(MATURITY_LEVELS), world.user_maturity_max[ug]),
            counts=counts,
        )

    def record_plays(
        self,
        world: World,
        users: np.ndarray,
        titles: np.ndarray,
        ts: np.ndarray,
        play: _PlayOutcome,
    ) -> None:
        """Apply plays (one per member: `users` are unique) so later sessions see them."""
        self.slots.record(users, titles, ts, play.end.astype(np.float32), play.abandoned)
        self.gcount[users] += world.genre_weight_matrix[titles]
        self.last_fin[users[play.done]] = titles[play.done]
        self.busy[users] = np.maximum(self.busy[users], play.end_ts)
        if self.counts is not None:
            # The panel's plays are the logging policy's popularity statistics.
            play_day = (ts - world.start_us) // US_PER_DAY
            inside = play_day < world.days
            np.add.at(
                self.counts,
                (play_day[inside], self.country[users[inside]], titles[inside]),
                1.0,
            )


@dataclass
class _Log:
    """Columns logged while simulating (lists of arrays, concatenated once at the end, which
    keeps appends cheap): p_* one per play, i_* one per impression."""

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
    def empty(cls) -> _Log:
        return cls(**{f: [] for f in cls.__dataclass_fields__})

    def cat(self, name: str, dtype: type) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    def add_plays(
        self,
        ug: np.ndarray,
        titles: np.ndarray,
        ts: np.ndarray,
        device: np.ndarray,
        source: np.ndarray,
        play: _PlayOutcome,
    ) -> None:
        self.p_user.append(ug.astype(np.int32))
        self.p_title.append(titles.astype(np.int32))
        self.p_ts.append(ts)
        self.p_device.append(device.astype(np.int8))
        self.p_seconds.append(play.seconds.astype(np.float32))
        self.p_progress.append(play.end.astype(np.float32))
        self.p_abandoned.append(play.abandoned)
        self.p_source.append(source.astype(np.int8))

    def add_impressions(
        self,
        ug: np.ndarray,
        t: np.ndarray,
        device: np.ndarray,
        day: int,
        k: int,
        page: _Page,
        row: np.ndarray,
        col: np.ndarray,
    ) -> None:
        """Log exactly what the viewport showed; `row`, `col` = the slot played (-1 none)."""
        ii, rr, cc = np.nonzero(page.view >= 0)
        self.i_user.append(ug[ii].astype(np.int32))
        self.i_ts.append(t[ii])
        self.i_device.append(device[ii].astype(np.int8))
        self.i_day.append(np.full(len(ii), day, dtype=np.int16))
        self.i_round.append(np.full(len(ii), k, dtype=np.int16))
        self.i_row.append(rr.astype(np.int16))
        self.i_kind.append(page.kind[ii, rr].astype(np.int8))
        self.i_code.append(page.code[ii, rr])
        self.i_pos.append(cc.astype(np.int16))
        self.i_title.append(page.view[ii, rr, cc].astype(np.int32))
        self.i_played.append((row[ii] == rr) & (col[ii] == cc))


class _ChunkRun:
    """Simulates members [u0, u1) day by day: holds the chunk's state, log and generator and
    runs each day's rounds through the units below."""

    def __init__(
        self,
        world: World,
        u0: int,
        u1: int,
        rng: np.random.Generator,
        counts: np.ndarray | None,
    ) -> None:
        self.w = world
        self.rng = rng
        self.state = _ChunkState.start(world, u0, u1, counts)
        self.log = _Log.empty()

    def run_day(self, day: int, lists: np.ndarray) -> None:
        """One day: `lists` are the policy's lists for it (`_policy_lists`)."""
        sessions = _DaySessions.draw(self.w, self.state, day, self.rng)
        for k in range(sessions.rounds):
            # A round's start times depend on the plays of the rounds before it (busy).
            users, t = sessions.members_in_round(k, self.w, self.state)
            if len(users):
                self._round(users, t, day, k, lists)

    def _round(self, users: np.ndarray, t: np.ndarray, day: int, k: int, lists: np.ndarray) -> None:
        """One session per member: open the homepage or search, then watch what was started."""
        w, st, rng = self.w, self.state, self.rng
        ug = users + st.u0
        hour = (t // HOUR_US) % 24
        device = _pick(rng, w.device_mix[ug] * w.device_hour[hour]).astype(np.int64)
        search = rng.random(len(users)) < w.params.search_share
        starts = _Starts()
        pg = np.flatnonzero(~search)
        if len(pg):
            pu, pt, pd = users[pg], t[pg], device[pg]
            ix = st.slots.index(pu)  # valid for the page: nothing is recorded until _watch
            page = _build_page(w, st, rng, pu, ix, pt, pd, lists)
            r, c, play_ts = _browse_page(w, st, rng, pu, ix, pt, pd, page)
            self.log.add_impressions(ug[pg], pt, pd, day, k, page, r, c)
            hit = np.flatnonzero(r >= 0)
            titles = page.view[hit, r[hit], c[hit]]
            starts.add(pu, pd, pu[hit], titles, play_ts[hit], source=0)
        sr = np.flatnonzero(search)
        # Searches are scored in batches so memory stays (batch x pool), whatever the round size.
        for lo in range(0, len(sr), SEARCH_BATCH):
            part = sr[lo : lo + SEARCH_BATCH]
            found, titles, play_ts = _search(w, st, rng, users[part], t[part], device[part])
            starts.add(users[part], device[part], found, titles, play_ts, source=1)
        if starts.any():
            _watch(w, st, self.log, rng, *starts.by_member())

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, np.ndarray]]:
        """(plays, impressions) in the dataset schema, and the raw play arrays for the log."""
        return _logged_tables(self.w, self.log)


# ----- a day's sessions --------------------------------------------------------------------------


@dataclass
class _DaySessions:
    """When each member of a chunk opens the app on one day, split into rounds (round k = every
    member's k-th session of the day) so each round has a member at most once."""

    day_us: int
    users: np.ndarray  # chunk-local, sorted by member then time
    ts: np.ndarray
    rank: np.ndarray  # which of the member's sessions of the day (0 = first)

    @classmethod
    def draw(
        cls, world: World, state: _ChunkState, day: int, rng: np.random.Generator
    ) -> _DaySessions:
        """Sessions per member (Poisson on activity, more at weekends), hours from the traffic
        curve. Draws: session counts, hours, time within the hour."""
        day_us = world.start_us + day * US_PER_DAY
        weekend = ((day_us // US_PER_DAY + 3) % 7) >= 5
        lam = world.activity[state.u0 : state.u0 + state.n] * (
            world.params.weekend_activity if weekend else 1.0
        )
        per_user = rng.poisson(lam)
        su = np.repeat(np.arange(state.n), per_user)
        cdf = np.cumsum(world.hour_traffic[int(weekend)])
        hour = np.minimum(np.searchsorted(cdf, rng.random(len(su)) * cdf[-1]), 23)
        ts = day_us + hour * HOUR_US + (rng.random(len(su)) * HOUR_US).astype(np.int64)
        order = np.lexsort((ts, su))
        su, ts = su[order], ts[order]
        starts = np.cumsum(per_user) - per_user
        rank = np.arange(len(su)) - starts[su]
        return cls(day_us=day_us, users=su, ts=ts, rank=rank)

    @property
    def rounds(self) -> int:
        return int(self.rank.max()) + 1 if len(self.rank) else 0

    def members_in_round(
        self, k: int, world: World, state: _ChunkState
    ) -> tuple[np.ndarray, np.ndarray]:
        """Members of round k and their start times. A session waits until the member's last
        play ended (+2 min); one pushed past midnight, or before the member joined, is dropped."""
        sel = self.rank == k
        users, t = self.users[sel], self.ts[sel]
        t = np.maximum(t, state.busy[users] + 120 * SECOND_US)
        ok = (t < self.day_us + US_PER_DAY) & (t >= world.user_created_us[users + state.u0])
        return users[ok], t[ok]


class _Starts:
    """Titles started in one round (from the page, then each search batch), merged and ordered
    by member (a member starts at most one per round) for `_watch`: that order decides which of
    `_watch`'s draws each play gets."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(
        self,
        users: np.ndarray,
        device: np.ndarray,
        picked: np.ndarray,
        titles: np.ndarray,
        ts: np.ndarray,
        source: int,
    ) -> None:
        """`users`, `device`: the sessions; `picked`: the members among them who started
        `titles` at `ts`."""
        dev = _device_of(users, device, picked)
        self.parts.append((picked, titles, ts, dev, np.full(len(picked), source, dtype=np.int8)))

    def any(self) -> bool:
        return bool(self.parts)

    def by_member(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(users, titles, ts, device, source), stably sorted by member."""
        cols = [np.concatenate(c) for c in zip(*self.parts, strict=True)]
        order = np.argsort(cols[0], kind="stable")
        u, ti, ts, dev, src = (c[order] for c in cols)
        return u, ti, ts, dev, src


def _device_of(users: np.ndarray, device: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Device of each picked member (members are unique within a round)."""
    order = np.argsort(users)
    return device[order][np.searchsorted(users[order], picked)]


# ----- the logged homepage -----------------------------------------------------------------------


@dataclass
class _Page:
    """Logged pages, one per session: the viewport's titles (n, MAX_R, MAX_C; -1 empty), and
    per row its id code (index into the row ids of `_logged_tables`) and kind (ROW_KINDS)."""

    view: np.ndarray
    code: np.ndarray
    kind: np.ndarray


def _build_page(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    ix: _Index,
    t: np.ndarray,
    device: np.ndarray,
    lists: np.ndarray,
) -> _Page:
    """The logging policy's page: its candidate rows, laid out in the device's viewport with a
    little randomisation of row and title order (so logged data covers other orders).
    Draws: genre rows, row order, within-row order."""
    p = w.params
    cand, row_code = _candidate_rows(w, st, rng, users, ix, t, lists)
    # Row order: default, or uniformly random with probability eps_row_order.
    n = len(users)
    shuffle = rng.random(n) < p.eps_row_order
    order = np.tile(np.arange(len(DEFAULT_ROWS)), (n, 1))
    order[shuffle] = np.argsort(rng.random((int(shuffle.sum()), len(DEFAULT_ROWS))), axis=1)
    page = _fill_viewport(cand, row_code, order, device)
    page.view = _order_within_rows(rng, page, p.eps_title_order)
    return page


def _candidate_rows(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    ix: _Index,
    t: np.ndarray,
    lists: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The policy's DEFAULT_ROWS for each session, (n, rows, list_length) titles (-1 padded),
    with each row's id code (n, rows). Unavailable titles are dropped, and finished ones too
    except in continue watching / watch again. Draws: the genre rows."""
    n = len(users)
    ug = users + st.u0
    country = st.country[users]
    length = w.params.list_length
    base = (country * N_MAT + st.mat_level[users]) * N_LISTS
    cand = np.full((n, len(DEFAULT_ROWS), length), -1, dtype=np.int64)
    cand[:, 1] = lists[base + L_TOP]
    cand[:, 2] = lists[base + L_TREND]
    g1, g2 = _user_genres(st, rng, users)
    cand[:, 3] = lists[base + 3 + g1]
    cand[:, 6] = lists[base + 3 + g2]
    cand[:, 5] = lists[base + L_NEW]
    lf = st.last_fin[users]
    cand[:, 4] = np.where(lf[:, None] >= 0, w.policy_neighbors[np.maximum(lf, 0)], -1)
    cand[:, 0] = _continue_watching(w, st, users, ix, t, country, length)
    cand[:, 7] = _watch_again(st, users, length)
    # Availability now, and no finished titles outside continue watching / watch again.
    ok = w.available_mask(ug, cand.reshape(n, -1), t, country).reshape(cand.shape)
    fin = st.slots.finished_mask(ix, cand.reshape(n, -1)).reshape(cand.shape)
    fin[:, [0, 7]] = False
    cand = np.where(ok & ~fin, cand, -1)
    # Row ids: the genre rows and "because you watched" are one id per genre / seed title.
    code_pvr = len(ROW_KINDS)
    code_byw = len(ROW_KINDS) + G
    row_code = np.tile(np.array(DEFAULT_ROWS, dtype=np.int64), (n, 1))
    row_code[:, 3] = code_pvr + g1
    row_code[:, 6] = code_pvr + g2
    row_code[:, 4] = code_byw + np.maximum(lf, 0)
    return cand, row_code


def _user_genres(
    st: _ChunkState, rng: np.random.Generator, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The policy's two personalised genre rows: most played genres, else random ones.
    Draws: tie-break noise, then the random genres (both always, to keep the draw count fixed)."""
    gc = st.gcount[users]
    noise = rng.random(gc.shape) * 1e-3
    top = np.argsort(-(gc + noise), axis=1)[:, :2]
    cold = gc.sum(axis=1) == 0
    rand = np.argsort(rng.random((len(users), G)), axis=1)[:, :2]
    top = np.where(cold[:, None], rand, top)
    return top[:, 0], top[:, 1]


def _continue_watching(
    w: World,
    st: _ChunkState,
    users: np.ndarray,
    ix: _Index,
    t: np.ndarray,
    country: np.ndarray,
    length: int,
) -> np.ndarray:
    """In-progress titles and next episodes of finished ones, most recent first."""
    s = st.slots
    k_eff = max(int(s.count[users].max()), 1)
    title = s.title[users, :k_eff].astype(np.int64)
    prog = s.progress[users, :k_eff]
    last = s.last_us[users, :k_eff]
    inprog = (title >= 0) & (prog < FINISHED_PROGRESS)
    nxt = np.where((title >= 0) & ~inprog, w.next_episode[np.maximum(title, 0)], -1)
    nxt = np.where(ix.find(nxt) >= 0, -1, nxt)  # already started
    cand = np.concatenate([np.where(inprog, title, -1), nxt], axis=1)
    score = np.concatenate([last, last], axis=1).astype(np.float64)
    ok = w.available_mask(users + st.u0, cand, t, country)
    cand = np.where(ok, cand, -1)
    order = np.argsort(np.where(cand >= 0, -score, np.inf), axis=1, kind="stable")
    out = np.take_along_axis(cand, order, axis=1)[:, :length]
    return np.pad(out, ((0, 0), (0, length - out.shape[1])), constant_values=-1)


def _watch_again(st: _ChunkState, users: np.ndarray, length: int) -> np.ndarray:
    """Finished titles, most recently played first."""
    s = st.slots
    k_eff = max(int(s.count[users].max()), 1)
    title = s.title[users, :k_eff].astype(np.int64)
    done = (title >= 0) & (s.progress[users, :k_eff] >= FINISHED_PROGRESS)
    cand = np.where(done, title, -1)
    score = np.where(done, -s.last_us[users, :k_eff].astype(np.float64), np.inf)
    out = np.take_along_axis(cand, np.argsort(score, axis=1, kind="stable"), axis=1)[:, :length]
    return np.pad(out, ((0, 0), (0, length - out.shape[1])), constant_values=-1)


def _fill_viewport(
    cand: np.ndarray, row_code: np.ndarray, order: np.ndarray, device: np.ndarray
) -> _Page:
    """Place candidate rows in `order` into the device's visible rows x titles: a title already
    on screen is skipped, an empty row takes no place."""
    n = len(cand)
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
    return _Page(view=view, code=view_code, kind=view_kind)


def _order_within_rows(rng: np.random.Generator, page: _Page, eps: float) -> np.ndarray:
    """The page's titles with each shown row uniformly shuffled with probability `eps` (empty
    slots stay last). Draws: which rows, then the shuffle keys (for every slot)."""
    view = page.view
    n = len(view)
    keys = np.where(view >= 0, np.arange(MAX_C)[None, None, :], MAX_C + 1).astype(np.float64)
    flip = (rng.random((n, MAX_R)) < eps) & (page.code >= 0)
    rand = rng.random((n, MAX_R, MAX_C))
    keys = np.where(flip[:, :, None] & (view >= 0), rand, keys)
    return np.take_along_axis(view, np.argsort(keys, axis=2, kind="stable"), axis=2)


# ----- browsing the page -------------------------------------------------------------------------


def _browse_page(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    ix: _Index,
    t: np.ndarray,
    device: np.ndarray,
    page: _Page,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each member browses their page (world.browse, the model GroundTruth scores): the (row,
    col) played, -1 when none, and when the play starts (a few seconds per slot looked at).
    Draws: browse."""
    n = len(users)
    a = _attraction(w, st, users, ix, page.view.reshape(n, -1), device, t)
    a = a.reshape(page.view.shape)
    r, c, looked = browse(a, np.asarray(w.params.col_continue)[device], w.params.row_stop, rng)
    play_ts = t + (5 + 3 * looked) * SECOND_US
    return r, c, play_ts


def _attraction(
    w: World,
    st: _ChunkState,
    users: np.ndarray,
    ix: _Index,
    titles: np.ndarray,
    device: np.ndarray,
    t: np.ndarray,
) -> np.ndarray:
    """True play probability of (n, m) titles: the same equations as GroundTruth."""
    ug = users + st.u0
    country = st.country[users]
    logit = w.static_logits(ug, titles, device, t, country)
    prev = np.where(titles >= 0, w.prev_episode[np.maximum(titles, 0)], -1)
    state = st.slots.state(ix, titles, prev)
    logit += w.state_logits(titles, state, t[:, None])
    ok = w.available_mask(ug, titles, t, country)
    return np.where(ok, _sigmoid(logit.astype(np.float64)), 0.0)


# ----- search plays ------------------------------------------------------------------------------


def _search(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    t: np.ndarray,
    device: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A title found by search: drawn in proportion to its true play probability among the
    whole catalog, or, past SEARCH_POOL titles, among a uniform random pool of that many
    (one pool per batch of searches) so a search costs the same at any catalog size.
    Returns (members who found one, title, play start). Draws: pool, pick, start delay."""
    s = st.slots
    n, n_t = len(users), w.n_titles
    ug = users + st.u0
    country = st.country[users]
    pool = np.arange(n_t)
    if n_t > SEARCH_POOL:
        pool = np.sort(rng.choice(n_t, SEARCH_POOL, replace=False))
    logit = w.static_logits(ug, pool, device, t, country)
    # Default state of an untouched title: only the skip penalty for later episodes.
    skip = np.where(w.episode > 1, np.float32(w.params.skip_episode), np.float32(0.0))
    logit += skip[pool][None, :]
    # Touched titles and their next episodes get their exact state instead.
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
    pick = np.minimum((cdf < (rng.random(n) * total)[:, None]).sum(axis=1), len(pool) - 1)
    has = total > 0
    play_ts = t + ((20 + 40 * rng.random(n)) * SECOND_US).astype(np.int64)
    return users[has], pool[pick[has]], play_ts[has]


# ----- watching ----------------------------------------------------------------------------------


@dataclass
class _PlayOutcome:
    """How far each play got: `end` progress (float64), abandoned, seconds watched, when it
    ended (us), finished, and the minutes of the session's budget left after it."""

    end: np.ndarray
    abandoned: np.ndarray
    seconds: np.ndarray
    end_ts: np.ndarray
    done: np.ndarray
    budget: np.ndarray


def _watch(
    w: World,
    st: _ChunkState,
    log: _Log,
    rng: np.random.Generator,
    users: np.ndarray,
    titles: np.ndarray,
    ts: np.ndarray,
    device: np.ndarray,
    source: np.ndarray,
) -> None:
    """Watch the started titles (one per member); a finished episode may roll into the next
    (binge) up to binge_max_chain times. Each step's plays are recorded before the next step,
    whose state they change. Draws: budget, then per step the outcome and the binge choice."""
    p = w.params
    budget = _session_budget(w, rng, ts, device)
    binge_p = _sigmoid(_logit(np.asarray(p.binge_base)[device]) + w.binge_z[users + st.u0])
    for step in range(p.binge_max_chain + 1):
        keep = ts < w.end_us
        users, titles, ts, device = users[keep], titles[keep], ts[keep], device[keep]
        source, budget, binge_p = source[keep], budget[keep], binge_p[keep]
        if len(users) == 0:
            return
        play = _play_outcome(w, st, rng, users, titles, ts, budget)
        log.add_plays(users + st.u0, titles, ts, device, source, play)
        st.record_plays(w, users, titles, ts, play)
        budget = play.budget
        nxt = np.where(play.done, w.next_episode[titles], -1)
        nts = play.end_ts + 15 * SECOND_US
        go = (nxt >= 0) & (budget >= 10.0)
        if step == p.binge_max_chain or not go.any():
            return
        go &= _next_episodes(w, st, rng, users, nxt, nts, binge_p)
        users, titles, ts, device = users[go], nxt[go], nts[go], device[go]
        budget, binge_p = budget[go], binge_p[go]
        source = np.full(len(users), 2, dtype=np.int8)


def _session_budget(
    w: World, rng: np.random.Generator, ts: np.ndarray, device: np.ndarray
) -> np.ndarray:
    """Minutes a session has to watch: a lognormal around the device's median, shorter late
    at night, longer at weekends. Draws: one normal per session."""
    p = w.params
    hour = (ts // HOUR_US) % 24
    weekend = ((ts // US_PER_DAY + 3) % 7) >= 5
    median = np.asarray(p.budget_median_min)[device]
    median = median * np.where(hour < 5, p.budget_late_night, 1.0)
    median = median * np.where(weekend, p.budget_weekend, 1.0)
    return median * np.exp(rng.normal(0.0, p.budget_sigma, len(ts)))


def _play_outcome(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    titles: np.ndarray,
    ts: np.ndarray,
    budget: np.ndarray,
) -> _PlayOutcome:
    """One play per member, resumed where an unfinished one stopped: abandoned part way (more
    likely on a poor taste match), finished when the budget allows, else cut at the budget.
    Draws: abandon, abandon point, finish point."""
    p = w.params
    ug = users + st.u0
    state = st.slots.state(st.slots.index(users), titles[:, None], None)
    in_prog = state.started[:, 0] & (state.last_progress[:, 0] < FINISHED_PROGRESS)
    start = np.where(in_prog, state.last_progress[:, 0], 0.0).astype(np.float64)
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
    seconds = (end - start) * dur * 60.0
    return _PlayOutcome(
        end=end,
        abandoned=abandon & (end < FINISHED_PROGRESS),
        seconds=seconds,
        end_ts=ts + (seconds * SECOND_US).astype(np.int64),
        done=end >= FINISHED_PROGRESS,
        budget=budget - (end - start) * dur,
    )


def _next_episodes(
    w: World,
    st: _ChunkState,
    rng: np.random.Generator,
    users: np.ndarray,
    nxt: np.ndarray,
    nts: np.ndarray,
    binge_p: np.ndarray,
) -> np.ndarray:
    """Which members roll into the next episode `nxt` at `nts` (post-play): it must be
    available then and not finished before, and the member binges with probability `binge_p`.
    Draws: one per member, whether or not `nxt` exists (keeps the draw count fixed)."""
    ok = w.available_mask(users + st.u0, nxt[:, None], nts, st.country[users])[:, 0]
    seen = st.slots.finished_mask(st.slots.index(users), nxt[:, None])[:, 0]
    return ok & ~seen & (rng.random(len(users)) < binge_p)


# ----- the logged tables -------------------------------------------------------------------------


def _logged_tables(w: World, o: _Log) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, np.ndarray]]:
    """(plays, impressions) in the dataset schema, and the raw play arrays for the PlayLog.
    Rows are sorted (plays by member, time, title; impressions by member, time, row,
    position) so the files do not depend on the order rounds logged them in."""
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
    ).select(pl.format("{}-{}-{}", "u", pl.col("d").cast(pl.String).str.zfill(3), "k").alias("p"))[
        "p"
    ]
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
            Dataset(titles_df, users_df, frames[0], frames[1].lazy(), clock, source=SOURCE),
            out_dir,
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
