"""Page-model features: declared once here (name, scope, dtype, default), computed here.

Two feature sets, one per LightGBM model:
- TITLE_FEATURES score one (row, title) pair: the within-row title order.
- ROW_FEATURES score one row at one stage of the page assembly: the row order.

Everything a feature reads comes from a `FeatureStore`: statistics fitted on a `History` (and on
the impressions logged before the same cut-off; engine.request.feature_fit), so features are
point-in-time by construction; the only request-time inputs are the request itself and the
rankers' rows. The same vectorized
code computes the features of one request (the page path, numpy fancy indexing) and of a whole
training window (many requests in one batch), so training and serving cannot drift apart.

Context x title interactions (mobile -> short titles, late night -> thrillers, daytime -> kids)
reach the model two ways: raw context features next to raw title features in the same trees,
and "lift" features measured in the history (how much more than usual this title and its genres
are played on this device / at this time of day).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numba
import numpy as np
import orjson

from engine.data.history import FINISHED_PROGRESS, US_PER_DAY, History
from engine.errors import ModelLoadError

Scope = Literal[
    "context", "user", "title", "context_title", "user_title", "row", "placement", "position"
]
Dtype = Literal["float", "int", "category"]

FEATURE_STORE_VERSION = 3
N_DAYPARTS = 6  # 4-hour buckets of the local hour: 0-3, 4-7, ..., 20-23
N_GENRE_FLAGS = 12  # the most played genres get a 0/1 feature each (title_genre_00 ...)
# Smoothing of rates: a rate with n observations is pulled toward its prior with weight PRIOR_N.
PRIOR_N = 20.0


@dataclass(frozen=True)
class Feature:
    """One declared feature. `default` is its value when the entity is unknown (NaN = missing,
    which LightGBM routes on its own); `context` marks features that read the request context
    (device, time, country): the set removed in the no-context ablation."""

    name: str
    scope: Scope
    dtype: Dtype
    default: float
    context: bool
    doc: str


def _f(
    name: str, scope: Scope, doc: str, dtype: Dtype = "float", default: float = np.nan
) -> Feature:
    return Feature(name, scope, dtype, default, scope in ("context", "context_title"), doc)


def _fc(name: str, scope: Scope, doc: str, dtype: Dtype = "float") -> Feature:
    """A feature of another scope that also reads the context (e.g. the user's device mix)."""
    return Feature(name, scope, dtype, np.nan, True, doc)


CONTEXT_FEATURES: tuple[Feature, ...] = (
    _f("ctx_device", "context", "device code (engine.data.columns.DEVICES)", "category"),
    _f("ctx_hour", "context", "local hour of the request, 0-23", "int"),
    _f("ctx_weekend", "context", "1 on Saturday and Sunday", "int"),
    _f("ctx_country", "context", "country code (vocabulary in the store), -1 unknown", "category"),
)

USER_FEATURES: tuple[Feature, ...] = (
    _f("user_log_plays", "user", "log1p of the member's plays", default=0.0),
    _f("user_tenure_days", "user", "days since the member joined"),
    _f("user_plays_7d", "user", "plays in the 7 days before the cut-off", default=0.0),
    _f("user_days_since_play", "user", "days from the last play to the request"),
    _f("user_mean_progress", "user", "mean progress of the member's plays"),
    _fc("user_device_share", "user", "share of the member's plays on the request's device"),
    _fc("user_daypart_share", "user", "share of the member's plays in the request's daypart"),
)

TITLE_ONLY_FEATURES: tuple[Feature, ...] = (
    _f("title_kind", "title", "engine.data.columns.TITLE_KINDS code", "category"),
    _f("title_duration_min", "title", "running time in minutes"),
    _f("title_age_days", "title", "days since the title was added, at the request"),
    _f("title_release_age", "title", "years since release, at the request"),
    _f("title_maturity", "title", "minimum viewer age", "int"),
    _f("title_n_genres", "title", "number of genres", "int"),
    _f("title_pop_1d", "title", "log1p plays in the last day before the cut-off", default=0.0),
    _f("title_pop_7d", "title", "log1p plays in the last 7 days", default=0.0),
    _f("title_pop_28d", "title", "log1p plays in the last 28 days", default=0.0),
    _f("title_trend", "title", "log of (7 x plays last day + 1) / (plays last 7 days + 1)"),
    _f("title_completion", "title", "mean progress of the title's plays"),
    _f("title_episode", "title", "episode number (NaN: not an episode)"),
    _fc("title_pop_country_1d", "title", "log1p plays in the request's country, last day"),
    _fc("title_pop_country_7d", "title", "log1p plays in the request's country, last 7 days"),
    *(
        _f(f"title_genre_{i:02d}", "title", f"1 if the title has the #{i} most played genre", "int")
        for i in range(N_GENRE_FLAGS)
    ),
)

CONTEXT_TITLE_FEATURES: tuple[Feature, ...] = (
    _f("ct_title_device_lift", "context_title", "title's share of plays on this device / base"),
    _f("ct_title_daypart_lift", "context_title", "title's share of plays in this daypart / base"),
    _f("ct_genre_device_lift", "context_title", "same for the title's genres (mean)"),
    _f("ct_genre_daypart_lift", "context_title", "same for the title's genres (mean)"),
    _f("ct_genre_weekend_lift", "context_title", "genres' share on this kind of day / base"),
)

USER_TITLE_FEATURES: tuple[Feature, ...] = (
    _f("ut_pvr_score", "user_title", "the PVR ranker's score of the title for the member"),
    _f("ut_pvr_rel", "user_title", "PVR score / the member's best PVR score"),
    _f("ut_genre_affinity", "user_title", "cosine of member's decayed genre mix and the title's"),
    _f("ut_recent_sim", "user_title", "cosine of the genres of the last 10 plays and the title's"),
    _f("ut_progress", "user_title", "progress of the member's last play of the title", default=0),
    _f("ut_plays", "user_title", "times the member played the title", default=0.0),
    _f("ut_days_since_play", "user_title", "days since the member last played the title"),
    _f("ut_shown_no_play", "user_title", "times shown to the member without a play", default=0),
    _f("ut_max_progress", "user_title", "furthest progress the member reached", default=0.0),
    _f("ut_prev_finished", "user_title", "episode > 1: 1 if the member finished the previous one"),
    _f("ut_prev_days", "user_title", "episode > 1: days since the member played the previous one"),
    _fc("ut_duration_ratio", "user_title", "duration / member's mean on this device"),
)

ROW_PAIR_FEATURES: tuple[Feature, ...] = (
    _f("row_kind", "row", "row kind code (vocabulary in the store)", "category"),
    _f("row_ranker", "row", "ranker instance code (config order)", "category"),
    _f("row_score", "row", "the ranker's score of the title in this row"),
    _f("row_score_rel", "row", "that score / the row's top score"),
    _f("row_rank", "row", "the title's rank in the ranker's row (0 = first)", "int"),
    _f("row_len", "row", "titles in the row after filters", "int"),
)

TITLE_FEATURES: tuple[Feature, ...] = (
    *CONTEXT_FEATURES,
    *USER_FEATURES,
    *TITLE_ONLY_FEATURES,
    *CONTEXT_TITLE_FEATURES,
    *USER_TITLE_FEATURES,
    *ROW_PAIR_FEATURES,
)

# Aggregates over a row's visible titles (its first `visible_titles`, in the within-row order).
_ROW_AGG_SOURCES: tuple[tuple[str, str], ...] = (
    ("agg_pop_7d", "title_pop_7d"),
    ("agg_duration", "title_duration_min"),
    ("agg_age_days", "title_age_days"),
    ("agg_pvr", "ut_pvr_score"),
    ("agg_genre_affinity", "ut_genre_affinity"),
    ("agg_recent_sim", "ut_recent_sim"),
    ("agg_progress", "ut_progress"),
    ("agg_plays", "ut_plays"),
    ("agg_shown_no_play", "ut_shown_no_play"),
    ("agg_genre_device_lift", "ct_genre_device_lift"),
    ("agg_genre_daypart_lift", "ct_genre_daypart_lift"),
)

ROW_FEATURES: tuple[Feature, ...] = (
    *CONTEXT_FEATURES,
    *USER_FEATURES,
    _f("row_kind", "row", "row kind code", "category"),
    _f("row_ranker", "row", "ranker instance code", "category"),
    _f("row_len", "row", "titles in the row", "int"),
    _f("row_top_score", "row", "the ranker's top score in the row"),
    _f("rs_top", "row", "within-row model: best title score"),
    _f("rs_mean_visible", "row", "within-row model: mean score of the visible titles"),
    _fc(
        "rs_play_est",
        "row",
        "P(a play in the row | reached): the visible titles' title-model probabilities "
        "through a left-to-right cascade with the device's column decay",
    ),
    *(
        Feature(
            name,
            "row",
            "float",
            np.nan,
            src in {f.name for f in TITLE_FEATURES if f.context},
            f"mean {src} over the visible titles",
        )
        for name, src in _ROW_AGG_SOURCES
    ),
    _f("re_user_kind_shown", "row", "log1p titles of this kind shown to the member", default=0),
    _f("re_user_kind_rate", "row", "member's play rate on this row kind (smoothed)"),
    _fc("re_user_kind_device_rate", "row", "member's play rate on this kind on this device"),
    _fc("re_user_kind_daypart_rate", "row", "member's play rate on this kind in this daypart"),
    _fc("re_kind_device_rate", "row", "everyone's play rate on this kind on this device"),
    _fc("re_kind_daypart_rate", "row", "everyone's play rate on this kind in this daypart"),
    _f("pl_overlap_above", "placement", "share of visible titles already on rows above"),
    _f("pl_genre_sim_above", "placement", "max genre cosine with a row above", default=0.0),
    _f("pl_same_kind_above", "placement", "rows of the same kind above", "int", default=0.0),
)

FEATURE_SETS: dict[str, tuple[Feature, ...]] = {"title": TITLE_FEATURES, "row": ROW_FEATURES}

# Training-only: where the logged item was shown (0-based). Appended last when the page config
# handles position bias with a feature; at serving it is the constant 0 (the first slot), so
# every candidate is scored as if shown where it is seen for sure (docs/page_model.md).
_POS_COL = Feature("pos_col", "position", "int", 0.0, False, "column shown at (training)")
_POS_ROW = Feature("pos_row", "position", "int", 0.0, False, "row shown at (training)")
POSITION_FEATURES: dict[str, tuple[Feature, ...]] = {
    "title": (_POS_COL, _POS_ROW),
    "row": (_POS_ROW,),
}


def feature_names(model: str, *, context: bool = True, position: bool = False) -> list[str]:
    """The declared feature order of one model ("title" or "row"); without `context`, the
    features that read the request context are left out (the ablation); with `position`, the
    training-only position feature comes last."""
    names = [f.name for f in FEATURE_SETS[model] if context or not f.context]
    return [*names, *(f.name for f in POSITION_FEATURES[model])] if position else names


def categorical_names(model: str) -> list[str]:
    return [f.name for f in FEATURE_SETS[model] if f.dtype == "category"]


def has_position_feature(model: str, saved: Sequence[str]) -> bool:
    pos = [f.name for f in POSITION_FEATURES[model]]
    return list(saved[-len(pos) :]) == pos


def check_feature_order(model: str, saved: Sequence[str], *, context: bool, where: str) -> None:
    """Raise ModelLoadError unless `saved` is exactly this rowrank's declared order."""
    want = feature_names(model, context=context, position=has_position_feature(model, saved))
    if list(saved) == want:
        return
    missing = [n for n in want if n not in saved]
    extra = [n for n in saved if n not in want]
    if missing or extra:
        detail = f"missing {missing[:5]}, unexpected {extra[:5]}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(saved, want, strict=True)) if a != b)
        detail = f"position {i} holds {saved[i]!r}, expected {want[i]!r}"
    raise ModelLoadError(
        f"{where}: the {model} model was trained with a different feature order ({detail}): "
        "retrain it with this rowrank version (`rowrank train`)."
    )


def daypart(hour: np.ndarray | int) -> np.ndarray:
    return np.asarray(hour) // (24 // N_DAYPARTS)


# ----- request and pair batches ---------------------------------------------------------------


@dataclass(frozen=True)
class Requests:
    """R page requests as arrays (one request on the page path, thousands in training)."""

    user: np.ndarray  # int32 History user index, -1 = unknown member
    device: np.ndarray  # int8 DEVICES code
    hour: np.ndarray  # int8 local hour
    weekend: np.ndarray  # int8 0/1
    country: np.ndarray  # int16 store country code, -1 unknown
    at_us: np.ndarray  # int64 request time

    def take(self, i: int) -> Requests:
        """Request i alone."""
        return Requests(
            self.user[i : i + 1],
            self.device[i : i + 1],
            self.hour[i : i + 1],
            self.weekend[i : i + 1],
            self.country[i : i + 1],
            self.at_us[i : i + 1],
        )


@dataclass(frozen=True)
class Pairs:
    """P (row, title) pairs of candidate rows; `req` points into Requests."""

    req: np.ndarray  # int32
    title: np.ndarray  # int32 History title index
    kind: np.ndarray  # int16 store kind code, -1 unknown
    ranker: np.ndarray  # int16 ranker code, -1 unknown
    score: np.ndarray  # float32 ranker score (NaN when the ranker did not propose the title)
    score_rel: np.ndarray  # float32
    rank: np.ndarray  # float32 rank in the ranker's row (NaN when not proposed)
    row_len: np.ndarray  # float32
    pvr: np.ndarray  # float32 PVR score (NaN when unknown)
    pvr_rel: np.ndarray  # float32


# ----- the store ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FeatureStore:
    """Everything features read, fitted as of one cut-off (`History.cutoff_us`) by
    engine.request.feature_fit.fit_feature_store; saved beside the model, read per request."""

    cutoff_us: int
    countries: tuple[str, ...]
    kinds: tuple[str, ...]
    rankers: tuple[str, ...]
    genre_flags: np.ndarray  # int32 (N_GENRE_FLAGS,) History genre index per flag, -1 = none
    # titles
    title_pop: np.ndarray  # float32 (n_titles, 3): log1p plays 1d, 7d, 28d
    country_pop: np.ndarray  # float32 (n_countries, n_titles, 2): log1p plays 1d, 7d
    prev_title: np.ndarray  # int32: the previous episode of the same series, -1 none
    title_completion: np.ndarray  # float32
    title_device_lift: np.ndarray  # float32 (n_titles, n_devices)
    title_daypart_lift: np.ndarray  # float32 (n_titles, N_DAYPARTS)
    genre_device_lift: np.ndarray  # float32 (n_titles, n_devices): mean over the title's genres
    genre_daypart_lift: np.ndarray  # float32 (n_titles, N_DAYPARTS)
    genre_weekend_lift: np.ndarray  # float32 (n_titles, 2)
    title_genre_unit: np.ndarray  # float32 (n_titles, n_genres), rows of unit length (or 0)
    # users
    user_country: np.ndarray  # int16 country code
    user_stats: np.ndarray  # float32 (n_users, 4): log plays, plays 7d, last play us, mean prog
    user_device_share: np.ndarray  # float32 (n_users, n_devices)
    user_daypart_share: np.ndarray  # float32 (n_users, N_DAYPARTS)
    user_device_duration: np.ndarray  # float32 (n_users, n_devices): mean minutes, NaN none
    user_genre: np.ndarray  # float32 (n_users, n_genres): decayed mix, unit length
    user_recent_genre: np.ndarray  # float32 (n_users, n_genres): last plays, unit length
    # (user, title) pairs, as sorted keys user * n_titles + title
    ut_keys: np.ndarray  # int64 sorted
    ut_values: np.ndarray  # float64 (k, 4): last progress, plays, last play (days), max progress
    shown_keys: np.ndarray  # int64 sorted
    shown_counts: np.ndarray  # float32 times shown without a play
    # row-kind engagement from impressions: [..., 0] shown, [..., 1] played
    user_kind: np.ndarray  # float32 (n_users, n_kinds, 2)
    user_kind_device: np.ndarray  # float32 (n_users, n_kinds, n_devices, 2)
    user_kind_daypart: np.ndarray  # float32 (n_users, n_kinds, N_DAYPARTS, 2)
    kind_device: np.ndarray  # float32 (n_kinds, n_devices, 2)
    kind_daypart: np.ndarray  # float32 (n_kinds, N_DAYPARTS, 2)
    col_decay: np.ndarray  # float64 (n_devices,): play rate ratio of column c+1 to column c
    # from History, kept by reference (not saved: the History is saved beside the store)
    title_kind: np.ndarray
    duration_min: np.ndarray
    added_us: np.ndarray
    release_year: np.ndarray
    maturity: np.ndarray
    title_n_genres: np.ndarray
    title_episode: np.ndarray
    user_created_us: np.ndarray
    n_titles: int

    _SAVED: ClassVar[tuple[str, ...]] = (
        "genre_flags",
        "title_pop",
        "country_pop",
        "prev_title",
        "title_completion",
        "title_device_lift",
        "title_daypart_lift",
        "genre_device_lift",
        "genre_daypart_lift",
        "genre_weekend_lift",
        "title_genre_unit",
        "user_country",
        "user_stats",
        "user_device_share",
        "user_daypart_share",
        "user_device_duration",
        "user_genre",
        "user_recent_genre",
        "ut_keys",
        "ut_values",
        "shown_keys",
        "shown_counts",
        "user_kind",
        "user_kind_device",
        "user_kind_daypart",
        "kind_device",
        "kind_daypart",
        "col_decay",
    )

    # ----- saving ------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """`features.npz` (no pickle) + `features.json`; the History is saved separately."""
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "features.npz", **{k: getattr(self, k) for k in self._SAVED})
        meta = {
            "version": FEATURE_STORE_VERSION,
            "cutoff_us": self.cutoff_us,
            "countries": list(self.countries),
            "kinds": list(self.kinds),
            "rankers": list(self.rankers),
        }
        (directory / "features.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, directory: Path, history: History) -> FeatureStore:
        try:
            meta = orjson.loads((directory / "features.json").read_bytes())
            # Our own handle: np.load leaks the one it opens when the zip is unreadable.
            with (
                (directory / "features.npz").open("rb") as f,
                np.load(f, allow_pickle=False) as npz,
            ):
                arrays = {k: npz[k] for k in cls._SAVED}
        except (
            OSError,
            KeyError,
            ValueError,
            EOFError,
            zipfile.BadZipFile,
            orjson.JSONDecodeError,
        ) as exc:
            raise ModelLoadError(f"cannot read the feature store in {directory}: {exc}") from exc
        if meta.get("version") != FEATURE_STORE_VERSION:
            raise ModelLoadError(
                f"{directory}/features.json has version {meta.get('version')}, this rowrank reads "
                f"{FEATURE_STORE_VERSION}: retrain with `rowrank train`."
            )
        if meta.get("cutoff_us") != history.cutoff_us:
            raise ModelLoadError(
                f"{directory}: the feature store was fitted as of {meta.get('cutoff_us')}, the "
                f"history beside it is as of {history.cutoff_us}: the model directory is mixed up."
            )
        if arrays["title_pop"].shape[0] != history.n_titles or arrays["user_stats"].shape[0] != len(
            history.user_ids
        ):
            raise ModelLoadError(f"{directory}: the feature store does not match the history")
        return cls(
            cutoff_us=int(meta["cutoff_us"]),
            countries=tuple(meta["countries"]),
            kinds=tuple(meta["kinds"]),
            rankers=tuple(meta["rankers"]),
            **arrays,
            **history_refs(history),
        )

    # ----- codes -------------------------------------------------------------------------------

    def country_code(self, country: str | None) -> int:
        if not country:
            return -1
        try:
            return self.countries.index(country)
        except ValueError:
            return -1

    def kind_code(self, kind: str) -> int:
        try:
            return self.kinds.index(kind)
        except ValueError:
            return -1

    def ranker_code(self, ranker: str) -> int:
        try:
            return self.rankers.index(ranker)
        except ValueError:
            return -1

    # ----- the title-model matrix --------------------------------------------------------------

    def title_matrix(self, req: Requests, pairs: Pairs) -> np.ndarray:
        """float32 (P, len(TITLE_FEATURES)) in declared order: one compiled pass over the pairs
        (`_title_rows`), which serves one request (a few thousand pairs) and a training window
        (millions) alike. The two genre dot products stay numpy's: einsum's float32 summation
        order is what the models were trained with."""
        n = len(pairs.title)
        X = np.empty((n, len(TITLE_FEATURES)), dtype=np.float32)
        uk = np.maximum(req.user[pairs.req].astype(np.int64), 0)
        tg = self.title_genre_unit[pairs.title]
        _title_rows(
            X,
            _TITLE_KERNEL_COLUMNS,
            (req.user, req.device, req.hour, req.weekend, req.country, req.at_us),
            (pairs.req, pairs.title, pairs.kind, pairs.ranker, pairs.score, pairs.score_rel),
            (pairs.rank, pairs.row_len, pairs.pvr, pairs.pvr_rel),
            np.einsum("ij,ij->i", self.user_genre[uk], tg),
            np.einsum("ij,ij->i", self.user_recent_genre[uk], tg),
            self._title_arrays,
        )
        _missing_categories(X, _TITLE_CATEGORICAL)
        return X

    @cached_property
    def _title_arrays(self) -> tuple[Any, ...]:
        """The arrays `_title_rows` reads, in its order."""
        pop = self.title_pop
        # log((7 * day + 1) / (week + 1)) from the log1p counts, per title, in float32
        trend = np.log(7 * np.expm1(pop[:, 0]) + 1) - pop[:, 1]
        country_pop = self.country_pop if len(self.country_pop) else np.zeros((0, 0, 2), np.float32)
        user = (
            self.user_stats,
            self.user_created_us,
            self.user_device_share,
            self.user_daypart_share,
            self.user_device_duration,
        )
        title = (
            self.title_kind,
            self.duration_min,
            self.added_us,
            self.release_year,
            self.maturity,
            self.title_n_genres,
            pop,
            trend,
            self.title_completion,
            self.title_episode,
            self.prev_title,
        )
        lifts = (
            self.title_device_lift,
            self.title_daypart_lift,
            self.genre_device_lift,
            self.genre_daypart_lift,
            self.genre_weekend_lift,
        )
        genres = (self.title_genre_unit, self.genre_flags.astype(np.int64))
        seen = (self.ut_keys, self.ut_values, self.shown_keys, self.shown_counts)
        return user, title, (country_pop,), lifts, genres, seen

    # ----- the row-model matrix ----------------------------------------------------------------

    def for_row_examples(self, req: Requests) -> tuple[FeatureStore, Requests, np.ndarray]:
        """What the row model's examples of the requests `req` read (`row_static`, `kinds`), with
        `req`'s members renumbered into it, and the History index of each of its members.

        A training window keeps this instead of its whole store: at a million members each
        window's store holds gigabytes of every member's statistics, and the row examples read
        three arrays of the window's few thousand members. Every other array is left empty, so
        any other use fails loudly."""
        known = req.user >= 0
        # Member 0 stays first: row_static reads index 0 for an unknown member (then masks it).
        users, local = np.unique(np.r_[0, req.user[known]], return_inverse=True)
        user = np.full(len(req.user), -1, dtype=req.user.dtype)
        user[known] = local[1:]
        per_member = ("user_kind", "user_kind_device", "user_kind_daypart")
        kept: dict[str, Any] = {name: getattr(self, name)[users] for name in per_member}
        read = {*per_member, "kind_device", "kind_daypart", "col_decay"}
        emptied: dict[str, Any] = {
            f.name: np.empty((0,) * value.ndim, dtype=value.dtype)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), np.ndarray) and f.name not in read
        }
        return replace(self, **kept, **emptied), replace(req, user=user), users

    def row_static(
        self,
        req: Requests,
        row_req: np.ndarray,
        row_kind: np.ndarray,
        row_ranker: np.ndarray,
        row_len: np.ndarray,
        row_top_score: np.ndarray,
        title_x: np.ndarray,
        title_scores: np.ndarray,
        visible_pairs: np.ndarray,
        visible_row: np.ndarray,
    ) -> np.ndarray:
        """float32 (W, len(ROW_FEATURES)) for W rows, placement columns left NaN.

        `title_x`/`title_scores` are the title-model matrix and scores of all pairs;
        `visible_pairs` indexes the pairs each row shows first (its visible titles, in the
        within-row order) and `visible_row` says which row each belongs to (non-decreasing).

        One compiled pass over the rows and their visible pairs (`_row_columns`): on a page's
        dozen rows, the two dozen numpy calls this took cost more than their arithmetic. The
        transcendental parts (exp, power, log1p) stay numpy's, so the kernel gives the bits the
        models were trained with on any CPU (tests/request/test_features.py holds the numpy formulas
        and compares)."""
        n_rows = len(row_req)
        X = np.full((n_rows, len(ROW_FEATURES)), np.nan, dtype=np.float32)
        if n_rows == 0:
            return X
        vis_scores = title_scores[visible_pairs].astype(np.float64)
        # the cascade's title probabilities and the device's column decay (rs_play_est)
        p = 1.0 / (1.0 + np.exp(-np.clip(vis_scores, -30, 30)))
        width = int(np.bincount(visible_row).max()) if len(visible_row) else 0
        device = req.device[row_req].astype(np.int64)
        decay = self.col_decay[device][:, None] ** np.arange(width)
        user = req.user[row_req].astype(np.int64)
        kind = np.asarray(row_kind, dtype=np.int64)
        shown_log = np.log1p(self.user_kind[np.maximum(user, 0), np.maximum(kind, 0), 0])
        terms = np.zeros((n_rows, width))
        _row_columns(
            X,
            _ROW_KERNEL_COLUMNS,
            (
                user,
                device,
                req.hour[row_req].astype(np.int64),
                req.weekend[row_req].astype(np.int64),
                req.country[row_req].astype(np.int64),
                kind,
            ),
            (
                np.asarray(row_ranker, dtype=np.int64),
                np.asarray(row_len, dtype=np.float64),
                np.asarray(row_top_score, dtype=np.float64),
            ),
            (title_x, vis_scores, p, visible_pairs, visible_row, decay, terms),
            (
                self.user_kind,
                self.user_kind_device,
                self.user_kind_daypart,
                self.kind_device,
                self.kind_daypart,
                shown_log,
            ),
        )
        X[:, _ROW_COL["rs_play_est"]] = terms.sum(axis=1)
        return X


_TITLE_COL: dict[str, int] = {f.name: i for i, f in enumerate(TITLE_FEATURES)}
_ROW_COL: dict[str, int] = {f.name: i for i, f in enumerate(ROW_FEATURES)}
PLACEMENT_SLICE = slice(_ROW_COL["pl_overlap_above"], _ROW_COL["pl_same_kind_above"] + 1)


_TITLE_CATEGORICAL = np.array([i for i, f in enumerate(TITLE_FEATURES) if f.dtype == "category"])
_ROW_CATEGORICAL = np.array([i for i, f in enumerate(ROW_FEATURES) if f.dtype == "category"])


# The columns `_title_rows` writes, in the order it unpacks them (every title feature).
_TITLE_KERNEL_NAMES = (
    "ctx_device", "ctx_hour", "ctx_weekend", "ctx_country",
    "user_log_plays", "user_tenure_days", "user_plays_7d", "user_days_since_play",
    "user_mean_progress", "user_device_share", "user_daypart_share",
    "title_kind", "title_duration_min", "title_age_days", "title_release_age", "title_maturity",
    "title_n_genres", "title_pop_1d", "title_pop_7d", "title_pop_28d", "title_trend",
    "title_completion", "title_episode", "title_pop_country_1d", "title_pop_country_7d",
    "title_genre_00",
    "ct_title_device_lift", "ct_title_daypart_lift", "ct_genre_device_lift",
    "ct_genre_daypart_lift", "ct_genre_weekend_lift",
    "ut_pvr_score", "ut_pvr_rel", "ut_genre_affinity", "ut_recent_sim", "ut_progress",
    "ut_plays", "ut_days_since_play", "ut_shown_no_play", "ut_max_progress",
    "ut_prev_finished", "ut_prev_days", "ut_duration_ratio",
    "row_kind", "row_ranker", "row_score", "row_score_rel", "row_rank", "row_len",
)  # fmt: skip
_TITLE_KERNEL_COLUMNS = tuple(_TITLE_COL[name] for name in _TITLE_KERNEL_NAMES)
_GENRE_FLAG_NAMES = {f"title_genre_{i:02d}" for i in range(N_GENRE_FLAGS)}
if set(_TITLE_COL) != {*_TITLE_KERNEL_NAMES, *_GENRE_FLAG_NAMES}:  # X starts uninitialised
    raise RuntimeError("_title_rows must write every title feature: update _TITLE_KERNEL_NAMES")


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sorted_find(keys, key):
    """Position of `key` in sorted `keys`, or -1 (negative keys are never found)."""
    if key < 0 or len(keys) == 0:
        return -1
    pos = min(np.searchsorted(keys, key), len(keys) - 1)
    return pos if keys[pos] == key else -1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _title_rows(X, cols, req, pair, pair_more, affinity, recent, arrays):
    """Every title feature of each pair (FeatureStore.title_matrix), one pair per pass. The
    arithmetic and its types are those of the numpy expressions the models were first trained
    with: float64 day counts from int64 microseconds, float32 ratios of float32 columns."""
    (
        ctx_device, ctx_hour, ctx_weekend, ctx_country,
        user_log_plays, user_tenure_days, user_plays_7d, user_days_since_play,
        user_mean_progress, user_device_share, user_daypart_share,
        title_kind, title_duration_min, title_age_days, title_release_age, title_maturity,
        title_n_genres, title_pop_1d, title_pop_7d, title_pop_28d, title_trend,
        title_completion, title_episode, title_pop_country_1d, title_pop_country_7d,
        title_genre_00,
        ct_title_device_lift, ct_title_daypart_lift, ct_genre_device_lift,
        ct_genre_daypart_lift, ct_genre_weekend_lift,
        ut_pvr_score, ut_pvr_rel, ut_genre_affinity, ut_recent_sim, ut_progress,
        ut_plays, ut_days_since_play, ut_shown_no_play, ut_max_progress,
        ut_prev_finished, ut_prev_days, ut_duration_ratio,
        row_kind, row_ranker, row_score, row_score_rel, row_rank, row_len,
    ) = cols  # fmt: skip
    r_user, r_device, r_hour, r_weekend, r_country, r_at_us = req
    p_req, p_title, p_kind, p_ranker, p_score, p_score_rel = pair
    p_rank, p_row_len, p_pvr, p_pvr_rel = pair_more
    user, title, (country_pop,), lifts, (genre_unit, genre_flags), seen = arrays
    stats, created_us, device_share, daypart_share, device_duration = user
    kind, duration, added_us, release_year, maturity, n_genres, pop, trend = title[:8]
    completion, episode, prev_title = title[8:]
    t_device_lift, t_daypart_lift, g_device_lift, g_daypart_lift, g_weekend_lift = lifts
    ut_keys, ut_values, shown_keys, shown_counts = seen
    n_titles = len(kind)
    nan = np.nan
    for p in range(len(p_title)):
        r, t = p_req[p], p_title[p]
        u = np.int64(r_user[r])
        known = u >= 0
        uk = u if known else 0
        d = np.int64(r_device[r])
        hour = np.int64(r_hour[r])
        dp = hour // (24 // N_DAYPARTS)
        wk = np.int64(r_weekend[r])
        c = np.int64(r_country[r])
        at_us = r_at_us[r]
        x = X[p]
        x[ctx_device], x[ctx_hour], x[ctx_weekend], x[ctx_country] = d, hour, wk, c
        x[user_log_plays] = stats[uk, 0] if known else 0.0
        x[user_tenure_days] = (at_us - created_us[uk]) / US_PER_DAY if known else nan
        x[user_plays_7d] = stats[uk, 1] if known else 0.0
        x[user_days_since_play] = (at_us - stats[uk, 2]) / US_PER_DAY if known else nan
        x[user_mean_progress] = stats[uk, 3] if known else nan
        x[user_device_share] = device_share[uk, d] if known else nan
        x[user_daypart_share] = daypart_share[uk, dp] if known else nan
        x[title_kind] = kind[t]
        x[title_duration_min] = duration[t]
        x[title_age_days] = (at_us - added_us[t]) / US_PER_DAY
        x[title_release_age] = (1970.0 + at_us / (365.25 * US_PER_DAY)) - release_year[t]
        x[title_maturity], x[title_n_genres] = maturity[t], n_genres[t]
        x[title_pop_1d], x[title_pop_7d], x[title_pop_28d] = pop[t, 0], pop[t, 1], pop[t, 2]
        x[title_trend] = trend[t]
        x[title_completion], x[title_episode] = completion[t], episode[t]
        has_c = c >= 0 and len(country_pop) > 0  # no countries in the data: MovieLens
        x[title_pop_country_1d] = country_pop[c, t, 0] if has_c else nan
        x[title_pop_country_7d] = country_pop[c, t, 1] if has_c else nan
        j = title_genre_00
        for g in genre_flags:  # the flagged genres that exist, first; 0 for the rest
            if g >= 0:
                x[j] = 1.0 if genre_unit[t, g] > 0 else 0.0
                j += 1
        for k in range(j, title_genre_00 + N_GENRE_FLAGS):
            x[k] = 0.0
        x[ct_title_device_lift] = t_device_lift[t, d]
        x[ct_title_daypart_lift] = t_daypart_lift[t, dp]
        x[ct_genre_device_lift] = g_device_lift[t, d]
        x[ct_genre_daypart_lift] = g_daypart_lift[t, dp]
        x[ct_genre_weekend_lift] = g_weekend_lift[t, wk]
        x[ut_pvr_score], x[ut_pvr_rel] = p_pvr[p], p_pvr_rel[p]
        x[ut_genre_affinity] = affinity[p] if known else nan
        x[ut_recent_sim] = recent[p] if known else nan
        hit = _sorted_find(ut_keys, u * n_titles + t)
        day = at_us / US_PER_DAY
        x[ut_progress] = ut_values[hit, 0] if hit >= 0 else 0.0
        x[ut_plays] = ut_values[hit, 1] if hit >= 0 else 0.0
        x[ut_days_since_play] = day - ut_values[hit, 2] if hit >= 0 else nan
        x[ut_max_progress] = ut_values[hit, 3] if hit >= 0 else 0.0
        prev = np.int64(prev_title[t])
        hit_p = _sorted_find(ut_keys, u * n_titles + prev if prev >= 0 and known else -1)
        if prev < 0:
            x[ut_prev_finished] = nan
        elif hit_p >= 0:
            x[ut_prev_finished] = 1.0 if ut_values[hit_p, 3] >= FINISHED_PROGRESS else 0.0
        else:
            x[ut_prev_finished] = 0.0
        x[ut_prev_days] = day - ut_values[hit_p, 2] if hit_p >= 0 else nan
        hit_s = _sorted_find(shown_keys, u * n_titles + t)
        x[ut_shown_no_play] = shown_counts[hit_s] if hit_s >= 0 else 0.0
        x[ut_duration_ratio] = duration[t] / device_duration[uk, d] if known else nan
        x[row_kind], x[row_ranker] = p_kind[p], p_ranker[p]
        x[row_score], x[row_score_rel] = p_score[p], p_score_rel[p]
        x[row_rank], x[row_len] = p_rank[p], p_row_len[p]


# The row-matrix columns `_row_columns` writes by name, in the order it unpacks them; the
# context and user columns it copies from a visible pair's title-matrix row; the aggregates it
# averages over the visible pairs (_ROW_AGG_SOURCES); the category columns.
_ROW_KERNEL_NAMES = (
    "ctx_device", "ctx_hour", "ctx_weekend", "ctx_country",
    "row_kind", "row_ranker", "row_len", "row_top_score", "rs_top", "rs_mean_visible",
    "re_user_kind_shown", "re_user_kind_rate", "re_user_kind_device_rate",
    "re_user_kind_daypart_rate", "re_kind_device_rate", "re_kind_daypart_rate",
)  # fmt: skip
_ROW_KERNEL_COLUMNS = (
    tuple(_ROW_COL[name] for name in _ROW_KERNEL_NAMES),
    np.array(
        [[_ROW_COL[f.name], _TITLE_COL[f.name]] for f in (*CONTEXT_FEATURES, *USER_FEATURES)],
        dtype=np.int64,
    ),
    np.array([[_ROW_COL[n], _TITLE_COL[src]] for n, src in _ROW_AGG_SOURCES], dtype=np.int64),
    _ROW_CATEGORICAL,
)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rate_of(shown, hits, prior):
    """Smoothed play rate (hits + n0 * prior) / (shown + n0); the prior alone without data."""
    return (np.float64(hits) + PRIOR_N * prior) / (np.float64(shown) + PRIOR_N)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _row_columns(X, cols, row_codes, row_values, visible, counts):
    """FeatureStore.row_static's columns, one pass over the visible pairs, then one per row.
    Means skip NaN values (NaN for a row with none); the best score is NaN when a score is.
    For rs_play_est, P(a play | the row is reached) = sum_c decay^c prod_{c'<c}(1 - p_c') p_c
    over the visible titles in display order (p = sigmoid(title-model score): the browsing
    model of engine.sim.world and engine.evaluation.metrics, decay estimated from the log), the
    kernel writes
    the terms and the caller sums them (numpy's summation order)."""
    named, copied, aggregated, categorical = cols
    (
        ctx_device, ctx_hour, ctx_weekend, ctx_country,
        row_kind, row_ranker, row_len, row_top_score, rs_top, rs_mean_visible,
        re_shown, re_rate, re_device_rate, re_daypart_rate, re_kind_device, re_kind_daypart,
    ) = named  # fmt: skip
    user, device, hour, weekend, country, kind = row_codes
    ranker, length, top_score = row_values
    title_x, scores, p, pairs, owner, decay, terms = visible
    user_kind, user_kind_device, user_kind_daypart, kind_device, kind_daypart, shown_log = counts
    n_rows, n_agg = X.shape[0], aggregated.shape[0]
    first = np.full(n_rows, -1, dtype=np.int64)
    top = np.full(n_rows, -np.inf)
    sums = np.zeros((n_rows, 1 + n_agg))
    n = np.zeros((n_rows, 1 + n_agg), dtype=np.int64)
    survive = np.ones(n_rows)
    column = np.zeros(n_rows, dtype=np.int64)
    for i in range(len(pairs)):
        r, s = owner[i], scores[i]
        if first[r] < 0:
            first[r] = pairs[i]
        if np.isnan(s):  # and once NaN, NaN: nothing compares greater
            top[r] = np.nan
        elif s > top[r]:
            top[r] = s
        if not np.isnan(s):
            sums[r, 0] += s
            n[r, 0] += 1
        for a in range(n_agg):
            v = np.float64(title_x[pairs[i], aggregated[a, 1]])
            if not np.isnan(v):
                sums[r, a + 1] += v
                n[r, a + 1] += 1
        c = column[r]
        terms[r, c] = survive[r] * decay[r, c] * p[i]
        survive[r] *= 1.0 - p[i]
        column[r] = c + 1
    for r in range(n_rows):
        x = X[r]
        if first[r] >= 0:  # context and user columns are the same as for any of its pairs
            for j in range(copied.shape[0]):
                x[copied[j, 0]] = title_x[first[r], copied[j, 1]]
        else:  # a row with no visible pair: the context from the request directly
            x[ctx_device], x[ctx_hour] = device[r], hour[r]
            x[ctx_weekend], x[ctx_country] = weekend[r], country[r]
        x[row_kind], x[row_ranker] = kind[r], ranker[r]
        x[row_len], x[row_top_score] = length[r], top_score[r]
        x[rs_top] = np.nan if np.isinf(top[r]) else top[r]
        x[rs_mean_visible] = sums[r, 0] / n[r, 0]
        for a in range(n_agg):
            x[aggregated[a, 0]] = sums[r, a + 1] / n[r, a + 1]
        # engagement with this row kind, from impressions before the cut-off
        u, k = user[r], kind[r]
        ok = u >= 0 and k >= 0
        uk, kk = max(u, 0), max(k, 0)
        d, dp = device[r], hour[r] // (24 // N_DAYPARTS)
        base_dev = _rate_of(kind_device[kk, d, 0], kind_device[kk, d, 1], 0.0)
        base_dp = _rate_of(kind_daypart[kk, dp, 0], kind_daypart[kk, dp, 1], 0.0)
        shown, hits = np.float32(0.0), np.float32(0.0)  # float32 sums, as numpy's
        for e in range(kind_device.shape[1]):
            shown += kind_device[kk, e, 0]
            hits += kind_device[kk, e, 1]
        base_kind = _rate_of(shown, hits, 0.0)
        if ok:
            x[re_shown] = shown_log[r]
            x[re_rate] = _rate_of(user_kind[uk, kk, 0], user_kind[uk, kk, 1], base_kind)
            got = user_kind_device[uk, kk, d]
            x[re_device_rate] = _rate_of(got[0], got[1], base_dev)
            got = user_kind_daypart[uk, kk, dp]
            x[re_daypart_rate] = _rate_of(got[0], got[1], base_dp)
        else:
            x[re_shown] = 0.0
            x[re_rate], x[re_device_rate], x[re_daypart_rate] = base_kind, base_dev, base_dp
        x[re_kind_device], x[re_kind_daypart] = base_dev, base_dp
        if k < 0:
            x[re_rate] = x[re_device_rate] = x[re_daypart_rate] = np.nan
            x[re_kind_device] = x[re_kind_daypart] = np.nan
        for c in categorical:  # unknown codes (-1) are missing, as _missing_categories does
            if x[c] < 0:
                x[c] = np.nan


def _missing_categories(X: np.ndarray, cols: np.ndarray) -> None:
    """Unknown category codes (-1) become NaN, which LightGBM reads as missing (it would
    convert negative categories itself, with a warning per Dataset)."""
    sub = X[:, cols]
    sub[sub < 0] = np.nan
    X[:, cols] = sub


def row_column(name: str) -> int:
    return _ROW_COL[name]


# ----- from the History ---------------------------------------------------------------------------


def history_refs(h: History) -> dict[str, Any]:
    """The History arrays a FeatureStore reads by reference, as the kernels read them."""
    return {
        "title_kind": h.title_kind.astype(np.float32),
        "duration_min": h.duration_min.astype(np.float32),
        "added_us": h.added_us.astype(np.float64),
        "release_year": h.release_year.astype(np.float64),
        "maturity": h.maturity.astype(np.float32),
        "title_n_genres": h.title_genres.sum(axis=1).astype(np.float32),
        "title_episode": np.where(h.episode >= 0, h.episode, np.nan).astype(np.float32),
        "user_created_us": h.user_created_us.astype(np.float64),
        "n_titles": h.n_titles,
    }


__all__ = [
    "FEATURE_SETS",
    "ROW_FEATURES",
    "TITLE_FEATURES",
    "Feature",
    "FeatureStore",
    "Pairs",
    "Requests",
    "check_feature_order",
    "feature_names",
]
