"""Because you watched X: titles similar to one the member played recently.

The similarity is unpersonalized and precomputed at fit: co-watching (cosine of the title
columns of the play matrix, shrunk towards 0 for titles with few players) blended with content
(cosine of the genre vectors, times a release-year proximity term). A title nobody has played
has no co-watching signal but still has content, so it can appear in a row. Each title keeps its
top `neighbours` as int32/float32 arrays; the seed itself and other episodes of its series are
never neighbours.

What is personalized is the choice of seeds: among the member's recent distinct titles, the
score recency x engagement (furthest progress) x seed quality (mean similarity of its best
neighbours) picks at most `max_rows` seeds, one per series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.data.history import History
from engine.errors import ModelLoadError
from engine.request.context import RequestContext
from rankers._common import check_fitted, load_state, make_row, save_state
from rankers.pvr import decay, play_matrix

STATE_VERSION = 1
_BLOCK = 512  # titles per block when computing similarities (block x n_titles float64)


class BecauseYouWatchedConfig(RankerConfig):
    """Keys of the Because-you-watched ranker."""

    neighbours: int = Field(default=50, ge=1, description="neighbours kept per title at fit")
    shrink: float = Field(default=10.0, ge=0, description="co-watch cosine shrinkage")
    # sim = (1 - content_weight) * co-watch + content_weight * content
    content_weight: float = Field(default=0.1, ge=0, le=1)
    # content = genre cosine * ((1 - year_weight) + year_weight * exp(-|dyear| / year_scale))
    year_weight: float = Field(default=0.3, ge=0, le=1)
    year_scale: float = Field(default=10.0, gt=0)
    max_rows: int = Field(default=3, ge=0)
    row_length: int = Field(default=30, ge=1)
    min_row_titles: int = Field(default=5, ge=1)
    seed_window: int = Field(default=20, ge=1, description="recent distinct titles considered")
    seed_half_life_days: float = Field(default=14.0, gt=0)
    min_seed_progress: float = Field(default=0.25, ge=0, le=1)
    quality_top: int = Field(default=10, ge=1, description="neighbours averaged for seed quality")
    exclude_played: bool = True

    def tune_space(self) -> dict[str, tuple[Any, ...]]:
        return {
            "neighbours": (20, 100),
            "shrink": (0.0, 50.0),
            "content_weight": (0.0, 0.3),
            "year_weight": (0.0, 0.6),
        }


class BecauseYouWatchedRanker:
    """Rows "Because you watched <title>" for up to `max_rows` recent seeds."""

    type_name: ClassVar[str] = "because_you_watched"
    Config: ClassVar[type[RankerConfig]] = BecauseYouWatchedConfig
    keeps_finished: ClassVar[bool] = False
    # Rows depend on the member, time and country, not the device (LastProposals).
    uses_device: ClassVar[bool] = False

    def __init__(self, name: str, config: RankerConfig | None = None) -> None:
        self.name = name
        cfg = BecauseYouWatchedConfig() if config is None else config
        if not isinstance(cfg, BecauseYouWatchedConfig):
            cfg = BecauseYouWatchedConfig.model_validate(cfg.model_dump())
        self.config: BecauseYouWatchedConfig = cfg

    def fit(self, history: History) -> Self:
        self.neighbours_, self.similarity_ = neighbours(history, self.config)
        self._derive(history)
        return self

    def _derive(self, history: History) -> None:
        q = min(self.config.quality_top, self.similarity_.shape[1])
        self.quality_ = self.similarity_[:, :q].mean(axis=1) if q else np.zeros(history.n_titles)
        self.history_ = history

    def similar(self, title: int) -> tuple[np.ndarray, np.ndarray]:
        """The precomputed neighbours of a title (int32) and their similarities (float32)."""
        check_fitted(self, "neighbours_")
        nb, sim = self.neighbours_[title], self.similarity_[title]
        ok = nb >= 0
        return nb[ok], sim[ok]

    def seeds(self, user: int, history: History, at_us: int) -> np.ndarray:
        """Candidate seed titles for a member, best first (one per series)."""
        cfg = self.config
        s = history.user_plays_before(user, at_us)
        titles = history.play_title[s]
        if len(titles) == 0:
            return np.empty(0, dtype=np.int64)
        # Per distinct title: last play time and furthest progress (one sort, two reduceats).
        order = np.argsort(titles, kind="stable")
        sorted_titles = titles[order]
        starts = np.flatnonzero(np.r_[True, sorted_titles[1:] != sorted_titles[:-1]])
        uniq = sorted_titles[starts].astype(np.int64)
        last = np.maximum.reduceat(history.play_ts[s][order], starts)
        progress = np.maximum.reduceat(history.play_progress[s][order], starts).astype(np.float64)
        recent = np.argsort(-last, kind="stable")[: cfg.seed_window]
        recent = recent[progress[recent] >= cfg.min_seed_progress]
        cand = uniq[recent]
        score = (
            decay(at_us - last[recent], cfg.seed_half_life_days)
            * np.clip(progress[recent], 0.0, 1.0)
            * self.quality_[cand]
        )
        best = np.argsort(-score, kind="stable")
        best = best[score[best] > 0]
        # One seed per series: episodes of one show would give near-identical rows. At most
        # seed_window candidates, so a plain loop is cheaper than another np.unique.
        seen: set[int] = set()
        out: list[int] = []
        for t in cand[best].tolist():
            key = int(history.series[t])
            key = key if key >= 0 else -1 - t
            if key not in seen:
                seen.add(key)
                out.append(t)
        return np.array(out, dtype=np.int64)

    def propose(self, request: RequestContext, history: History) -> list[CandidateRow]:
        check_fitted(self, "neighbours_")
        cfg = self.config
        user = history.user_index(request.user_id)
        if user < 0 or cfg.max_rows == 0:
            return []
        played = np.zeros(history.n_titles + 1, dtype=bool)  # the extra slot absorbs -1 pads
        if cfg.exclude_played:
            played[history.play_title[history.user_plays_before(user, request.at_us)]] = True
        played[-1] = True
        rows: list[CandidateRow] = []
        for seed in self.seeds(user, history, request.at_us).tolist():
            nb, sim = self.neighbours_[seed], self.similarity_[seed]
            keep = ~played[nb]
            nb, sim = nb[keep], sim[keep]
            if len(nb) < cfg.min_row_titles:
                continue
            name = str(history.title_names[seed])
            seed_id = str(history.title_ids[seed])
            rows.append(
                make_row(
                    ranker=self.name,
                    kind=self.type_name,
                    title=f"Because you watched {name}",
                    titles=nb[: cfg.row_length],
                    scores=sim[: cfg.row_length],
                    key=seed_id,
                    evidence={"seed_title_id": seed_id, "seed_name": name},
                )
            )
            if len(rows) >= cfg.max_rows:
                break
        return rows

    def save(self, directory: Path) -> None:
        check_fitted(self, "neighbours_")
        save_state(
            Path(directory),
            type_name=self.type_name,
            version=STATE_VERSION,
            history=self.history_,
            arrays={"neighbours": self.neighbours_, "similarity": self.similarity_},
            meta={"neighbours": self.config.neighbours},
        )

    def load(self, directory: Path, history: History) -> Self:
        arrays, _ = load_state(
            Path(directory),
            type_name=self.type_name,
            version=STATE_VERSION,
            history=history,
            arrays=("neighbours", "similarity"),
        )
        nb, sim = arrays["neighbours"], arrays["similarity"]
        if nb.shape != sim.shape or nb.ndim != 2 or nb.shape[0] != history.n_titles:
            raise ModelLoadError(
                f"{directory}: neighbour arrays {nb.shape}/{sim.shape} do not fit "
                f"{history.n_titles} titles: retrain with `rowrank train`."
            )
        self.neighbours_, self.similarity_ = nb.astype(np.int32), sim.astype(np.float32)
        self._derive(history)
        return self


def neighbours(history: History, cfg: BecauseYouWatchedConfig) -> tuple[np.ndarray, np.ndarray]:
    """Top-K most similar titles per title: (n_titles, K) int32 (-1 = none) and float32
    similarities, best first. Computed in blocks of titles so memory stays O(block x n)."""
    n = history.n_titles
    k = min(cfg.neighbours, max(n - 1, 0))
    out_nb = np.full((n, k), -1, dtype=np.int32)
    out_sim = np.zeros((n, k), dtype=np.float32)
    if n == 0 or k == 0:
        return out_nb, out_sim
    X = play_matrix(history).tocsc()
    X.data[:] = 1.0  # co-watching counts players, whatever their progress
    Xt = X.T.tocsr()
    players = np.asarray(X.sum(axis=0)).ravel()
    root = np.sqrt(players)
    g = history.title_genres.astype(np.float64)
    g_norm = np.sqrt(g.sum(axis=1))
    g_unit = np.divide(g, g_norm[:, None], out=np.zeros_like(g), where=g_norm[:, None] > 0)
    year = history.release_year.astype(np.float64)
    series = history.series
    w = cfg.content_weight
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        rows = np.arange(start, stop)
        co = np.asarray((Xt[start:stop] @ X).toarray(), dtype=np.float64)
        cowatch = co / (np.outer(root[start:stop], root) + cfg.shrink + 1e-12)
        content = g_unit[start:stop] @ g_unit.T
        if cfg.year_weight:
            dy = np.abs(year[start:stop, None] - year[None, :])
            near = np.where(np.isnan(dy), 0.5, np.exp(-dy / cfg.year_scale))
            content *= (1.0 - cfg.year_weight) + cfg.year_weight * near
        sim = (1.0 - w) * cowatch + w * content
        sim[rows - start, rows] = -np.inf  # never the seed itself
        s = series[start:stop]
        same = (s[:, None] >= 0) & (s[:, None] == series[None, :])
        sim[same] = -np.inf  # never another episode of the seed's series
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sim, part, axis=1)
        # Best first; ties by title index so the arrays are deterministic.
        order = _row_order(part, vals)
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        good = vals > 0
        out_nb[start:stop] = np.where(good, part, -1)
        out_sim[start:stop] = np.where(good, vals, 0.0)
    return out_nb, out_sim


def _row_order(idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Per row, the permutation sorting by value descending, then index ascending."""
    by_idx = np.argsort(idx, axis=1, kind="stable")
    v = np.take_along_axis(vals, by_idx, axis=1)
    by_val = np.argsort(-v, axis=1, kind="stable")
    return np.take_along_axis(by_idx, by_val, axis=1)
