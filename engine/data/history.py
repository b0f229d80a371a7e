"""History: a dataset as of a cut-off, turned into dense numpy arrays that rankers fit on and
the page path reads. Titles and users get integer indices; plays are sorted by (user, ts).

Built once per fit, saved once per model directory (numpy `.npz` without pickle plus JSON), and
handed to every ranker, so no ranker keeps its own copy of anyone's plays.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import orjson
import polars as pl

from engine.data.columns import DEVICES, TITLE_KINDS, Col
from engine.data.dataset import Dataset, to_utc
from engine.errors import ModelLoadError

# What reading a saved history can raise: a cut or damaged .npz gives BadZipFile or EOFError,
# which are not OSError.
_UNREADABLE = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, orjson.JSONDecodeError)

# A play that reached this far counts as finished: such titles leave most rows.
FINISHED_PROGRESS = 0.9
HISTORY_VERSION = 1
US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch, UTC: the time unit of every array here."""
    return int(to_utc(ts).timestamp() * 1_000_000)


@dataclass(frozen=True, eq=False)
class History:
    """Everything known before `cutoff_us`, as arrays indexed by title and user position."""

    cutoff_us: int
    # titles
    title_ids: np.ndarray  # str, index -> external id
    title_names: np.ndarray  # str
    title_kind: np.ndarray  # int8, index into TITLE_KINDS
    genre_names: tuple[str, ...]
    title_genres: np.ndarray  # bool (n_titles, n_genres)
    release_year: np.ndarray  # float32, nan = unknown
    duration_min: np.ndarray  # float32, nan = unknown
    maturity: np.ndarray  # int8
    title_countries: tuple[tuple[str, ...], ...]  # empty = available everywhere
    added_us: np.ndarray  # int64
    series: np.ndarray  # int32 series number, -1 = not an episode
    episode: np.ndarray  # int32, -1 = none
    # users
    user_ids: np.ndarray  # str
    user_country: np.ndarray  # str ("" = unknown)
    user_maturity_max: np.ndarray  # int8
    user_created_us: np.ndarray  # int64
    # plays, sorted by (user, ts); user u's plays are [user_offsets[u], user_offsets[u+1])
    play_user: np.ndarray  # int32
    play_title: np.ndarray  # int32
    play_ts: np.ndarray  # int64 us
    play_device: np.ndarray  # int8, index into DEVICES, -1 = unknown
    play_progress: np.ndarray  # float32
    play_seconds: np.ndarray  # float32
    user_offsets: np.ndarray  # int64 (n_users + 1)
    _title_index: dict[str, int] = field(default_factory=dict, repr=False)
    _user_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._title_index.update({t: i for i, t in enumerate(self.title_ids.tolist())})
        self._user_index.update({u: i for i, u in enumerate(self.user_ids.tolist())})

    @property
    def n_titles(self) -> int:
        return len(self.title_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def live_member(self) -> int:
        """The user index whose plays include live events (a member-local History of
        engine.events); -1 for a model's snapshot. Rankers that precompute per-member state at
        fit time compute it for this member from the play arrays instead."""
        return -1

    def title_index(self, title_id: str) -> int:
        """Position of a title, -1 when unknown."""
        return self._title_index.get(title_id, -1)

    def user_index(self, user_id: str) -> int:
        """Position of a user, -1 when unknown (a cold-start user)."""
        return self._user_index.get(user_id, -1)

    def user_plays(self, user: int) -> slice:
        """Slice into the play arrays for one user (empty for -1)."""
        if user < 0:
            return slice(0, 0)
        return slice(int(self.user_offsets[user]), int(self.user_offsets[user + 1]))

    def user_plays_before(self, user: int, at_us: int) -> slice:
        """The user's plays strictly before `at_us` (a request at a past time must not see the
        member's later plays; a user's plays are sorted by time)."""
        s = self.user_plays(user)
        return slice(s.start, s.start + int(np.searchsorted(self.play_ts[s], at_us, side="left")))

    def finished(self, user: int, before_us: int | None = None) -> np.ndarray:
        """Title indices the user has watched to FINISHED_PROGRESS or beyond (before `before_us`
        when given: a request at a past time)."""
        s = self.user_plays(user) if before_us is None else self.user_plays_before(user, before_us)
        done = self.play_progress[s] >= FINISHED_PROGRESS
        return np.unique(self.play_title[s][done])

    @cached_property
    def episodes_in_order(self) -> np.ndarray:
        """Title indices of every episode, by (series, episode number)."""
        idx = np.flatnonzero((self.series >= 0) & (self.episode >= 0))
        return idx[np.lexsort((self.episode[idx], self.series[idx]))]

    @cached_property
    def _country_masks(self) -> dict[str, np.ndarray]:
        everywhere = np.array([len(c) == 0 for c in self.title_countries], dtype=bool)
        masks: dict[str, np.ndarray] = {"": everywhere}
        for i, countries in enumerate(self.title_countries):
            for c in countries:
                masks.setdefault(c, everywhere.copy())[i] = True
        return masks

    def available_in(self, country: str | None) -> np.ndarray:
        """Bool mask of titles available in a country (unknown country: titles with no list)."""
        masks = self._country_masks
        return masks.get(country or "", masks[""])

    # ----- building ---------------------------------------------------------------------------

    @classmethod
    def from_dataset(cls, ds: Dataset, cutoff: datetime | None = None) -> History:
        """Arrays for everything in `ds` strictly before `cutoff` (default: the dataset's clock,
        inclusive of everything)."""
        if cutoff is not None:
            ds = ds.as_of(cutoff)
            cutoff_us = to_us(cutoff)
        else:
            cutoff_us = to_us(ds.clock) + 1
        titles = ds.titles.sort(Col.TITLE_ID)
        users = ds.users.sort(Col.USER_ID)
        title_ids = titles[Col.TITLE_ID].to_numpy().astype(str)
        user_ids = users[Col.USER_ID].to_numpy().astype(str)
        genre_lists = titles[Col.GENRES].to_list()
        genre_names = tuple(sorted({g for gs in genre_lists for g in (gs or [])}))
        gpos = {g: i for i, g in enumerate(genre_names)}
        title_genres = np.zeros((len(title_ids), len(genre_names)), dtype=bool)
        for i, gs in enumerate(genre_lists):
            for g in gs or []:
                title_genres[i, gpos[g]] = True
        if Col.SERIES_ID in titles.columns:
            series_codes = titles[Col.SERIES_ID].cast(pl.Categorical).to_physical()
            series = series_codes.fill_null(-1).to_numpy().astype(np.int32)
        else:
            series = np.full(len(title_ids), -1, dtype=np.int32)
        if Col.EPISODE in titles.columns:
            episode = titles[Col.EPISODE].fill_null(-1).to_numpy().astype(np.int32)
        else:
            episode = np.full(len(title_ids), -1, dtype=np.int32)

        tindex = pl.DataFrame(
            {Col.TITLE_ID: title_ids, "t": np.arange(len(title_ids), dtype=np.int32)}
        )
        uindex = pl.DataFrame(
            {Col.USER_ID: user_ids, "u": np.arange(len(user_ids), dtype=np.int32)}
        )
        device_codes = pl.DataFrame(
            {Col.DEVICE: list(DEVICES), "d": np.arange(len(DEVICES), dtype=np.int8)}
        )
        plays = (
            ds.plays.join(tindex, on=Col.TITLE_ID, how="inner")
            .join(uindex, on=Col.USER_ID, how="inner")
            .join(device_codes, on=Col.DEVICE, how="left")
            .sort(["u", Col.TS, "t"])
        )
        play_user = plays["u"].to_numpy().astype(np.int32)
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(play_user, minlength=len(user_ids)), out=offsets[1:])
        return cls(
            cutoff_us=cutoff_us,
            title_ids=title_ids,
            title_names=titles[Col.NAME].to_numpy().astype(str),
            title_kind=titles[Col.KIND]
            .replace_strict(list(TITLE_KINDS), list(range(len(TITLE_KINDS))), return_dtype=pl.Int8)
            .to_numpy(),
            genre_names=genre_names,
            title_genres=title_genres,
            release_year=titles[Col.RELEASE_YEAR].cast(pl.Float32).fill_null(np.nan).to_numpy(),
            duration_min=titles[Col.DURATION_MIN].cast(pl.Float32).fill_null(np.nan).to_numpy(),
            maturity=titles[Col.MATURITY].cast(pl.Int8).to_numpy(),
            title_countries=tuple(tuple(c or ()) for c in titles[Col.COUNTRIES].to_list()),
            added_us=_us(titles[Col.ADDED_AT]),
            series=series,
            episode=episode,
            user_ids=user_ids,
            user_country=users[Col.COUNTRY].fill_null("").to_numpy().astype(str),
            user_maturity_max=users[Col.MATURITY_MAX].cast(pl.Int8).to_numpy(),
            user_created_us=_us(users[Col.CREATED_AT]),
            play_user=play_user,
            play_title=plays["t"].to_numpy().astype(np.int32),
            play_ts=_us(plays[Col.TS]),
            play_device=plays["d"].fill_null(-1).to_numpy().astype(np.int8),
            play_progress=plays[Col.PROGRESS].cast(pl.Float32).to_numpy(),
            play_seconds=plays[Col.SECONDS_WATCHED].cast(pl.Float32).to_numpy(),
            user_offsets=offsets,
        )

    # ----- saving: npz without pickle + JSON for the ragged parts ------------------------------

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "title_ids",
        "title_names",
        "title_kind",
        "title_genres",
        "release_year",
        "duration_min",
        "maturity",
        "added_us",
        "series",
        "episode",
        "user_ids",
        "user_country",
        "user_maturity_max",
        "user_created_us",
        "play_user",
        "play_title",
        "play_ts",
        "play_device",
        "play_progress",
        "play_seconds",
        "user_offsets",
    )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        # Fixed-width unicode, never object arrays: loadable with allow_pickle=False.
        arrays = {k: (v.astype(str) if v.dtype.kind in "OU" else v) for k, v in arrays.items()}
        np.savez(directory / "history.npz", **arrays)
        meta = {
            "version": HISTORY_VERSION,
            "cutoff_us": self.cutoff_us,
            "genre_names": list(self.genre_names),
            "title_countries": [list(c) for c in self.title_countries],
        }
        (directory / "history.json").write_bytes(orjson.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> History:
        try:
            meta = orjson.loads((directory / "history.json").read_bytes())
            # Our own handle: np.load leaks the one it opens when the zip is unreadable.
            with (
                (directory / "history.npz").open("rb") as f,
                np.load(f, allow_pickle=False) as npz,
            ):
                arrays = {name: npz[name] for name in cls._ARRAYS}
        except _UNREADABLE as exc:
            raise ModelLoadError(f"cannot read the history in {directory}: {exc}") from exc
        if meta.get("version") != HISTORY_VERSION:
            raise ModelLoadError(
                f"{directory}/history.json has version {meta.get('version')}, this rowrank reads "
                f"version {HISTORY_VERSION}: retrain with `rowrank train`."
            )
        return cls(
            cutoff_us=int(meta["cutoff_us"]),
            genre_names=tuple(meta["genre_names"]),
            title_countries=tuple(tuple(c) for c in meta["title_countries"]),
            **arrays,
        )


def keep_plays(history: History, keep: np.ndarray, cutoff_us: int | None = None) -> History:
    """The same History (titles and users kept) with only the plays where `keep` is True; the
    cut-off stays unless `cutoff_us` is given."""
    play_user = history.play_user[keep]
    offsets = np.zeros(history.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(play_user, minlength=history.n_users), out=offsets[1:])
    return replace(
        history,
        cutoff_us=history.cutoff_us if cutoff_us is None else cutoff_us,
        play_user=play_user,
        play_title=history.play_title[keep],
        play_ts=history.play_ts[keep],
        play_device=history.play_device[keep],
        play_progress=history.play_progress[keep],
        play_seconds=history.play_seconds[keep],
        user_offsets=offsets,
        _title_index={},
        _user_index={},
    )


def truncate_history(history: History, cut_us: int) -> History:
    """The same History with only the plays strictly before `cut_us` (titles and users kept):
    used to carve a validation period out of the training period."""
    return keep_plays(history, history.play_ts < cut_us, int(cut_us))


def drop_last_plays(history: History, drop_last: int) -> tuple[History, np.ndarray]:
    """The History without each member's last `drop_last` plays, and a mask over the original
    plays of what was dropped: a member-held-out split inside the training data."""
    n_u = np.diff(history.user_offsets)
    pos = np.arange(len(history.play_user)) - history.user_offsets[history.play_user]
    dropped = pos >= (n_u - drop_last)[history.play_user]
    return keep_plays(history, ~dropped), dropped


def _us(series: pl.Series) -> np.ndarray:
    return series.dt.cast_time_unit("us").dt.epoch("us").fill_null(0).to_numpy().astype(np.int64)
