"""The simulated world's ground truth: the true choice model behind `rowrank simulate`.

One model, used twice: the simulator draws every play from it, and `GroundTruth` answers what
the true play probability of a title, the true take-rate of a page, and the best page are, for
any user and request context. docs/simulation.md writes the model out as equations.

Time: every timestamp is UTC and UTC is taken as everyone's local time, so a context's hour and
weekday are those of `ctx.at` converted to UTC.

Saved as `world.json` (scalars, parameters, names) and `world.npz` (arrays, no pickle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import orjson

from engine.data.columns import DEVICES, TITLE_KINDS
from engine.data.dataset import to_utc
from engine.data.history import FINISHED_PROGRESS, US_PER_DAY
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout

WORLD_VERSION = 1
HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GENRES: tuple[str, ...] = (
    "Kids",
    "Comedy",
    "Drama",
    "Thriller",
    "Horror",
    "Documentary",
    "Action",
    "Romance",
    "Sci-Fi",
    "Reality",
)
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "IN")
ROW_KINDS: tuple[str, ...] = (
    "continue_watching",
    "top_picks",
    "trending",
    "pvr_genre",
    "because_you_watched",
    "new_releases",
    "watch_again",
)
MOVIE, SERIES = TITLE_KINDS.index("movie"), TITLE_KINDS.index("series")
G_KIDS, G_THRILLER, G_HORROR = (
    GENRES.index("Kids"),
    GENRES.index("Thriller"),
    GENRES.index("Horror"),
)
# Oracle: slot-fill families tried (see `_best_assignment`); 0 = row-major, 1 = column-major.
_ORACLE_RHOS = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the true model (logit units unless named otherwise). Saved in world.json."""

    latent_dim: int = 8
    base_logit: float = -4.2
    genre_weight: float = 1.0  # x mean of the user's affinities over the title's genres
    # Context: device x length (per unit of (duration - 65) / 35 min), per DEVICES order.
    device_length: tuple[float, ...] = (0.35, -0.9, -0.35, 0.0)
    device_series: tuple[float, ...] = (-0.1, 0.35, 0.1, 0.0)  # bonus for episodes per device
    tv_evening_movie: float = 0.5  # tv, 18:00-23:59, movie
    weekend_movie: float = 0.25
    novelty: float = 1.0  # x exp(-days since added / novelty_days)
    novelty_days: float = 10.0
    # State, from the user's own plays before the request.
    resume: float = 1.8  # in progress and not abandoned: (resume + per_progress*p) x decay
    resume_per_progress: float = 1.4
    resume_days: float = 10.0
    abandoned: float = -2.5  # the last play of this title was abandoned (a hidden flag)
    rewatch: float = -2.8  # finished before
    rewatch_kids: float = -1.2  # finished before, a Kids title
    next_episode: float = 3.0  # previous episode finished: x exp(-days since / next_days)
    next_episode_days: float = 7.0
    skip_episode: float = -4.0  # an episode > 1 whose previous episode is not finished
    # Browsing model (2-D cascade inside the visible viewport).
    row_stop: float = 0.3  # after a row without a play, stop with this probability
    col_continue: tuple[float, ...] = (0.75, 0.65, 0.75, 0.85)  # per DEVICES order
    # Watching model.
    budget_median_min: tuple[float, ...] = (100.0, 30.0, 50.0, 60.0)  # per DEVICES order
    budget_sigma: float = 0.6
    budget_late_night: float = 0.7  # x budget for sessions 00:00-04:59
    budget_weekend: float = 1.2
    abandon_bias: float = -1.3  # P(abandon) = sigmoid(bias - match_weight * taste match)
    abandon_match: float = 1.2
    binge_base: tuple[float, ...] = (0.65, 0.45, 0.55, 0.5)  # per DEVICES; x user's binge_z
    binge_max_chain: int = 6
    # Sessions.
    search_share: float = 0.12  # sessions that play a title found by search (no impression)
    weekend_activity: float = 1.25
    # Logging policy.
    eps_row_order: float = 0.2  # P(rows of a page put in uniformly random order)
    eps_title_order: float = 0.2  # P(a row's visible titles put in uniformly random order)
    list_length: int = 16  # candidate titles kept per policy list before filtering
    panel_users: int = 8192  # logging policy statistics come from the first this many users


class State(NamedTuple):
    """Per (request, title) facts from the user's plays strictly before the request time."""

    started: np.ndarray  # bool: any play of the title
    last_progress: np.ndarray  # float32: progress at the end of the latest play
    last_abandoned: np.ndarray  # bool: the latest play was abandoned (hidden in the data)
    last_us: np.ndarray  # int64: start of the latest play
    finished: np.ndarray  # bool: some play reached FINISHED_PROGRESS
    prev_finished: np.ndarray  # bool: the previous episode (if any) was finished
    prev_last_us: np.ndarray  # int64: start of the previous episode's latest play


@dataclass(frozen=True, eq=False)
class PlayLog:
    """The world's plays (what the data's plays table shows, plus the hidden abandoned flag),
    sorted by (user, ts); user u's plays are [offsets[u], offsets[u+1])."""

    user: np.ndarray  # int32
    title: np.ndarray  # int32
    ts: np.ndarray  # int64 us
    progress: np.ndarray  # float32
    abandoned: np.ndarray  # bool
    offsets: np.ndarray  # int64 (n_users + 1)

    @classmethod
    def build(
        cls,
        n_users: int,
        user: np.ndarray,
        title: np.ndarray,
        ts: np.ndarray,
        progress: np.ndarray,
        abandoned: np.ndarray,
    ) -> PlayLog:
        order = np.lexsort((title, ts, user))
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(user, minlength=n_users), out=offsets[1:])
        return cls(
            user[order].astype(np.int32),
            title[order].astype(np.int32),
            ts[order].astype(np.int64),
            progress[order].astype(np.float32),
            abandoned[order].astype(bool),
            offsets,
        )

    def state(self, user: int, at_us: int, titles: np.ndarray, prev: np.ndarray) -> State:
        """State of `titles` (int, -1 = none) for one user just before `at_us`."""
        lo = int(self.offsets[user])
        hi = lo + int(np.searchsorted(self.ts[lo : int(self.offsets[user + 1])], at_us))
        t, ts = self.title[lo:hi], self.ts[lo:hi]
        prog, aband = self.progress[lo:hi], self.abandoned[lo:hi]
        if hi == lo:
            no = np.zeros(titles.shape, dtype=bool)
            zf, zi = np.zeros(titles.shape, np.float32), np.zeros(titles.shape, np.int64)
            return State(no, zf, no, zi, no, no, zi)
        # Latest play per title: first occurrence in the reversed (time-ordered) plays.
        uniq, first_rev = np.unique(t[::-1], return_index=True)
        last = (hi - lo - 1) - first_rev
        fin_titles = np.unique(t[prog >= FINISHED_PROGRESS])

        def find(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = np.clip(np.searchsorted(uniq, q), 0, len(uniq) - 1)
            return (q >= 0) & (uniq[pos] == q), last[pos]

        hit, idx = find(titles)
        phit, pidx = find(prev)
        return State(
            started=hit,
            last_progress=np.where(hit, prog[idx], np.float32(0.0)),
            last_abandoned=hit & aband[idx],
            last_us=np.where(hit, ts[idx], 0),
            finished=np.isin(titles, fin_titles) & (titles >= 0),
            prev_finished=np.isin(prev, fin_titles) & (prev >= 0),
            prev_last_us=np.where(phit, ts[pidx], 0),
        )


# Array fields of World saved in world.npz, in this order.
_ARRAYS: tuple[str, ...] = (
    "title_ids",
    "title_names",
    "title_kind",
    "title_genres",
    "release_year",
    "duration_min",
    "maturity",
    "available",
    "added_us",
    "series",
    "episode",
    "prev_episode",
    "next_episode",
    "popularity",
    "title_factors",
    "user_ids",
    "user_country",
    "user_maturity_max",
    "user_created_us",
    "genre_affinity",
    "user_factors",
    "device_mix",
    "activity",
    "binge_z",
    "burst_title",
    "burst_country",
    "burst_start_day",
    "burst_days",
    "burst_amplitude",
    "hour_genre",
    "weekend_genre",
    "hour_traffic",
    "device_hour",
    "policy_neighbors",
)
_LOG_ARRAYS: tuple[str, ...] = ("user", "title", "ts", "progress", "abandoned", "offsets")


@dataclass(frozen=True, eq=False)
class World:
    """Catalog, users, bursts and effect tables of one simulated world (see docs/simulation.md)."""

    params: WorldParams
    start_us: int  # start of the simulated period (UTC midnight)
    days: int
    seed: int
    # titles (index = position in title_ids, ids sort in index order)
    title_ids: np.ndarray  # str
    title_names: np.ndarray  # str
    title_kind: np.ndarray  # int8, index into TITLE_KINDS
    title_genres: np.ndarray  # bool (T, G)
    release_year: np.ndarray  # int32
    duration_min: np.ndarray  # float32
    maturity: np.ndarray  # int8
    available: np.ndarray  # bool (T, C): available in country c
    added_us: np.ndarray  # int64
    series: np.ndarray  # int32 series number, -1 = movie
    episode: np.ndarray  # int32 episode number, -1 = movie
    prev_episode: np.ndarray  # int32 title index of the previous episode, -1 = none
    next_episode: np.ndarray  # int32 title index of the next episode, -1 = none
    popularity: np.ndarray  # float32 logit offset (heavy-tailed in odds)
    title_factors: np.ndarray  # float32 (T, k)
    # users
    user_ids: np.ndarray  # str
    user_country: np.ndarray  # int8 index into COUNTRIES
    user_maturity_max: np.ndarray  # int8
    user_created_us: np.ndarray  # int64
    genre_affinity: np.ndarray  # float32 (U, G)
    user_factors: np.ndarray  # float32 (U, k)
    device_mix: np.ndarray  # float32 (U, 4): preferred device shares, DEVICES order
    activity: np.ndarray  # float32 sessions per weekday
    binge_z: np.ndarray  # float32 logit shift of the user's binge probability
    # trending bursts: title x country, from start day for `days` days, + amplitude
    burst_title: np.ndarray  # int32
    burst_country: np.ndarray  # int8
    burst_start_day: np.ndarray  # int32 (day index inside the period)
    burst_days: np.ndarray  # int32
    burst_amplitude: np.ndarray  # float32
    # effect tables
    hour_genre: np.ndarray  # float32 (24, G)
    weekend_genre: np.ndarray  # float32 (G,)
    hour_traffic: np.ndarray  # float32 (2, 24): session start weights, weekday / weekend
    device_hour: np.ndarray  # float32 (24, 4): device weight by hour
    # logging policy: static "because you watched" neighbours per title (-1 padded)
    policy_neighbors: np.ndarray  # int32 (T, list_length)
    genre_names: tuple[str, ...] = GENRES
    countries: tuple[str, ...] = COUNTRIES

    _SCALARS: ClassVar[tuple[str, ...]] = ("start_us", "days", "seed")

    @property
    def n_titles(self) -> int:
        return len(self.title_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def end_us(self) -> int:
        """The clock: end of the simulated period."""
        return self.start_us + self.days * US_PER_DAY

    @cached_property
    def genre_weight_matrix(self) -> np.ndarray:
        """(T, G) float32: each title's genres, normalised to sum 1."""
        g = self.title_genres.astype(np.float32)
        return g / np.maximum(g.sum(axis=1, keepdims=True), 1.0)

    @cached_property
    def length_z(self) -> np.ndarray:
        return np.clip((self.duration_min - 65.0) / 35.0, -1.5, 2.5).astype(np.float32)

    @cached_property
    def kids_title(self) -> np.ndarray:
        return self.title_genres[:, G_KIDS]

    @cached_property
    def _burst_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted keys (title, country, day) -> summed amplitude, one entry per burst day."""
        n_c = len(self.countries)
        reps = self.burst_days.astype(np.int64)
        day = np.repeat(self.burst_start_day.astype(np.int64), reps)
        day += np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        key = (
            np.repeat(self.burst_title.astype(np.int64), reps) * n_c
            + np.repeat(self.burst_country.astype(np.int64), reps)
        ) * (self.days + 1) + np.minimum(day, self.days)
        amp = np.repeat(self.burst_amplitude, reps)
        uniq, inv = np.unique(key, return_inverse=True)
        return uniq, np.bincount(inv, weights=amp).astype(np.float32)

    def trend(self, titles: np.ndarray, country: np.ndarray, at_us: np.ndarray) -> np.ndarray:
        """Burst amplitude for titles (any shape) in country at time (broadcastable)."""
        keys, amp = self._burst_keys
        day = np.floor_divide(at_us - self.start_us, US_PER_DAY)
        inside = (day >= 0) & (day < self.days)
        q = (titles.astype(np.int64) * len(self.countries) + country) * (self.days + 1) + np.clip(
            day, 0, self.days
        )
        if len(keys) == 0:
            return np.zeros(np.broadcast(q).shape, np.float32)
        pos = np.clip(np.searchsorted(keys, q), 0, len(keys) - 1)
        hit = (keys[pos] == q) & inside & (titles >= 0)
        return np.where(hit, amp[pos], np.float32(0.0))

    # ----- the model ---------------------------------------------------------------------------

    def taste(self, users: np.ndarray, titles: np.ndarray) -> np.ndarray:
        """Context-free match of users (n,) with titles (n, m) or (n,): genres + latent factors."""
        two_d = titles.ndim == 2
        t = titles if two_d else titles[:, None]
        g = np.matmul(self.genre_weight_matrix[t], self.genre_affinity[users][:, :, None])[..., 0]
        f = np.matmul(self.title_factors[t], self.user_factors[users][:, :, None])[..., 0]
        out = self.params.genre_weight * g + f
        return out if two_d else out[:, 0]

    @cached_property
    def _title_base(self) -> np.ndarray:
        return (self.params.base_logit + self.popularity).astype(np.float32)

    @cached_property
    def _is_series(self) -> np.ndarray:
        return self.title_kind == SERIES

    @cached_property
    def _added_days(self) -> np.ndarray:
        """added_at in days since the start (float32: a few seconds of resolution)."""
        return ((self.added_us - self.start_us) / US_PER_DAY).astype(np.float32)

    @cached_property
    def _has_burst(self) -> np.ndarray:
        out = np.zeros(self.n_titles, dtype=bool)
        out[self.burst_title] = True
        return out

    def static_logits(
        self,
        users: np.ndarray,
        titles: np.ndarray,
        device: np.ndarray,
        at_us: np.ndarray,
        country: np.ndarray,
    ) -> np.ndarray:
        """Logit of every (request, title) without the user-state terms.

        users, device (codes), at_us, country (codes): (n,); titles: (n, m) or (m,) shared by
        every request. Returns float32 (n, m).
        """
        p = self.params
        hour = (np.floor_divide(at_us, HOUR_US) % 24).astype(np.int64)
        # 1970-01-01 was a Thursday (weekday 3).
        weekend = ((np.floor_divide(at_us, US_PER_DAY) + 3) % 7) >= 5
        gvec = p.genre_weight * self.genre_affinity[users] + self.hour_genre[hour]
        gvec = (gvec + weekend[:, None] * self.weekend_genre[None, :]).astype(np.float32)
        safe = np.maximum(titles, 0)
        pfac = self.user_factors[users]
        if titles.ndim == 1:
            # Outer products summed over the few genres / factors: no multi-threaded BLAS call,
            # which on a busy 2-core machine measured 100x slower than this loop.
            logit = np.zeros((len(users), len(titles)), dtype=np.float32)
            for vec, mat in ((gvec, self.genre_weight_matrix), (pfac, self.title_factors)):
                cols = np.ascontiguousarray(mat[safe].T)
                for j in range(cols.shape[0]):
                    logit += vec[:, j : j + 1] * cols[j][None, :]

            def pick(arr: np.ndarray) -> np.ndarray:
                return arr[safe][None, :]
        else:
            # Batched (m x G) @ (G x 1): far faster than a product-and-sum over a short axis.
            logit = np.matmul(self.genre_weight_matrix[safe], gvec[:, :, None])[..., 0]
            logit += np.matmul(self.title_factors[safe], pfac[:, :, None])[..., 0]

            def pick(arr: np.ndarray) -> np.ndarray:
                return arr[safe]

        logit += pick(self._title_base)
        series = pick(self._is_series)
        logit += np.asarray(p.device_length, np.float32)[device][:, None] * pick(self.length_z)
        logit += np.asarray(p.device_series, np.float32)[device][:, None] * series
        evening = (device == DEVICES.index("tv")) & (hour >= 18)
        movie_bonus = evening * np.float32(p.tv_evening_movie) + weekend * np.float32(
            p.weekend_movie
        )
        logit += movie_bonus[:, None].astype(np.float32) * ~series
        at_days = ((at_us - self.start_us) / US_PER_DAY).astype(np.float32)
        age_days = np.maximum(at_days[:, None] - pick(self._added_days), np.float32(0.0))
        logit += np.float32(p.novelty) * np.exp(age_days * np.float32(-1.0 / p.novelty_days))
        hb = np.broadcast_to(pick(self._has_burst), logit.shape)
        if hb.any():
            rr, cc = np.nonzero(hb)
            tt = np.broadcast_to(safe, logit.shape)[rr, cc]
            logit[rr, cc] += self.trend(tt, country[rr], at_us[rr])
        return logit.astype(np.float32, copy=False)

    def available_mask(
        self, users: np.ndarray, titles: np.ndarray, at_us: np.ndarray, country: np.ndarray
    ) -> np.ndarray:
        """Titles (n, m) or (m,) the user may play: known, in the country, within the user's
        maturity limit, already added."""
        safe = np.maximum(titles, 0)
        if titles.ndim == 1:
            ok = self.available[safe][:, country].T
            ok &= self.maturity[safe][None, :] <= self.user_maturity_max[users][:, None]
            ok &= self.added_us[safe][None, :] <= at_us[:, None]
            return ok & (titles >= 0)[None, :]
        ok = self.available[safe, country[:, None]]
        ok &= self.maturity[safe] <= self.user_maturity_max[users][:, None]
        ok &= self.added_us[safe] <= at_us[:, None]
        return ok & (titles >= 0)

    def state_logits(self, titles: np.ndarray, st: State, at_us: np.ndarray) -> np.ndarray:
        """The user-state terms (continue watching, next episode, rewatch, skip)."""
        p = self.params
        safe = np.maximum(titles, 0)
        age = np.maximum(at_us - st.last_us, 0) / US_PER_DAY
        prev_age = np.maximum(at_us - st.prev_last_us, 0) / US_PER_DAY
        in_progress = st.started & (st.last_progress < FINISHED_PROGRESS)
        resume = (p.resume + p.resume_per_progress * st.last_progress) * np.exp(
            -age / p.resume_days
        )
        out = np.where(in_progress & ~st.last_abandoned, resume, 0.0)
        out = np.where(in_progress & st.last_abandoned, p.abandoned, out)
        rewatch = np.where(self.kids_title[safe], p.rewatch_kids, p.rewatch)
        out = np.where(st.started & ~in_progress, rewatch, out)
        later_ep = ~st.started & (self.episode[safe] > 1) & (titles >= 0)
        nxt = p.next_episode * np.exp(-prev_age / p.next_episode_days)
        out = np.where(later_ep & st.prev_finished, nxt, out)
        out = np.where(later_ep & ~st.prev_finished, p.skip_episode, out)
        return out.astype(np.float32)

    # ----- saving --------------------------------------------------------------------------------

    def save(self, directory: Path, log: PlayLog | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays = {k: (v.astype(str) if v.dtype.kind in "OU" else v) for k, v in arrays.items()}
        if log is not None:
            arrays.update({f"log_{k}": getattr(log, k) for k in _LOG_ARRAYS})
        with open(directory / "world.npz", "wb") as fh:
            np.savez(fh, **arrays)
        meta = {
            "version": WORLD_VERSION,
            "start_us": self.start_us,
            "days": self.days,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_titles": self.n_titles,
            "genre_names": list(self.genre_names),
            "countries": list(self.countries),
            "devices": list(DEVICES),
            "title_kinds": list(TITLE_KINDS),
            "row_kinds": list(ROW_KINDS),
            "finished_progress": FINISHED_PROGRESS,
            "layouts": {d: asdict(lay) for d, lay in DEFAULT_LAYOUTS.items()},
            "params": asdict(self.params),
            "arrays": list(_ARRAYS) + ([f"log_{k}" for k in _LOG_ARRAYS] if log else []),
        }
        (directory / "world.json").write_bytes(
            orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )

    @classmethod
    def load(cls, directory: Path) -> tuple[World, PlayLog | None]:
        try:
            meta = orjson.loads((directory / "world.json").read_bytes())
            with np.load(directory / "world.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
                log = (
                    PlayLog(**{k: npz[f"log_{k}"] for k in _LOG_ARRAYS})
                    if "log_user" in npz.files
                    else None
                )
        except (OSError, KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read the simulated world in {directory}: {exc}") from exc
        if meta.get("version") != WORLD_VERSION:
            raise ModelLoadError(
                f"{directory}/world.json has version {meta.get('version')}, this rowrank reads "
                f"version {WORLD_VERSION}: regenerate with `rowrank simulate`."
            )
        known = {f.name for f in fields(WorldParams)}
        raw: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in meta["params"].items()
            if k in known
        }
        params = WorldParams(**raw)
        world = cls(
            params=params,
            start_us=int(meta["start_us"]),
            days=int(meta["days"]),
            seed=int(meta["seed"]),
            genre_names=tuple(meta["genre_names"]),
            countries=tuple(meta["countries"]),
            **arrays,
        )
        return world, log


# ----- browsing model ----------------------------------------------------------------------------


def page_play_probs(
    attraction: np.ndarray, col_continue: np.ndarray, row_stop: float
) -> np.ndarray:
    """Exact per-slot play probability of a batch of pages under the 2-D cascade.

    attraction: (n, R, C), zero for empty, invisible or repeated slots; col_continue: (n,).
    The member scans row 0 left to right: at each slot plays with the slot's attraction (and
    stops), else moves right with probability col_continue or leaves the row; after a row with
    no play, stops browsing with probability row_stop, else goes to the next row.
    """
    a = attraction.astype(np.float64)
    n, n_rows, n_cols = a.shape
    beta = col_continue.astype(np.float64)[:, None]
    # reach[c] within a row = beta^c * prod_{c'<c} (1 - a_c')
    survive = np.cumprod(np.concatenate([np.ones((n, n_rows, 1)), (1.0 - a[:, :, :-1])], axis=2), 2)
    reach_col = survive * beta[:, :, None] ** np.arange(n_cols)[None, None, :]
    in_row = reach_col * a  # P(play at c | row reached)
    row_play = in_row.sum(axis=2)  # (n, R)
    go_on = (1.0 - row_play) * (1.0 - row_stop)
    reach_row = np.cumprod(np.concatenate([np.ones((n, 1)), go_on[:, :-1]], axis=1), axis=1)
    return in_row * reach_row[:, :, None]


def browse(
    attraction: np.ndarray,
    col_continue: np.ndarray,
    row_stop: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one browse per page (same model as `page_play_probs`).

    Returns (row, col) of the play (-1 when none) and the number of slots looked at.
    """
    n, n_rows, n_cols = attraction.shape
    u_play = rng.random((n, n_rows, n_cols))
    u_move = rng.random((n, n_rows, n_cols))
    u_stop = rng.random((n, n_rows))
    alive = np.ones(n, dtype=bool)
    row = np.full(n, -1, dtype=np.int64)
    col = np.full(n, -1, dtype=np.int64)
    looked = np.zeros(n, dtype=np.int64)
    for r in range(n_rows):
        in_row = alive.copy()
        for c in range(n_cols):
            looked += in_row
            hit = in_row & (u_play[:, r, c] < attraction[:, r, c])
            row[hit], col[hit] = r, c
            alive &= ~hit
            in_row &= ~hit & (u_move[:, r, c] < col_continue)
        alive &= u_stop[:, r] >= row_stop
    return row, col, looked


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----- ground truth ------------------------------------------------------------------------------


@dataclass(eq=False)
class GroundTruth:
    """The true model of a simulated world, queried per user and request context.

    Every probability comes from the same equations the simulator drew the data from
    (docs/simulation.md). The user's state (what they started, finished, abandoned) is taken
    from the world's plays strictly before `ctx.at`.
    """

    world: World
    log: PlayLog
    _user_index: dict[str, int] = field(default_factory=dict, repr=False)
    _title_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._user_index.update({u: i for i, u in enumerate(self.world.user_ids.tolist())})
        self._title_index.update({t: i for i, t in enumerate(self.world.title_ids.tolist())})

    @classmethod
    def load(cls, directory: Path) -> GroundTruth:
        """Read `world.json` + `world.npz` written by `save` (or by `rowrank simulate`)."""
        world, log = World.load(Path(directory))
        if log is None:
            raise ModelLoadError(f"{directory}/world.npz holds no play log: regenerate it")
        return cls(world, log)

    def save(self, directory: Path) -> None:
        self.world.save(Path(directory), self.log)

    # ----- lookups -------------------------------------------------------------------------------

    def user_index(self, user_id: str) -> int:
        try:
            return self._user_index[user_id]
        except KeyError:
            raise KeyError(f"user {user_id!r} is not in this simulated world") from None

    def title_indices(self, title_ids: list[str] | np.ndarray) -> np.ndarray:
        """int64 indices, -1 for unknown titles."""
        get = self._title_index.get
        return np.fromiter((get(t, -1) for t in title_ids), dtype=np.int64, count=len(title_ids))

    def _request(self, user_id: str, ctx: RequestContext) -> tuple[int, int, int, int]:
        u = self.user_index(user_id)
        # Exact integer microseconds (float timestamps can be 1 us off).
        at_us = (to_utc(ctx.at) - _EPOCH) // timedelta(microseconds=1)
        w = self.world
        country = (
            w.countries.index(ctx.country) if ctx.country in w.countries else int(w.user_country[u])
        )
        return u, DEVICES.index(ctx.device), at_us, country

    def attraction_idx(
        self, user: int, device: int, at_us: int, country: int, titles: np.ndarray
    ) -> np.ndarray:
        """True play probability for title indices (any shape, -1 = none) of one request:
        the batch entry point (device and country are codes, at_us microseconds UTC)."""
        w = self.world
        flat = np.asarray(titles, dtype=np.int64).reshape(-1)
        u = np.array([user])
        at = np.array([at_us], dtype=np.int64)
        c = np.array([country])
        logit = w.static_logits(u, flat[None, :], np.array([device]), at, c)[0]
        prev = np.where(flat >= 0, w.prev_episode[np.maximum(flat, 0)], -1)
        st = self.log.state(user, at_us, flat, prev)
        logit = logit + w.state_logits(flat, st, np.array(at_us, dtype=np.int64))
        ok = w.available_mask(u, flat[None, :], at, c)[0]
        return np.where(ok, _sigmoid(logit.astype(np.float64)), 0.0).reshape(np.shape(titles))

    # ----- the API -------------------------------------------------------------------------------

    def play_probability(
        self, user_id: str, ctx: RequestContext, title_ids: list[str] | np.ndarray
    ) -> np.ndarray:
        """Each title's true probability of being played if the user looks at it in `ctx`:
        float64 in [0, 1]; 0 for unknown, unavailable (country, not yet added) or too mature."""
        u, d, at, c = self._request(user_id, ctx)
        return self.attraction_idx(u, d, at, c, self.title_indices(list(title_ids)))

    def _page_matrix(
        self, user_id: str, ctx: RequestContext, rows: list[list[str]]
    ) -> tuple[np.ndarray, float]:
        """(R, C) attraction of the page inside the viewport; repeats and hidden slots are 0."""
        lay = DEFAULT_LAYOUTS[ctx.device]
        n_rows = len(rows)
        n_cols = max((len(r) for r in rows), default=0)
        ids = np.full((n_rows, max(n_cols, 1)), -1, dtype=np.int64)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = self.title_indices(list(row))
        vis = ids.copy()
        vis[lay.visible_rows :, :] = -1
        vis[:, lay.visible_titles :] = -1
        flat = vis.reshape(-1)
        # Repeats after their first appearance in scan order (row-major) count zero.
        seen = np.zeros(flat.shape, dtype=bool)
        valid = np.flatnonzero(flat >= 0)
        _, first = np.unique(flat[valid], return_index=True)
        seen[valid] = True
        seen[valid[first]] = False
        flat[seen] = -1
        u, d, at, c = self._request(user_id, ctx)
        a = self.attraction_idx(u, d, at, c, flat).reshape(ids.shape)
        beta = self.world.params.col_continue[d]
        return a, beta

    def page_play_probabilities(
        self, user_id: str, ctx: RequestContext, rows: list[list[str]]
    ) -> list[np.ndarray]:
        """Per-position probability that the play lands there, under the browsing model
        (examination x attraction) on `ctx.device`'s viewport; one float64 array per row."""
        if not rows:
            return []
        a, beta = self._page_matrix(user_id, ctx, rows)
        p = page_play_probs(a[None], np.array([beta]), self.world.params.row_stop)[0]
        return [p[r, : len(row)].copy() for r, row in enumerate(rows)]

    def expected_plays(self, user_id: str, ctx: RequestContext, rows: list[list[str]]) -> float:
        """The page's take-rate: probability that the session ends in a play from the page."""
        return float(sum(p.sum() for p in self.page_play_probabilities(user_id, ctx, rows)))

    def simulate_response(
        self,
        user_id: str,
        ctx: RequestContext,
        rows: list[list[str]],
        rng: np.random.Generator,
    ) -> tuple[int, int] | None:
        """One draw of the browsing model: (row, position) of the play, or None."""
        if not rows:
            return None
        a, beta = self._page_matrix(user_id, ctx, rows)
        lay = DEFAULT_LAYOUTS[ctx.device]
        a = a[: lay.visible_rows, : lay.visible_titles]  # nothing outside is looked at
        r, c, _ = browse(a[None], np.array([beta]), self.world.params.row_stop, rng)
        return None if r[0] < 0 else (int(r[0]), int(c[0]))

    def oracle_page(
        self, user_id: str, ctx: RequestContext, layout: DeviceLayout
    ) -> list[list[str]]:
        """The best page under the true model within `layout` (docs/simulation.md, "Oracle").

        The visible viewport holds the top-K titles by true play probability (K = visible
        slots), placed by `_best_assignment`; the rest of the page (outside the viewport, where
        nothing is looked at) carries the next titles by play probability.
        """
        w = self.world
        u, d, at, c = self._request(user_id, ctx)
        a = self.attraction_idx(u, d, at, c, np.arange(w.n_titles))
        n_vis_rows = min(layout.visible_rows, layout.rows)
        n_vis_cols = min(layout.visible_titles, layout.titles_per_row)
        total = layout.rows * layout.titles_per_row
        playable = int((a > 0).sum())
        need = min(total, w.n_titles)
        top = np.argpartition(-a, need - 1)[:need] if need < w.n_titles else np.arange(w.n_titles)
        top = top[np.lexsort((top, -a[top]))]  # by probability, ties by index
        k = min(n_vis_rows * n_vis_cols, playable)
        grid = _best_assignment(
            a[top[:k]], n_vis_rows, n_vis_cols, w.params.col_continue[d], w.params.row_stop
        )
        pos = iter(top[k:].tolist())
        page: list[list[str]] = []
        for r in range(layout.rows):
            row: list[int] = []
            if r < n_vis_rows:
                row = [int(top[i]) for i in grid[r] if i >= 0]
            while len(row) < layout.titles_per_row:
                nxt = next(pos, None)
                if nxt is None:
                    break
                row.append(nxt)
            if row:
                page.append([str(w.title_ids[t]) for t in row])
        return page


def _best_assignment(
    a_sorted: np.ndarray, n_rows: int, n_cols: int, beta: float, row_stop: float
) -> np.ndarray:
    """Place K titles (attraction sorted descending) into an n_rows x n_cols viewport.

    Exact parts (exchange arguments, docs/simulation.md): inside a row, descending attraction is
    optimal; rows in descending order of their in-row play probability are optimal; the top-K
    titles are the right set (the take-rate rises with every attraction). The split of titles
    into rows is searched over a one-parameter family: slots ranked by rho^r * beta^c, titles
    dealt in that order (rho = 0 row-major, rho = 1 column-major); the best of the family wins.
    Returns (n_rows, n_cols) indices into a_sorted, -1 = empty.
    """
    k = len(a_sorted)
    if k == 0:
        return np.full((n_rows, n_cols), -1, dtype=np.int64)
    n_fam = len(_ORACLE_RHOS)
    # Deal the titles into the slots in each family member's slot order (all at once).
    order = _slot_orders(n_rows, n_cols, beta)  # (F, R*C)
    grid: np.ndarray = np.full((n_fam, n_rows * n_cols), -1, dtype=np.int64)
    np.put_along_axis(grid, order[:, :k], np.broadcast_to(np.arange(k), (n_fam, k)), axis=1)
    grid = grid.reshape(n_fam, n_rows, n_cols)
    # Inside a row: descending attraction = ascending index (empty slots last).
    grid = np.sort(np.where(grid >= 0, grid, k + np.arange(n_cols)), axis=2)
    grid = np.where(grid >= k, -1, grid)
    att = np.where(grid >= 0, a_sorted[np.maximum(grid, 0)], 0.0)
    # Rows by in-row play probability, descending.
    survive = np.cumprod(
        np.concatenate([np.ones((n_fam, n_rows, 1)), 1.0 - att[:, :, :-1]], axis=2), axis=2
    )
    row_p = (survive * beta ** np.arange(n_cols) * att).sum(axis=2)
    rows = np.argsort(-row_p, axis=1, kind="stable")
    grid = np.take_along_axis(grid, rows[:, :, None], axis=1)
    att = np.take_along_axis(att, rows[:, :, None], axis=1)
    value = page_play_probs(att, np.full(n_fam, beta), row_stop).sum(axis=(1, 2))
    return grid[int(np.argmax(value))]  # first best: ties go to the more row-major fill


@lru_cache(maxsize=64)
def _slot_orders(n_rows: int, n_cols: int, beta: float) -> np.ndarray:
    """Slot visiting order per family member: by rho^r * beta^c descending, row-major ties."""
    r_idx, c_idx = np.divmod(np.arange(n_rows * n_cols), n_cols)
    out = np.empty((len(_ORACLE_RHOS), n_rows * n_cols), dtype=np.int64)
    for i, rho in enumerate(_ORACLE_RHOS.tolist()):
        if rho == 0:
            out[i] = np.arange(n_rows * n_cols)
        else:
            score = r_idx * np.log(rho) + c_idx * np.log(max(beta, 1e-9))
            out[i] = np.lexsort((r_idx, -score))
    return out
