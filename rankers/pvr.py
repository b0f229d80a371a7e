"""PVR, the personalized video ranker: a score for every title for one member, blended with
popularity, and one row per genre the member engages with ("Comedy", "Thrillers", ...).

The score follows the Netflix recipe (Gomez-Uribe & Hunt 2015, "The Netflix Recommender
System", ACM TMIS): a personalized collaborative-filtering score blended linearly with
popularity,

    score = (1 - popularity_weight) * z(cf) + popularity_weight * z(log1p(plays))
            + content_weight * z(genre match)

where z() standardizes each signal so the weights mean the same thing on every dataset. The CF
part is one of three methods, chosen by measurement (docs/rankers_cf.md, bench/
bench_rankers_quality.py): EASE (Steck 2019, closed form), implicit ALS (Hu, Koren & Volinsky
2008, solved with conjugate gradient) or item-kNN (cosine with shrinkage). It only scores titles
with at least `min_plays` distinct players; the others (new or unwatched titles) get the neutral
CF value 0 and rise only through the genre match, so they can still appear.

`CFModel`, `CFConfig` and the helpers here are reused by Top-N (its own instance, its own
weights), so the CF maths lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import US_PER_DAY, History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import check_fitted, load_state, make_row, save_state

STATE_VERSION = 1
Method = Literal["ease", "als", "item_knn"]
_LN2 = float(np.log(2.0))
# The most titles EASE and item-kNN score (`max_dense_titles`): at 10,000 a fit's peak is a few
# GB and its matrix 0.4 GB in every server worker (bench/bench_cf_scale.py).
MAX_DENSE_TITLES = 10_000
_OVERALL = 400  # the rank whose score is the genre rows' candidate threshold (PVRRanker.propose)


class CFConfig(RankerConfig):
    """Keys of the collaborative-filtering model shared by PVR and Top-N."""

    # Defaults: the best of the validation grid of bench/bench_rankers_quality.py on the
    # default simulated world (docs/rankers_cf.md); MovieLens preferred l2=1500 and content 0.6.
    method: Method = "ease"
    # Titles with fewer distinct players get no CF score (EASE's item-item matrix is n^2).
    min_plays: int = Field(default=2, ge=1)
    # EASE and item-kNN hold dense n x n matrices: past this many titles only the most played
    # get a CF score (ALS has no such limit). bench/bench_cf_scale.py measures the cost.
    max_dense_titles: int = Field(default=MAX_DENSE_TITLES, ge=1)
    l2: float = Field(default=200.0, gt=0, description="EASE ridge strength")
    factors: int = Field(default=64, ge=1, description="ALS latent factors")
    als_reg: float = Field(default=0.1, gt=0)
    als_alpha: float = Field(default=10.0, gt=0, description="ALS confidence = 1 + alpha * weight")
    als_iterations: int = Field(default=15, ge=1)
    neighbours: int = Field(default=100, ge=1, description="item_knn neighbours kept per title")
    shrink: float = Field(default=10.0, ge=0, description="item_knn cosine shrinkage")
    # How a member's plays of a title become one weight: 1, or the furthest progress reached.
    play_weight: Literal["binary", "progress"] = "binary"
    # Older plays of the member count less when scoring (0 = all plays count the same).
    user_half_life_days: float = Field(default=30.0, ge=0)
    popularity_weight: float = Field(default=0.1, ge=0, le=1)
    content_weight: float = Field(default=0.3, ge=0)
    seed: int = 0

    def cf_keys(self) -> dict[str, Any]:
        """The keys that shape the fitted arrays (a saved model must agree on them)."""
        keys = (
            "method",
            "min_plays",
            "max_dense_titles",
            "l2",
            "factors",
            "als_reg",
            "als_alpha",
            "als_iterations",
            "neighbours",
            "shrink",
            "play_weight",
            "seed",
        )
        return {k: getattr(self, k) for k in keys}

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        # The method's own regularisation first (it moves NDCG most), then the blend.
        by_method: dict[str, dict[str, tuple[Any, ...]]] = {
            "ease": {"l2": (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)},
            "als": {"factors": (32, 64, 128), "als_reg": (0.01, 0.1, 1.0)},
            "item_knn": {"neighbours": (20, 50, 100, 200), "shrink": (0.0, 10.0, 50.0)},
        }
        return {
            **by_method[self.method],
            "popularity_weight": (0.0, 0.1, 0.3),
            "content_weight": (0.0, 0.3, 0.6),
            "user_half_life_days": (0.0, 30.0, 180.0),
        }


class GenreRowsConfig(RankerConfig):
    """Keys of a ranker's genre rows (`genre_rows`): one row per genre the member plays."""

    max_genre_rows: int = Field(default=4, ge=0)
    # A genre needs this share of the member's (decayed) plays to get a row.
    min_genre_share: float = Field(default=0.05, ge=0, le=1)
    genre_half_life_days: float = Field(default=90.0, gt=0)
    min_row_titles: int = Field(default=5, ge=1)


class PVRConfig(CFConfig, GenreRowsConfig):
    """PVR keys: the CF model plus the genre rows."""

    row_length: int = Field(default=40, ge=1)
    exclude_played: bool = True


# ----- the CF model --------------------------------------------------------------------------


def play_matrix(history: History, play_weight: str = "binary") -> sp.csr_matrix:
    """Users x titles, one weight per (user, title) pair that has a play."""
    key = history.play_user.astype(np.int64) * history.n_titles + history.play_title
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.empty(0, int)
    uniq = key[starts]
    if play_weight == "progress":
        prog = np.clip(history.play_progress[order].astype(np.float64), 0.05, 1.0)
        vals = np.maximum.reduceat(prog, starts) if len(starts) else np.empty(0)
    else:
        vals = np.ones(len(uniq))
    rows, cols = np.divmod(uniq, history.n_titles)
    return sp.csr_matrix((vals, (rows, cols)), shape=(history.n_users, history.n_titles))


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique(x) by sorting: numpy 2.4's hash-based np.unique took 170 ms on 110k int64
    keys where a sort takes 3 ms (measured on the default simulated world)."""
    x = np.sort(x)
    if len(x) < 2:
        return x
    return x[np.r_[True, x[1:] != x[:-1]]]


def distinct_players(history: History) -> np.ndarray:
    """Distinct users who played each title (int64, length n_titles)."""
    key = history.play_user.astype(np.int64) * history.n_titles + history.play_title
    titles = sorted_unique(key) % max(history.n_titles, 1)
    return np.bincount(titles, minlength=history.n_titles)


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardized copy (float64); a constant vector maps to zeros."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    # Two dot products instead of mean() + std(): this runs on every page request.
    mean = float(x.sum()) / n
    var = float(x @ x) / n - mean * mean
    if not var > 1e-18:
        return np.zeros_like(x)
    return (x - mean) * (1.0 / np.sqrt(var))


def head(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` best finite scores, best first (ties: lower index first among the
    chosen). One argpartition and a sort of k values: the hot path's top-k."""
    n = len(score)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
    part = part[np.lexsort((part, -score[part]))]
    return part[np.isfinite(score[part])]


@dataclass(frozen=True)
class CFModel:
    """Fitted CF state. `eval_items` are the titles it scores; `raw` scores those."""

    method: str
    eval_items: np.ndarray  # int32 title indices
    item_weights: np.ndarray  # ease / item_knn: (n_eval, n_eval) float32; als: empty
    item_factors: np.ndarray  # als: (n_eval, f) float32; else empty
    user_factors: np.ndarray  # als: (n_users, f) float32; else empty

    ARRAYS: ClassVar[tuple[str, ...]] = (
        "eval_items",
        "item_weights",
        "item_factors",
        "user_factors",
    )

    @classmethod
    def fit(cls, history: History, cfg: CFConfig) -> CFModel:
        return cls.fit_plays(play_matrix(history, cfg.play_weight), cfg)

    @classmethod
    def fit_plays(cls, X: sp.csr_matrix, cfg: CFConfig) -> CFModel:
        """Fit on `X` (members x titles, one weight per member and title played)."""
        eval_items = cf_titles(np.diff(X.tocsc().indptr), cfg)
        Xe = X[:, eval_items].tocsr()
        empty = np.zeros((0, 0), dtype=np.float32)
        if cfg.method == "als":
            rng = np.random.default_rng(cfg.seed)
            uf, itf = _als(Xe, cfg.factors, cfg.als_reg, cfg.als_alpha, cfg.als_iterations, rng)
            return cls("als", eval_items, empty, itf, uf)
        gram = _gram(Xe)
        if cfg.method == "ease":
            weights = _ease(gram, cfg.l2)
        else:
            weights = _item_knn(gram, cfg.neighbours, cfg.shrink)
        return cls(cfg.method, eval_items, weights, empty, empty)

    def arrays(self) -> dict[str, np.ndarray]:
        return {a: getattr(self, a) for a in self.ARRAYS}

    @classmethod
    def from_arrays(cls, method: str, arrays: dict[str, np.ndarray], history: History) -> CFModel:
        model = cls(method, **{a: arrays[a] for a in cls.ARRAYS})
        n_eval = len(model.eval_items)
        ok = model.eval_items.dtype.kind == "i" and (
            n_eval == 0
            or (model.eval_items.min() >= 0 and model.eval_items.max() < history.n_titles)
        )
        if method == "als":
            ok = ok and model.item_factors.shape[0] == n_eval
            ok = ok and model.user_factors.shape[0] == history.n_users
        else:
            ok = ok and model.item_weights.shape == (n_eval, n_eval)
        if not ok:
            raise ModelLoadError(
                f"saved {method} arrays do not fit a history of {history.n_titles} titles and "
                f"{history.n_users} users: retrain with `rowrank train`."
            )
        return model

    def fold_in(self, pos: np.ndarray, weights: np.ndarray, reg: float, alpha: float) -> np.ndarray:
        """ALS scores of `eval_items` for a member whose plays are `pos` with `weights`, the
        member's factors solved from their plays against the fitted title factors (the ALS
        user half-step for one member, exactly: f x f): a member with plays after the cut-off
        (engine.events), or new to the model, gets a vector without a retrain."""
        if len(pos) == 0:
            return np.zeros(len(self.eval_items))
        y = self.item_factors.astype(np.float64)
        yu = y[pos]
        conf = alpha * np.asarray(weights, dtype=np.float64)
        a = y.T @ y + reg * np.eye(y.shape[1]) + (yu * conf[:, None]).T @ yu
        x = np.linalg.solve(a, yu.T @ (1.0 + conf))
        return np.asarray(y @ x, dtype=np.float64)

    def raw(self, user: int, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """CF scores of `eval_items` for a member whose plays are `pos` (positions in
        eval_items) with `weights`. float64, length n_eval."""
        if self.method == "als":
            if user < 0 or len(pos) == 0:
                return np.zeros(len(self.eval_items))
            return (self.item_factors @ self.user_factors[user]).astype(np.float64)
        if len(pos) == 0:
            return np.zeros(len(self.eval_items))
        # Sum of the member's rows of the item-item matrix (float32: the gathered block is
        # |plays| x n_eval, a float64 copy of it cost 10x more than the product).
        w = weights.astype(np.float32)
        return (w @ self.item_weights[pos]).astype(np.float64)


def cf_titles(players: np.ndarray, cfg: CFConfig) -> np.ndarray:
    """The titles the CF model scores (int32, ascending): those with `min_plays` distinct
    players; for a dense method at most `max_dense_titles` of them, the most played (ties to
    the lower index), which bounds the n x n matrix a large catalog would need."""
    titles = np.flatnonzero(players >= cfg.min_plays).astype(np.int32)
    if cfg.method != "als" and len(titles) > cfg.max_dense_titles:
        most = np.argsort(-players[titles], kind="stable")[: cfg.max_dense_titles]
        titles = np.sort(titles[most])
    return titles


def _gram(X: sp.csr_matrix) -> np.ndarray:
    """X^T X as a dense float64 matrix."""
    return np.asarray((X.T @ X).toarray(), dtype=np.float64)


def _ease(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diagMat(1/diag(P)), P = (G + l2 I)^-1, diag(B) = 0."""
    n = gram.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    g = gram.copy()
    g[np.diag_indices(n)] += l2
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))[None, :]
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)


def _item_knn(gram: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """Cosine with shrinkage, keeping each title's k nearest neighbours (row j votes for the
    titles most similar to j)."""
    n = gram.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    norm = np.sqrt(np.diag(gram))
    sim = gram / (np.outer(norm, norm) + shrink + 1e-12)
    sim[np.diag_indices(n)] = 0.0
    if k < n - 1:
        drop = np.argpartition(-sim, k, axis=1)[:, k:]
        np.put_along_axis(sim, drop, 0.0, axis=1)
    return sim.astype(np.float32)


def _als(
    X: sp.csr_matrix, f: int, reg: float, alpha: float, iterations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit ALS (Hu, Koren & Volinsky 2008): confidence 1 + alpha * w on observed pairs,
    preference 1 there and 0 elsewhere. Each half-step runs a few conjugate-gradient steps for
    all rows at once (Takács et al. 2011), warm-started from the previous factors."""
    conf = X.copy().astype(np.float64)
    conf.data *= alpha
    users = rng.normal(0.0, 0.01, size=(X.shape[0], f))
    items = rng.normal(0.0, 0.01, size=(X.shape[1], f))
    conf_t = conf.T.tocsr()
    for _ in range(iterations):
        users = _cg_half_step(conf, items, users, reg)
        items = _cg_half_step(conf_t, users, items, reg)
    return users.astype(np.float32), items.astype(np.float32)


def _cg_half_step(
    conf: sp.csr_matrix, other: np.ndarray, x: np.ndarray, reg: float, steps: int = 3
) -> np.ndarray:
    """Solve (O^T O + reg I + O_u^T C_u O_u) x_u = O_u^T (1 + c_u) for every row u."""
    f = other.shape[1]
    gram = other.T @ other + reg * np.eye(f)
    row_of = np.repeat(np.arange(conf.shape[0]), np.diff(conf.indptr))
    cols = conf.indices

    def apply(v: np.ndarray) -> np.ndarray:
        dots = np.einsum("ij,ij->i", v[row_of], other[cols])
        weighted = sp.csr_matrix((conf.data * dots, cols, conf.indptr), shape=conf.shape)
        return np.asarray(v @ gram + weighted @ other)

    b = np.asarray(sp.csr_matrix((1.0 + conf.data, cols, conf.indptr), shape=conf.shape) @ other)
    x = x.copy()
    r = b - apply(x)
    p = r.copy()
    rs = np.einsum("ij,ij->i", r, r)
    for _ in range(steps):
        ap = apply(p)
        denom = np.einsum("ij,ij->i", p, ap)
        a = np.divide(rs, denom, out=np.zeros_like(rs), where=denom > 1e-20)
        x += a[:, None] * p
        r -= a[:, None] * ap
        rs_new = np.einsum("ij,ij->i", r, r)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 1e-20)
        p = r + beta[:, None] * p
        rs = rs_new
    return x


# ----- per-member signals --------------------------------------------------------------------


def decay(age_us: np.ndarray, half_life_days: float) -> np.ndarray:
    """2^(-age / half-life); plays "in the future" of the request count as fresh."""
    age_days = np.maximum(age_us, 0) / US_PER_DAY
    return np.exp(-_LN2 * age_days / half_life_days)


def member_titles(
    history: History,
    user: int,
    *,
    at_us: int,
    play_weight: str = "binary",
    half_life_days: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The member's distinct titles played before `at_us` (int64, ascending), one weight each."""
    s = history.user_plays_before(user, at_us)
    titles = history.play_title[s]
    if len(titles) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    # Plays are sorted by time, so a title's first index in the reversed slice is its last play.
    uniq, last_rev = np.unique(titles[::-1], return_index=True)
    if play_weight == "progress":
        w = np.zeros(len(uniq))
        inv = np.searchsorted(uniq, titles)
        np.maximum.at(w, inv, np.clip(history.play_progress[s].astype(np.float64), 0.05, 1.0))
    else:
        w = np.ones(len(uniq))
    if half_life_days:  # None or 0: no decay
        last = history.play_ts[s][::-1][last_rev]
        w = w * decay(at_us - last, half_life_days)
    return uniq.astype(np.int64), w


@dataclass(frozen=True)
class Signals:
    """Per-title arrays derived from the History (never saved: cheap to rebuild)."""

    pop_z: np.ndarray  # z(log1p(distinct players)), float64
    # (n_genres, n_titles): the titles' genre vectors with unit L2 norm (0: no genre), stored
    # transposed so the request's product with a profile reads it in memory order.
    genres_l2_t: np.ndarray
    genres_l1: np.ndarray  # rows summing to 1
    genre_titles: tuple[np.ndarray, ...]  # title indices per genre
    eval_pos: np.ndarray  # int64 per title: position in CFModel.eval_items, -1 if none
    global_share: np.ndarray  # genre share of all plays
    in_genre: np.ndarray  # bool (n_genres, n_titles): row g is a contiguous mask
    # Mean and covariance of the titles' genre vectors: z(cosine) without a pass over titles.
    genre_mean: np.ndarray
    genre_cov: np.ndarray

    @classmethod
    def build(cls, history: History, eval_items: np.ndarray) -> Signals:
        g = history.title_genres.astype(np.float64)
        n_g = g.sum(axis=1, keepdims=True)
        genres_l1 = np.divide(g, n_g, out=np.zeros_like(g), where=n_g > 0)
        genres_l2 = np.divide(g, np.sqrt(n_g), out=np.zeros_like(g), where=n_g > 0)
        eval_pos = np.full(history.n_titles, -1, dtype=np.int64)
        eval_pos[eval_items] = np.arange(len(eval_items))
        share = genres_l1[history.play_title].sum(axis=0) if len(history.play_title) else g[0:0]
        total = float(np.sum(share)) if len(share) else 0.0
        global_share = share / total if total > 0 else np.zeros(g.shape[1])
        return cls(
            pop_z=zscore(np.log1p(distinct_players(history))),
            genres_l2_t=np.ascontiguousarray(genres_l2.T),
            genres_l1=genres_l1,
            genre_titles=tuple(
                np.flatnonzero(history.title_genres[:, j]) for j in range(g.shape[1])
            ),
            eval_pos=eval_pos,
            global_share=global_share,
            in_genre=np.ascontiguousarray(history.title_genres.T, dtype=bool),
            genre_mean=genres_l2.mean(axis=0) if len(g) else np.zeros(g.shape[1]),
            genre_cov=_row_covariance(genres_l2),
        )

    def content_z(self, profile: np.ndarray) -> np.ndarray:
        """z(cosine of every title's genres with `profile`), zeros when undefined."""
        n = self.genres_l2_t.shape[1]
        norm = float(np.sqrt(profile @ profile))
        if not norm > 0:
            return np.zeros(n)
        p = profile / norm
        var = float(p @ self.genre_cov @ p)
        if not var > 1e-18:
            return np.zeros(n)
        scale = 1.0 / np.sqrt(var)
        return (p * scale) @ self.genres_l2_t - float(self.genre_mean @ p) * scale

    def genre_share(self, history: History, user: int, at_us: int, half_life: float) -> np.ndarray:
        """The member's decayed play share per genre (sums to 1, or all zeros)."""
        s = history.user_plays_before(user, at_us)
        if s.stop == s.start or self.genres_l1.shape[1] == 0:
            return np.zeros(self.genres_l1.shape[1])
        w = decay(at_us - history.play_ts[s], half_life)
        share = w @ self.genres_l1[history.play_title[s]]
        total = float(share.sum())
        return share / total if total > 0 else share


def _row_covariance(x: np.ndarray) -> np.ndarray:
    """Population covariance of the rows of `x` (d x d), zeros when undefined."""
    n, d = x.shape
    if n == 0 or d == 0:
        return np.zeros((d, d))
    centred = x - x.mean(axis=0)
    return np.asarray(centred.T @ centred / n)


@dataclass(frozen=True)
class Components:
    """The standardized signals of one member, over all titles (float64)."""

    cf: np.ndarray  # z(cf) on the CF-scored titles, 0 elsewhere
    content: np.ndarray  # z(cosine of title genres and the member's genre profile)
    cold: bool  # the member has no plays: only popularity applies


def components(
    model: CFModel, signals: Signals, history: History, user: int, at_us: int, cfg: CFConfig
) -> Components:
    n = history.n_titles
    titles, w = member_titles(
        history,
        user,
        at_us=at_us,
        play_weight=cfg.play_weight,
        half_life_days=cfg.user_half_life_days,
    )
    if len(titles) == 0:
        zeros = np.zeros(n)
        return Components(zeros, zeros, cold=True)
    pos = signals.eval_pos[titles]
    keep = pos >= 0
    cf = np.zeros(n)
    if model.method == "als" and user == history.live_member:
        raw = model.fold_in(pos[keep], w[keep], cfg.als_reg, cfg.als_alpha)
    else:
        raw = model.raw(user, pos[keep], w[keep])
    cf[model.eval_items] = zscore(raw)
    content = signals.content_z(w @ signals.genres_l1[titles])
    return Components(cf, content, cold=False)


def blend(
    comp: Components,
    pop_z: np.ndarray,
    popularity_weight: float,
    content_weight: float,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """The Netflix-style linear blend of personalization and popularity (float64)."""
    if comp.cold:
        out = pop_z.copy()
    else:
        out = (1.0 - popularity_weight) * comp.cf + popularity_weight * pop_z
        if content_weight:
            out += content_weight * comp.content
    if extra is not None:
        out += extra
    return out


def genre_rows(
    ranker: str,
    kind: str,
    score: np.ndarray,
    signals: Signals,
    history: History,
    user: int,
    at_us: int,
    cfg: GenreRowsConfig,
    row_length: int,
    title: str = "{genre}",
) -> list[CandidateRow]:
    """One row per genre of the member's plays before `at_us` (largest decayed share first, up
    to `cfg.max_genre_rows`), each holding that genre's best titles by `score` (float64 per
    title; -inf: not offered). A member with no plays gets the genres everyone plays most."""
    share = signals.genre_share(history, user, at_us, cfg.genre_half_life_days)
    if not share.any():
        share = signals.global_share
    rows: list[CandidateRow] = []
    # One partition for all genre rows: the _OVERALL-th best score overall is a threshold
    # that usually leaves a genre a few dozen candidates to sort instead of hundreds.
    n = len(score)
    k = min(_OVERALL, n)
    threshold = np.partition(score, n - k)[n - k] if n else -np.inf
    for g in np.argsort(-share, kind="stable"):
        if len(rows) >= cfg.max_genre_rows or share[g] < max(cfg.min_genre_share, 1e-12):
            break
        mine = signals.genre_titles[g]
        sc = score[mine]
        cand = np.flatnonzero(sc >= threshold) if threshold > -np.inf else np.empty(0, int)
        if len(cand) < row_length:
            cand = np.flatnonzero(np.isfinite(sc))
        cand = cand[np.lexsort((cand, -sc[cand]))][:row_length]
        if len(cand) < cfg.min_row_titles:
            continue
        genre = history.genre_names[g]
        rows.append(
            make_row(
                ranker=ranker,
                kind=kind,
                title=title.format(genre=genre),
                titles=mine[cand],
                scores=sc[cand],
                key=genre,
                evidence={"genre": genre, "share": round(float(share[g]), 4)},
            )
        )
    return rows


# ----- the ranker ----------------------------------------------------------------------------


class PVRRanker:
    """Personalized scores for every title; one row per genre the member engages with."""

    type_name: ClassVar[str] = "pvr"
    Config: ClassVar[type[RankerConfig]] = PVRConfig
    keeps_finished: ClassVar[bool] = False
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device: ClassVar[bool] = False
    ROW_KIND: ClassVar[str] = "pvr_genre"

    def __init__(self, name: str, config: RankerConfig | None = None) -> None:
        self.name = name
        cfg = PVRConfig() if config is None else config
        if not isinstance(cfg, PVRConfig):
            cfg = PVRConfig.model_validate(cfg.model_dump())
        self.config: PVRConfig = cfg
        # (model, history, (user, at_us), scores) of the last _score call; see _score.
        self._last_score: tuple[CFModel, History, tuple[int, int], np.ndarray] | None = None

    def fit(self, history: History) -> Self:
        self.model_ = CFModel.fit(history, self.config)
        self.signals_ = Signals.build(history, self.model_.eval_items)
        self.history_ = history  # a reference, for the fingerprint `save` writes
        return self

    def scores(self, user: int, history: History, at_us: int | None = None) -> np.ndarray:
        """PVR score of every title for `user` (History index, -1 = unknown), float32, finite.

        Played titles are scored too (callers exclude them if they want). `at_us` is "now" for
        the decay of the member's plays (default: the History's cut-off)."""
        check_fitted(self, "model_")
        at = history.cutoff_us if at_us is None else at_us
        return self._score(user, history, at).astype(np.float32)

    def _score(self, user: int, history: History, at_us: int) -> np.ndarray:
        # A page asks twice for the same member and time: for the genre rows (propose) and for
        # the title model's PVR feature (scores); each ask scores the whole catalog, so the
        # last answer is kept (read-only; the tuple is swapped whole, so threads serving pages
        # at once see an old or a new entry, never half of one).
        last = self._last_score
        if (
            last is not None
            and last[0] is self.model_
            and last[1] is history
            and last[2] == (user, at_us)
        ):
            return last[3]
        comp = components(self.model_, self.signals_, history, user, at_us, self.config)
        cfg = self.config
        out = blend(comp, self.signals_.pop_z, cfg.popularity_weight, cfg.content_weight)
        out.flags.writeable = False
        self._last_score = (self.model_, history, (user, at_us), out)
        return out

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "model_")
        cfg = self.config
        user = history.user_index(request.user_id)
        at = request.at_us
        # Rounded through float32 so a row's scores are exactly what `scores()` returns.
        score = self._score(user, history, at).astype(np.float32).astype(np.float64)
        if cfg.exclude_played and user >= 0:
            score[history.play_title[history.user_plays_before(user, at)]] = -np.inf
        return genre_rows(
            self.name, self.ROW_KIND, score, self.signals_, history, user, at, cfg, cfg.row_length
        )

    def save(self, directory: Path) -> None:
        check_fitted(self, "model_")
        save_state(
            Path(directory),
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays=self.model_.arrays(),
            meta={"cf": self.config.cf_keys()},
        )

    def load(self, directory: Path, history: History) -> Self:
        self.model_, _ = load_cf_state(
            directory, history, self.type_name, STATE_VERSION, self.config
        )
        self.signals_ = Signals.build(history, self.model_.eval_items)
        self.history_ = history
        return self


def load_cf_state(
    directory: Path, history: History, type_name: str, version: int, cfg: CFConfig
) -> tuple[CFModel, dict[str, Any]]:
    """A CF ranker's saved model (PVR, Top-N) and its meta, checked against the config's keys."""
    arrays, meta = load_state(
        Path(directory),
        type_name=type_name,
        version=version,
        history=history,
        arrays=CFModel.ARRAYS,
    )
    check_cf_meta(meta, cfg, directory)
    return CFModel.from_arrays(cfg.method, arrays, history), meta


def check_cf_meta(meta: dict[str, Any], cfg: CFConfig, directory: Path) -> None:
    """A saved CF model must have been fitted with the CF keys of the current config."""
    saved = meta.get("cf")
    want = cfg.cf_keys()
    if saved != want:
        diff = sorted(k for k in want if not isinstance(saved, dict) or saved.get(k) != want[k])
        raise ModelLoadError(
            f"{directory}: the saved model was fitted with different CF keys ({', '.join(diff)}) "
            "than the config has now: retrain with `rowrank train`."
        )
