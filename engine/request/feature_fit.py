"""Fitting the feature store: the statistics of a History, and of the impressions logged before
its cut-off, that page-model features read (engine.request.features.FeatureStore).

`fit_feature_store` runs one function per side of the data, each returning the store's arrays
for that side: `title_statistics` (popularity, completion, context lifts, genres, series),
`member_statistics` (activity, context shares, genre mix), `member_title_statistics` (what
each member did with each title) and `impression_statistics` (row-kind engagement, titles
shown and passed over, column decay). Batch code over whole play arrays, run by training
(engine.training.train); the request path only reads the fitted store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from engine.data.columns import DEVICES, Col
from engine.data.history import US_PER_DAY, US_PER_HOUR, History
from engine.request.features import (
    N_DAYPARTS,
    N_GENRE_FLAGS,
    PRIOR_N,
    FeatureStore,
    daypart,
    history_refs,
)

RECENT_PLAYS = 10  # "recent plays" of a member for the similarity features
AFFINITY_HALF_LIFE_DAYS = 60.0


def fit_feature_store(
    history: History,
    impressions: pl.LazyFrame | None,
    *,
    rankers: Sequence[str],
    kinds: Sequence[str],
    countries: Sequence[str] | None = None,
) -> FeatureStore:
    """Statistics of `history` and of the impressions logged before its cut-off.

    `impressions` may contain later rows: they are dropped here, so a caller cannot leak.
    `kinds` is the row-kind vocabulary (the rankers' kinds plus any logged row kinds)."""
    h = history
    plays = _Plays.of(h)
    country_vocab = tuple(
        sorted(set(countries) if countries is not None else set(h.user_country.tolist()) - {""})
    )
    members = member_statistics(h, plays, country_vocab)
    return FeatureStore(
        cutoff_us=h.cutoff_us,
        countries=country_vocab,
        kinds=tuple(kinds),
        rankers=tuple(rankers),
        **title_statistics(h, plays, members["user_country"], len(country_vocab)),
        **members,
        **member_title_statistics(h),
        **impression_statistics(impressions, h, tuple(kinds)),
        **history_refs(h),
    )


@dataclass(frozen=True)
class _Plays:
    """Per play, what several sides read."""

    age_us: np.ndarray  # time before the cut-off
    daypart: np.ndarray
    device: np.ndarray  # int64, -1 unknown
    known_device: np.ndarray
    genre_w: np.ndarray  # float32 (plays, genres): the title's genres

    @classmethod
    def of(cls, h: History) -> _Plays:
        play_hour = ((h.play_ts // US_PER_HOUR) % 24).astype(np.int64)
        dev = h.play_device.astype(np.int64)
        genres = h.title_genres.astype(np.float32)
        return cls(h.cutoff_us - h.play_ts, daypart(play_hour), dev, dev >= 0, genres[h.play_title])


def title_statistics(
    h: History, plays: _Plays, user_country: np.ndarray, n_countries: int
) -> dict[str, Any]:
    """Popularity windows (also per country: the member's country at play time), completion,
    how much more than usual a title and its genres are played per device, daypart and
    weekend, the genre flags and unit genre vectors, each episode's previous episode."""
    n_t, n_d = h.n_titles, len(DEVICES)
    pt, age_us, dev, known_dev = h.play_title, plays.age_us, plays.device, plays.known_device
    pop = np.stack(
        [np.bincount(pt[age_us <= days * US_PER_DAY], minlength=n_t) for days in (1, 7, 28)],
        axis=1,
    )
    n_title_plays = np.bincount(pt, minlength=n_t)
    completion = np.bincount(pt, weights=h.play_progress, minlength=n_t) / np.maximum(
        n_title_plays, 1
    )
    completion[n_title_plays == 0] = np.nan
    # context lifts: how much more than its base rate a title (or genre) is played
    play_wk = _weekend_of_us(h.play_ts)
    title_device_lift = _lift(pt[known_dev], dev[known_dev], n_t, n_d)
    title_daypart_lift = _lift(pt, plays.daypart, n_t, N_DAYPARTS)
    g = h.title_genres.astype(np.float32)
    n_genres = g.shape[1]
    genre_of_play_w = plays.genre_w
    genre_device = _genre_lift(genre_of_play_w[known_dev], dev[known_dev], n_d)
    genre_daypart = _genre_lift(genre_of_play_w, plays.daypart, N_DAYPARTS)
    genre_weekend = _genre_lift(genre_of_play_w, play_wk, 2)
    n_g = np.maximum(g.sum(axis=1, keepdims=True), 1.0)
    genre_device_lift = (g @ genre_device) / n_g
    genre_daypart_lift = (g @ genre_daypart) / n_g
    genre_weekend_lift = (g @ genre_weekend) / n_g
    no_genre = g.sum(axis=1) == 0
    for arr in (genre_device_lift, genre_daypart_lift, genre_weekend_lift):
        arr[no_genre] = np.nan
    # Most played genres first: the flag features follow the data, not the alphabet.
    genre_plays = genre_of_play_w.sum(axis=0) if len(pt) else np.zeros(n_genres)
    order = np.lexsort((np.arange(n_genres), -genre_plays))[:N_GENRE_FLAGS]
    genre_flags = np.full(N_GENRE_FLAGS, -1, dtype=np.int32)
    genre_flags[: len(order)] = order
    pc = user_country[h.play_user].astype(np.int64)
    in_c = pc >= 0
    country_pop = np.stack(
        [
            np.bincount(
                pc[in_c & (age_us <= days * US_PER_DAY)] * n_t
                + pt[in_c & (age_us <= days * US_PER_DAY)],
                minlength=n_countries * n_t,
            ).reshape(n_countries, n_t)
            for days in (1, 7)
        ],
        axis=2,
    )
    return {
        "genre_flags": genre_flags,
        "title_pop": np.log1p(pop).astype(np.float32),
        "country_pop": np.log1p(country_pop).astype(np.float32),
        "prev_title": _previous_episode(h.series, h.episode),
        "title_completion": completion.astype(np.float32),
        "title_device_lift": title_device_lift,
        "title_daypart_lift": title_daypart_lift,
        "genre_device_lift": genre_device_lift.astype(np.float32),
        "genre_daypart_lift": genre_daypart_lift.astype(np.float32),
        "genre_weekend_lift": genre_weekend_lift.astype(np.float32),
        "title_genre_unit": _unit_rows(g),
    }


def member_statistics(h: History, plays: _Plays, countries: Sequence[str]) -> dict[str, Any]:
    """Each member's country code, activity, shares of plays per device and daypart, minutes
    per play per device, and genre mix (decayed over all plays, and over the recent ones)."""
    n_u, n_d = h.n_users, len(DEVICES)
    pu, age_us, dev, known_dev = h.play_user, plays.age_us, plays.device, plays.known_device
    cpos = {c: i for i, c in enumerate(countries)}
    user_country = np.array([cpos.get(c, -1) for c in h.user_country.tolist()], np.int16)
    n_user_plays = np.diff(h.user_offsets).astype(np.float64)
    last_us = np.full(n_u, np.nan)
    has = n_user_plays > 0
    last_us[has] = h.play_ts[h.user_offsets[1:][has] - 1]
    plays_7d = np.bincount(pu[age_us <= 7 * US_PER_DAY], minlength=n_u)
    mean_prog = np.bincount(pu, weights=h.play_progress, minlength=n_u) / np.maximum(
        n_user_plays, 1
    )
    mean_prog[~has] = np.nan
    user_stats = np.stack([np.log1p(n_user_plays), plays_7d, last_us, mean_prog], axis=1)
    minutes = np.minimum(
        h.play_seconds / 60.0, np.nan_to_num(h.duration_min[h.play_title], nan=1e9)
    )
    flat = pu[known_dev].astype(np.int64) * n_d + dev[known_dev]
    dur_sum = np.bincount(flat, weights=minutes[known_dev], minlength=n_u * n_d)
    dur_n = np.bincount(flat, minlength=n_u * n_d)
    with np.errstate(invalid="ignore", divide="ignore"):
        user_device_duration = (dur_sum / dur_n).reshape(n_u, n_d)
    decay = np.exp2(-age_us / (AFFINITY_HALF_LIFE_DAYS * US_PER_DAY))
    weight = decay * (0.2 + np.clip(h.play_progress, 0, 1))
    genre_w = plays.genre_w
    idx_in_user = np.arange(len(pu)) - h.user_offsets[pu]
    recent = idx_in_user >= (n_user_plays[pu] - RECENT_PLAYS)
    return {
        "user_country": user_country,
        "user_stats": user_stats.astype(np.float64),
        "user_device_share": _share(pu[known_dev], dev[known_dev], n_u, n_d),
        "user_daypart_share": _share(pu, plays.daypart, n_u, N_DAYPARTS),
        "user_device_duration": user_device_duration.astype(np.float32),
        "user_genre": _unit_rows(_user_genre_sum(pu, genre_w, weight, n_u)),
        "user_recent_genre": _unit_rows(
            _user_genre_sum(pu[recent], genre_w[recent], np.ones(recent.sum()), n_u)
        ),
    }


def member_title_statistics(h: History) -> dict[str, Any]:
    """Per (member, title) played, as sorted keys member * n_titles + title: the last play's
    progress, the number of plays, the last play's day and the best progress."""
    n_t = h.n_titles
    keys = h.play_user.astype(np.int64) * n_t + h.play_title
    order = np.argsort(keys, kind="stable")  # plays are time-sorted within a user
    ks = keys[order]
    ut_keys, first, counts = np.unique(ks, return_index=True, return_counts=True)
    last = order[first + counts - 1]
    max_progress = np.maximum.reduceat(h.play_progress[order], first) if len(ks) else ks
    ut_values = np.stack(
        [h.play_progress[last], counts, h.play_ts[last] / US_PER_DAY, max_progress], axis=1
    ).astype(np.float64)
    return {"ut_keys": ut_keys.astype(np.int64), "ut_values": ut_values}


def impression_statistics(
    impressions: pl.LazyFrame | None, h: History, kinds: tuple[str, ...]
) -> dict[str, Any]:
    """From the impressions before the cut-off: titles shown to a member and not played, rows
    of each kind shown and played (per member, device and daypart, and overall), and each
    device's column decay. Counted by polars' streaming engine: the impressions are never in
    memory whole, only their counts per (member, kind, device, daypart) cell."""
    n_u, n_d, n_k = h.n_users, len(DEVICES), len(kinds)
    shown, cells, columns = _impression_counts(impressions, h, kinds)
    # A cell's key is ((u * n_k + k) * (n_d + 1) + d + 1) * N_DAYPARTS + dp (d = -1: unknown).
    key = cells["key"].to_numpy()
    dp = key % N_DAYPARTS
    d = (key // N_DAYPARTS) % (n_d + 1) - 1
    uk = key // N_DAYPARTS // (n_d + 1)
    n, hits = cells["n"].to_numpy(), cells["hits"].to_numpy()
    okd = d >= 0
    user_kind = _count2(uk, n, hits, n_u * n_k).reshape(n_u, n_k, 2)
    ukd_flat = uk[okd] * n_d + d[okd]
    user_kind_device = _count2(ukd_flat, n[okd], hits[okd], n_u * n_k * n_d).reshape(
        n_u, n_k, n_d, 2
    )
    ukp_flat = uk * N_DAYPARTS + dp
    user_kind_daypart = _count2(ukp_flat, n, hits, n_u * n_k * N_DAYPARTS).reshape(
        n_u, n_k, N_DAYPARTS, 2
    )
    return {
        "shown_keys": shown["key"].to_numpy().astype(np.int64),
        "shown_counts": shown["n"].to_numpy().astype(np.float32),
        "user_kind": user_kind,
        "user_kind_device": user_kind_device,
        "user_kind_daypart": user_kind_daypart,
        "kind_device": user_kind_device.sum(axis=0),
        "kind_daypart": user_kind_daypart.sum(axis=0),
        "col_decay": _column_decay(
            columns["d"].to_numpy(),
            columns["pos"].to_numpy(),
            columns["n"].to_numpy(),
            columns["hits"].to_numpy(),
        ),
    }


# ----- helpers --------------------------------------------------------------------------------


DEFAULT_COLUMN_DECAY = 0.8


def _column_decay(
    device: np.ndarray, pos: np.ndarray, n: np.ndarray, played: np.ndarray
) -> np.ndarray:
    """Per device, exp(slope) of log(play rate) against the column over the first 6 columns of
    logged rows (`n` shown and `played` at each device and column): how much less a title one
    slot to the right is played. Without enough logged data, DEFAULT_COLUMN_DECAY. Clipped to
    [0.2, 1]."""
    out = np.full(len(DEVICES), DEFAULT_COLUMN_DECAY)
    for d in range(len(DEVICES)):
        m = (device == d) & (pos >= 0) & (pos < 6)
        shown = np.bincount(pos[m], weights=n[m].astype(np.float64), minlength=6)
        hits = np.bincount(pos[m], weights=played[m].astype(np.float64), minlength=6)
        ok = (shown >= 200) & (hits >= 5)
        if ok.sum() >= 3:
            c = np.flatnonzero(ok)
            slope = np.polyfit(c, np.log(hits[ok] / shown[ok]), 1)[0]
            out[d] = float(np.clip(np.exp(slope), 0.2, 1.0))
    return out


def _previous_episode(series: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """Per title, the index of the same series' previous episode (-1: none)."""
    out = np.full(len(series), -1, dtype=np.int32)
    is_ep = (series >= 0) & (episode >= 0)
    idx = np.flatnonzero(is_ep)
    if len(idx) == 0:
        return out
    key = series[idx].astype(np.int64) * (1 << 20) + episode[idx]
    order = np.argsort(key)
    skey, sidx = key[order], idx[order]
    want = series[idx].astype(np.int64) * (1 << 20) + episode[idx] - 1
    pos = np.minimum(np.searchsorted(skey, want), len(skey) - 1)
    found = skey[pos] == want
    out[idx[found]] = sidx[pos[found]]
    return out


def _weekend_of_us(ts_us: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday (weekday 3).
    weekday = (ts_us // US_PER_DAY + 3) % 7
    return (weekday >= 5).astype(np.int64)


def _lift(entity: np.ndarray, bucket: np.ndarray, n_entities: int, n_buckets: int) -> np.ndarray:
    """(n_entities, n_buckets): smoothed share of an entity's plays in each bucket / the global
    share. 1 = no preference; NaN for an entity without plays."""
    flat = entity.astype(np.int64) * n_buckets + bucket
    counts = np.bincount(flat, minlength=n_entities * n_buckets).reshape(n_entities, n_buckets)
    total = counts.sum(axis=1, keepdims=True).astype(np.float64)
    base = counts.sum(axis=0) / max(counts.sum(), 1)
    share = (counts + PRIOR_N * base) / (total + PRIOR_N)
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = share / base
    lift[total[:, 0] == 0] = np.nan
    return lift.astype(np.float32)


def _genre_lift(genre_w: np.ndarray, bucket: np.ndarray, n_buckets: int) -> np.ndarray:
    """(n_genres, n_buckets) lift of each genre's plays per bucket."""
    n_genres = genre_w.shape[1]
    counts = np.zeros((n_genres, n_buckets))
    for b in range(n_buckets):
        counts[:, b] = genre_w[bucket == b].sum(axis=0)
    base = counts.sum(axis=0) / max(counts.sum(), 1.0)
    total = counts.sum(axis=1, keepdims=True)
    share = (counts + PRIOR_N * base) / (total + PRIOR_N)
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = np.where(base > 0, share / np.where(base > 0, base, 1), 1.0)
    return np.asarray(lift, dtype=np.float64)


def _share(entity: np.ndarray, bucket: np.ndarray, n_entities: int, n_buckets: int) -> np.ndarray:
    flat = entity.astype(np.int64) * n_buckets + bucket
    counts = np.bincount(flat, minlength=n_entities * n_buckets).reshape(n_entities, n_buckets)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = counts / total
    return out.astype(np.float32)


def _user_genre_sum(
    users: np.ndarray, genre_w: np.ndarray, weight: np.ndarray, n_users: int
) -> np.ndarray:
    out = np.zeros((n_users, genre_w.shape[1]))
    for gi in range(genre_w.shape[1]):
        out[:, gi] = np.bincount(users, weights=genre_w[:, gi] * weight, minlength=n_users)
    return out


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norm = np.sqrt((m.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (m / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _count2(flat: np.ndarray, n: np.ndarray, played: np.ndarray, size: int) -> np.ndarray:
    """(size, 2): the impressions shown and played in each cell of `flat` (float32 filled a
    column at a time: at a million members each float64 column is 0.3 GB)."""
    out = np.empty((size, 2), dtype=np.float32)
    out[:, 0] = np.bincount(flat, weights=n.astype(np.float64), minlength=size)
    out[:, 1] = np.bincount(flat, weights=played.astype(np.float64), minlength=size)
    return out


def _impression_counts(
    impressions: pl.LazyFrame | None, h: History, kinds: tuple[str, ...]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Impressions strictly before the cut-off of the members `h` knows, counted: `shown` (key
    u * n_titles + t of the titles shown and not played, and their count n, by key), `cells`
    (shown n and played hits per member, kind, device and daypart of rows of a known kind, keyed
    as `impression_statistics` reads them) and `columns` (n and hits per d, pos). Unknown
    titles, kinds and devices are -1.

    Each count is its own streaming query, one after the other, each grouping by one integer
    key: three queries at once, or keys of four columns, hold several times the memory of one
    hash table of integers at a million members."""
    idx = pl.Int64
    empty = (
        pl.DataFrame(schema={"key": idx, "n": idx}),
        pl.DataFrame(schema={"key": idx, "n": idx, "hits": idx}),
        pl.DataFrame(schema={"d": idx, "pos": idx, "n": idx, "hits": idx}),
    )
    if impressions is None:
        return empty

    def index(column: str, name: str, values: Sequence[str]) -> pl.LazyFrame:
        frame = {column: list(values), name: np.arange(len(values), dtype=np.int64)}
        return pl.DataFrame(frame, schema={column: pl.String, name: idx}).lazy()

    cut = pl.lit(h.cutoff_us).cast(pl.Int64)
    imp = (
        impressions.filter(pl.col(Col.TS).dt.epoch("us") < cut)
        .join(index(Col.USER_ID, "u", h.user_ids.tolist()), on=Col.USER_ID, how="inner")
        .join(index(Col.TITLE_ID, "t", h.title_ids.tolist()), on=Col.TITLE_ID, how="left")
        .join(index(Col.ROW_KIND, "k", kinds), on=Col.ROW_KIND, how="left")
        .join(index(Col.DEVICE, "d", DEVICES), on=Col.DEVICE, how="left")
        .select(
            pl.col("u"),
            pl.col("t").fill_null(-1),
            pl.col("k").fill_null(-1),
            pl.col("d").fill_null(-1),
            (pl.col(Col.TS).dt.hour().cast(idx) // (24 // N_DAYPARTS)).alias("dp"),
            pl.col(Col.POSITION).cast(idx).alias("pos"),
            pl.col(Col.PLAYED).fill_null(False),
        )
    )
    played = pl.col(Col.PLAYED)
    counts = (pl.len().cast(idx).alias("n"), played.sum().cast(idx).alias("hits"))
    shown = (
        imp.filter(~played & (pl.col("t") >= 0))
        .group_by((pl.col("u") * h.n_titles + pl.col("t")).alias("key"))
        .agg(pl.len().cast(idx).alias("n"))
        .sort("key")
    )
    n_k, n_d = len(kinds), len(DEVICES)
    cell = ((pl.col("u") * n_k + pl.col("k")) * (n_d + 1) + pl.col("d") + 1) * N_DAYPARTS
    cells = imp.filter(pl.col("k") >= 0).group_by((cell + pl.col("dp")).alias("key")).agg(*counts)
    columns = (
        imp.filter((pl.col("pos") >= 0) & (pl.col("pos") < 6)).group_by("d", "pos").agg(*counts)
    )
    return (
        shown.collect(engine="streaming"),
        cells.collect(engine="streaming"),
        columns.collect(engine="streaming"),
    )
