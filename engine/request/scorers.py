"""The page model: two LightGBM models and the settings that shape them.

- The title model orders titles within a row. Default objective binary: P(play) of a (row,
  title) pair, which the row stage's cascade estimate needs as a probability; lambdarank with
  one query group per row is an option (`title_objective`), measured worse (docs/page_model.md).
- The row model orders rows on the page, one stage at a time: lambdarank, one group = one page.

Both are `lightgbm.Booster`s saved as LightGBM text and served with one thread. Training
examples come from logged impressions, so the position each item was shown at is a
training-only feature (`position_bias = "feature"`); at serving time it is fixed at the first
slot, so a page is ranked as if every slot were equally seen. See docs/page_model.md for why
and for the measured effect.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# OpenMP threads that spin while waiting made 2-thread training 4x slower than 1 thread on a
# busy 2-core machine (21.7 s vs 5.0 s, bench notes in docs/page_model.md); passive waiting
# fixed it (5.0 s). Must be set before LightGBM loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import numba
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from engine.errors import ConfigError, ModelLoadError
from engine.request.features import (
    POSITION_FEATURES,
    categorical_names,
    check_feature_order,
    feature_names,
    has_position_feature,
)

TITLE_MODEL_FILE = "title_model.txt"
ROW_MODEL_FILE = "row_model.txt"


# Top Picks learns from its own held-out plays; in the page model's windows one window of fewer
# members gives rows like the served ones at a fraction of the fit.
_WINDOW_RANKER_OVERRIDES: dict[str, dict[str, Any]] = {
    "top_n": {"tune": False},
    "top_picks": {"windows": 1, "max_window_members": 500},
}


class PageModelConfig(BaseModel):
    """The `[page]` table of the engine config: training data, model sizes, serving rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- training data: windows [t_k, t_k+1) before the cut-off; the last one is held out
    windows: int = Field(4, ge=2, description="training windows; the last one validates")
    window_days: float = Field(7.0, gt=0, description="length of each window")
    min_window_plays: int = Field(
        3000, ge=1, description="a window is stretched back until it holds this many plays"
    )
    max_pages_per_window: int = Field(
        6_000, ge=1, description="logged pages sampled per window (training cost scales)"
    )
    label_horizon_hours: float = Field(
        6.0, gt=0, description="a play this soon after an impression is its outcome"
    )
    substantial_progress: float = Field(
        0.5, gt=0, le=1, description="progress at which a play is label 2 (else 1)"
    )
    substantial_minutes: float = Field(
        20.0, gt=0, description="minutes watched at which a play is label 2 (else 1)"
    )
    # Ranker keys changed for the training windows only, by ranker type. Top-N's grid search
    # and Top Picks' own training cost more than all other rankers together, and the windows
    # only need rows like the served ones.
    window_ranker_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(_WINDOW_RANKER_OVERRIDES)
    )
    rebuilt_pages_per_window: int = Field(
        3_000, ge=1, description="without impressions: members whose page is rebuilt per window"
    )
    # Without impressions, what a window is: "time" = the [t_k, t_k+1) above, one page per member
    # active in it (on MovieLens a week held 17-34 pages); "members" = every member's page just
    # after their last plays but k x window_holdout_plays, labelled by the next
    # window_holdout_plays (engine.training.train.held_out_window).
    rebuilt_windows: Literal["time", "members"] = "members"
    window_holdout_plays: int = Field(5, ge=1)
    # --- models (latency scales with trees x depth; measured in bench/bench_page_speed.py)
    title_trees: int = Field(100, ge=1)
    title_leaves: int = Field(31, ge=2)
    row_trees: int = Field(80, ge=1)
    row_leaves: int = Field(15, ge=2)
    row_min_data_in_leaf: int = Field(40, ge=1)
    # The row model's score may only rise with the title model's aggregates of the row
    # (rs_top, rs_mean_visible, rs_play_est): a prior that keeps a small, noisy row data set
    # from learning that better titles make a worse row.
    row_monotone: bool = True
    learning_rate: float = Field(0.08, gt=0)
    min_data_in_leaf: int = Field(40, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    # How logged positions are handled (docs/page_model.md has the measurement): "feature" =
    # the position is a training-only feature, fixed to the first slot when serving;
    # "unbiased_lambdarank" = LightGBM's position-debiased lambdarank; "none".
    position_bias: Literal["feature", "unbiased_lambdarank", "none"] = "feature"
    # The title model's objective: "binary" (P(play), calibrated enough for the row cascade
    # estimate) or "lambdarank" (groups = rows). Chosen by bench/bench_page_quality.py.
    title_objective: Literal["binary", "lambdarank"] = "binary"
    # The title-order guard (engine.training.train.title_order_by_kind): a row kind keeps its
    # ranker's order unless the title model beat it on at least this many held-out rows with a
    # play. On MovieLens the held-out window held 23 Top Picks rows with a play, on which the
    # title model won, while on the members' own next plays it lost a fifth of the row.
    guard_min_rows: int = Field(100, ge=0)
    # binary objective: share of rows without any play kept (weighted back up); such rows
    # carry little signal and most of the training cost.
    negative_row_sample: float = Field(0.3, gt=0, le=1)
    context_features: bool = Field(True, description="False: the no-context ablation")
    refit_all_windows: bool = Field(
        True, description="refit on every window (held-out one included) after validating"
    )
    train_threads: int = Field(2, ge=1)
    seed: int = 0
    # --- serving
    row_titles_scored: int = Field(
        40, ge=1, description="titles of each candidate row the title model scores"
    )
    row_titles_scored_by_kind: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="row_titles_scored for rows of these kinds, e.g. { top_n = 80 }",
    )
    continuation_days: float = Field(
        3.0, gt=0, description="an unfinished play this recent pins Continue Watching on top"
    )
    continuation_min_progress: float = Field(0.05, ge=0, le=1)
    # Row order: "learned" (the row model, stage by stage) or "template" (a fixed editorial
    # order of row kinds: the row-model ablation of `rowrank bench`; see
    # engine.request.selectors.score_rows_by_template).
    row_order: Literal["learned", "cascade", "template"] = "learned"
    row_template: list[str] = Field(
        default_factory=lambda: [
            "continue_watching",
            "top_picks",
            "trending",
            "pvr_genre",
            "because_you_watched",
            "new_releases",
            "pvr_genre",
            "watch_again",
        ],
        description="row kinds in template order; a kind listed n times holds n slots",
    )

    @classmethod
    def from_section(
        cls, section: dict[str, Any], source: str = "engine config"
    ) -> PageModelConfig:
        try:
            return cls.model_validate(section)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    lines.append(
                        f"{source}: [page] unknown key {key!r}; allowed: "
                        + ", ".join(cls.model_fields)
                    )
                else:
                    lines.append(f"{source}: [page] key {key!r}: {err['msg']}")
            raise ConfigError("\n".join(lines)) from None


def lgb_params(
    cfg: PageModelConfig, *, leaves: int, threads: int, objective: str, positions: bool
) -> dict[str, Any]:
    """LightGBM parameters: deterministic (same data, same threads -> the same trees)."""
    params: dict[str, Any] = {
        "objective": objective,
        "metric": "ndcg" if objective == "lambdarank" else "binary_logloss",
        "num_leaves": leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction,
        "feature_fraction_seed": cfg.seed,
        "bagging_seed": cfg.seed,
        "data_random_seed": cfg.seed,
        "seed": cfg.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": threads,
        "verbosity": -1,
        "max_cat_to_onehot": 8,
    }
    if objective == "lambdarank":
        params.update(eval_at=[5, 10], lambdarank_truncation_level=20)
        if positions:
            # Regularizes the learned position factors toward "no bias" (LightGBM >= 4.1).
            params["lambdarank_position_bias_regularization"] = 0.1
    return params


@dataclass(frozen=True)
class RankData:
    """One learning-to-rank data set: rows of X grouped into consecutive query groups."""

    X: np.ndarray  # float32 (n, n_features), all declared features
    y: np.ndarray  # int labels 0/1/2
    group: np.ndarray  # int sizes of consecutive groups
    # Where each example was shown, None when not logged: (n,) or (n, k) for k position
    # features (column 0 is the one LightGBM's position-debiased lambdarank would use).
    position: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.y)


def concat(parts: list[RankData]) -> RankData:
    parts = [p for p in parts if p.n]
    if not parts:
        raise ValueError("no training examples")
    positions = [p.position for p in parts if p.position is not None]
    pos = np.concatenate(positions) if len(positions) == len(parts) else None
    return RankData(
        np.concatenate([p.X for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.group for p in parts]),
        pos,
    )


def fit_ranker(
    model: Literal["title", "row"],
    cfg: PageModelConfig,
    train: RankData,
    valid: RankData | None = None,
    *,
    rounds: int | None = None,
    client: Any = None,
) -> tuple[lgb.Booster, dict[str, float]]:
    """Train one Booster on the declared features (minus context ones when ablated, plus the
    training-only position feature when `position_bias = "feature"` and positions are logged).
    With a Dask `client`, LightGBM's own distributed training fits it across the cluster's
    workers (`fit_on_dask`); the validation below runs here either way.

    lambdarank drops groups whose labels are all equal (no ranking signal, only cost); binary
    keeps `negative_row_sample` of them, weighted back up. With `valid`, NDCG@10 on its groups
    is measured at ten round counts; `valid_ndcg_at_10` is the full model's and `best_rounds`
    the best count (the caller may refit with it on more data)."""
    objective = cfg.title_objective if model == "title" else "lambdarank"
    position = cfg.position_bias == "feature" and train.position is not None
    lgb_position = cfg.position_bias == "unbiased_lambdarank" and train.position is not None
    lgb_position = lgb_position and objective == "lambdarank"
    names = feature_names(model, context=cfg.context_features, position=position)
    cols = _columns(model, cfg.context_features)
    cats = [c for c in categorical_names(model) if c in names]
    trees = cfg.title_trees if model == "title" else cfg.row_trees
    leaves = cfg.title_leaves if model == "title" else cfg.row_leaves
    weight = None
    if objective == "lambdarank":
        train = _informative(train)
        label = train.y
    else:
        train, weight = _sample_negative_groups(train, cfg.negative_row_sample, cfg.seed)
        label = (train.y > 0).astype(np.int8)
    X = _model_matrix(train.X, cols, train.position if position else None)
    params = lgb_params(
        cfg, leaves=leaves, threads=cfg.train_threads, objective=objective, positions=lgb_position
    )
    if model == "row":
        params["min_data_in_leaf"] = cfg.row_min_data_in_leaf
        if cfg.row_monotone:
            rising = {"rs_top", "rs_mean_visible", "rs_play_est"}
            params["monotone_constraints"] = [int(n in rising) for n in names]
            params["monotone_constraints_method"] = "advanced"
    dataset_params = {"max_bin": 63, "verbosity": -1, "data_random_seed": cfg.seed}
    group = train.group if objective == "lambdarank" else None
    n_rounds = rounds or trees
    if client is not None:
        if lgb_position:
            raise ConfigError(
                '[page] position_bias = "unbiased_lambdarank" trains in one process only: '
                "lightgbm.dask takes no positions"
            )
        booster = fit_on_dask(
            client, {**params, **dataset_params}, X, label, weight, group, names, cats, n_rounds
        )
    else:
        dtrain = lgb.Dataset(
            X,
            label=label,
            weight=weight,
            group=group,
            position=_first_column(train.position) if lgb_position else None,
            feature_name=names,
            categorical_feature=cats,
            params=dataset_params,
            free_raw_data=True,
        )
        booster = lgb.train(params, dtrain, num_boost_round=n_rounds)
    metrics: dict[str, float] = {
        "train_examples": float(train.n),
        "train_positives": float((train.y > 0).sum()),
        "rounds": float(n_rounds),
    }
    if valid is not None:
        valid = _informative(valid)
    if valid is not None and valid.n:
        Xv = _model_matrix(valid.X, cols, np.zeros_like(valid.position) if position else None)
        checkpoints = sorted({max(1, round(n_rounds * f / 10)) for f in range(1, 11)})
        curve = [
            ndcg_at(
                np.asarray(
                    booster.predict(
                        Xv, num_iteration=r, num_threads=cfg.train_threads, raw_score=True
                    )
                ),
                valid.y,
                valid.group,
                10,
            )
            for r in checkpoints
        ]
        metrics["valid_ndcg_at_10"] = curve[-1]
        metrics["best_rounds"] = float(checkpoints[int(np.argmax(curve))])
    return booster, metrics


def fit_on_dask(
    client: Any,
    params: dict[str, Any],
    X: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray | None,
    group: np.ndarray | None,
    names: list[str],
    cats: list[str],
    rounds: int,
) -> lgb.Booster:
    """LightGBM's data-parallel training (lightgbm.dask) over the workers of `client`: the
    examples are cut into one part per worker, at query-group boundaries (a group must stay on
    one machine for lambdarank). Each worker bins and histograms its own part and the workers
    merge histograms every split, so the trees differ from one process's in the last bits of the
    bin bounds and split gains: the same objective and parameters, not the same bytes."""
    import dask.array as da

    workers = list(client.scheduler_info()["workers"])
    n_parts = max(1, min(len(workers), len(label)))
    if group is not None:
        ends = np.cumsum(group)
        at = np.searchsorted(ends, len(label) * np.arange(1, n_parts) / n_parts) + 1
        g_cuts = np.unique(np.clip(at, 1, len(group)))
        cuts = np.unique(np.r_[0, ends[g_cuts - 1], len(label)])
        g_bounds = np.r_[0, np.searchsorted(ends, cuts[1:]) + 1]
    else:
        cuts = np.unique(np.linspace(0, len(label), n_parts + 1).round().astype(np.int64))
    rows = tuple(np.diff(cuts).tolist())
    dX = da.from_array(X, chunks=(rows, X.shape[1]))
    dy = da.from_array(label, chunks=(rows,))
    kwargs: dict[str, Any] = {}
    if weight is not None:
        kwargs["sample_weight"] = da.from_array(weight, chunks=(rows,))
    if group is not None:
        kwargs["group"] = da.from_array(group, chunks=(tuple(np.diff(g_bounds).tolist()),))
    # lightgbm.dask and the workers' LightGBM print their port search and network set-up;
    # through `logging` it is quiet unless asked for. LightGBM's log callback is per thread:
    # it is set in the thread each worker runs tasks on.
    client.gather([client.submit(_quiet_lightgbm, workers=[w], pure=False) for w in workers])
    _quiet_lightgbm()
    # Each worker trains on its own threads (Dask's count of them), and nothing is evaluated
    # on the cluster, so neither key goes there.
    params = {k: v for k, v in params.items() if k not in ("num_threads", "eval_at")}
    est_cls = lgb.DaskLGBMRanker if params["objective"] == "lambdarank" else lgb.DaskLGBMClassifier
    est = est_cls(client=client, n_estimators=rounds, **params)
    est.fit(dX, dy, feature_name=names, categorical_feature=cats, **kwargs)
    return est.booster_


def _quiet_lightgbm() -> None:
    logger = logging.getLogger("lightgbm")
    logger.setLevel(logging.ERROR)
    lgb.register_logger(logger)


def _model_matrix(X: np.ndarray, cols: list[int] | None, position: np.ndarray | None) -> np.ndarray:
    """The model's columns of a full declared matrix, plus the position columns if any."""
    Xm = X if cols is None else X[:, cols]
    if position is not None:
        Xm = np.column_stack([Xm, position.reshape(len(Xm), -1).astype(np.float32)])
    return np.ascontiguousarray(Xm, dtype=np.float32)


def _first_column(position: np.ndarray | None) -> np.ndarray | None:
    return None if position is None else position.reshape(len(position), -1)[:, 0]


def _sample_negative_groups(d: RankData, rate: float, seed: int) -> tuple[RankData, np.ndarray]:
    """All groups with a positive label, `rate` of the others (seeded); weights 1 / rate."""
    ends = np.cumsum(d.group)
    starts = ends - d.group
    pos = np.maximum.reduceat(d.y, starts) > 0 if len(starts) else np.empty(0, bool)
    rng = np.random.default_rng([seed, 7])
    keep_group = pos | (rng.random(len(starts)) < rate)
    keep = np.repeat(keep_group, d.group)
    w = np.repeat(np.where(pos, 1.0, 1.0 / rate)[keep_group], d.group[keep_group])
    out = RankData(
        d.X[keep], d.y[keep], d.group[keep_group], None if d.position is None else d.position[keep]
    )
    return out, w


def _informative(d: RankData) -> RankData:
    """Only the groups with at least two different labels."""
    ends = np.cumsum(d.group)
    starts = ends - d.group
    gmax = np.maximum.reduceat(d.y, starts) if len(starts) else np.empty(0)
    gmin = np.minimum.reduceat(d.y, starts) if len(starts) else np.empty(0)
    keep_group = gmax > gmin
    if keep_group.all():
        return d
    keep = np.repeat(keep_group, d.group)
    return RankData(
        d.X[keep],
        d.y[keep],
        d.group[keep_group],
        None if d.position is None else d.position[keep],
    )


def ndcg_at(scores: np.ndarray, labels: np.ndarray, group: np.ndarray, k: int) -> float:
    """Mean NDCG@k (gain 2^label - 1) over groups with at least one positive label."""
    ends = np.cumsum(group)
    out = []
    for s, e in zip(ends - group, ends, strict=True):
        y = labels[s:e].astype(np.float64)
        if y.max(initial=0) <= 0:
            continue
        order = np.lexsort((np.arange(e - s), -scores[s:e]))[:k]
        disc = 1.0 / np.log2(np.arange(2, len(order) + 2))
        dcg = ((2 ** y[order] - 1) * disc).sum()
        ideal = np.sort(y)[::-1][:k]
        idcg = ((2**ideal - 1) * disc[: len(ideal)]).sum()
        out.append(dcg / idcg)
    return float(np.mean(out)) if out else float("nan")


class PageModel:
    """The two fitted Boosters plus the feature order each was trained with."""

    def __init__(self, title: lgb.Booster, row: lgb.Booster, *, context_features: bool) -> None:
        self.title = title
        self.row = row
        self.context_features = context_features
        # Served from compiled copies of the trees; the Boosters stay for training and saving.
        self._title_trees = Forest(title.model_to_string())
        self._row_trees = Forest(row.model_to_string())
        self._title_cols = _columns("title", context_features)
        self._row_cols = _columns("row", context_features)
        # A training-only position feature is served as the first slot (0).
        self._title_pos = (
            len(POSITION_FEATURES["title"])
            if has_position_feature("title", title.feature_name())
            else 0
        )
        self._row_pos = (
            len(POSITION_FEATURES["row"]) if has_position_feature("row", row.feature_name()) else 0
        )
        # For compiled callers: the declared row-matrix column each row-model input reads
        # (-1: a position slot, served as 0); what row_model_input's column selection does.
        declared = range(len(feature_names("row")))
        cols = list(declared) if self._row_cols is None else self._row_cols
        self._row_colmap = np.array([*cols, *[-1] * self._row_pos], dtype=np.int64)

    def score_titles(self, X: np.ndarray) -> np.ndarray:
        """Scores of (row, title) pairs; X holds every declared title feature."""
        if len(X) == 0:
            return np.empty(0)
        pos = np.zeros((len(X), self._title_pos), dtype=np.float32) if self._title_pos else None
        Xm = _model_matrix(X, self._title_cols, pos) if self._title_cols or pos is not None else X
        # Raw scores: log-odds for the binary objective (sigmoid gives P(play), which the row
        # stage's cascade estimate needs), the ranking score for lambdarank.
        return self._title_trees.raw(Xm)

    def score_rows(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.empty(0)
        return self._row_trees.raw(self.row_model_input(X))

    def row_trees(self) -> tuple[tuple[np.ndarray, ...], np.ndarray, float]:
        """For compiled callers of the row model (engine.pipeline's assembly loop): the trees'
        arrays for `_forest_raw`, the declared row-matrix column each model input reads (-1: a
        position slot, served as 0), and LightGBM's zero."""
        return self._row_trees.arrays, self._row_colmap, _LGB_ZERO

    def row_model_input(self, X: np.ndarray) -> np.ndarray:
        """The row Booster's input for a matrix of every declared row feature."""
        pos = np.zeros((len(X), self._row_pos), dtype=np.float32) if self._row_pos else None
        return _model_matrix(X, self._row_cols, pos) if self._row_cols or pos is not None else X

    def save(self, directory: Path) -> dict[str, list[str]]:
        """Write both models as LightGBM text; returns the feature orders for the manifest."""
        self.title.save_model(directory / TITLE_MODEL_FILE)
        self.row.save_model(directory / ROW_MODEL_FILE)
        return {"title": self.title.feature_name(), "row": self.row.feature_name()}

    @classmethod
    def load(
        cls, directory: Path, saved_order: dict[str, list[str]], *, context_features: bool
    ) -> PageModel:
        """Read both Boosters; the manifest's feature order and each Booster's own must equal
        this rowrank's declared order, or ModelLoadError says which position differs."""
        boosters = {}
        for model, fname in (("title", TITLE_MODEL_FILE), ("row", ROW_MODEL_FILE)):
            where = str(directory / fname)
            saved = saved_order.get(model, [])
            check_feature_order(model, saved, context=context_features, where=where)
            try:
                text = (directory / fname).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"cannot read {where}: {exc}") from exc
            problem = model_text_problem(text)
            if problem:
                raise ModelLoadError(f"cannot read {where}: {problem}; retrain the model")
            try:
                booster = lgb.Booster(model_str=text)
            except lgb.basic.LightGBMError as exc:
                raise ModelLoadError(f"cannot read {where}: {exc}") from exc
            if booster.feature_name() != list(saved):
                check_feature_order(
                    model, booster.feature_name(), context=context_features, where=where
                )
                raise ModelLoadError(
                    f"{where}: the model file's features differ from the manifest's: the "
                    "directory is mixed up; retrain it"
                )
            boosters[model] = booster
        objective = boosters["row"].params.get("objective")
        if objective != "lambdarank":  # score_rows serves its raw score as its score
            raise ModelLoadError(
                f"{directory / ROW_MODEL_FILE}: objective {objective!r}, not lambdarank"
            )
        return cls(boosters["title"], boosters["row"], context_features=context_features)


# LightGBM's zero: |x| <= 1e-35 (a float constant) is 0 (c_api.cpp drops such values from a
# dense row; tree.h's IsZero tests for them).
_LGB_ZERO = float(np.float32(1e-35))


def _numbers(kv: dict[str, str], key: str) -> np.ndarray:
    """A tree's array `key` of LightGBM text (absent or empty in a single-leaf tree)."""
    return np.array(kv.get(key, "").split(), dtype=np.float64)


class Forest:
    """A LightGBM text model's trees as flat per-node arrays, scored by one compiled loop
    (`_forest_raw`, numba). LightGBM's rules (c_api.cpp's dense rows, tree.h's
    NumericalDecision and CategoricalDecision) are resolved per node when the model loads:
    where a missing or zero value goes, and which words of the category bitset a node reads.
    `raw(X)` equals `Booster.predict(X, raw_score=True)` bit for bit
    (tests/training/test_page_model.py:
    NaN, zeros, tiny values, negative, fractional, unseen and out-of-range category codes,
    single-leaf trees). Through LightGBM's C API every call pays a setup, and a page calls the
    row model once per row it places (bench/bench_page_speed.py times one call both ways)."""

    def __init__(self, model_text: str) -> None:
        blocks = model_text.split("\nend of trees", 1)[0].split("\nTree=")[1:]
        parts: dict[str, list[np.ndarray]] = {}
        roots: list[int] = []
        n_nodes = n_leaves = n_bits = 0
        for block in blocks:
            kv = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
            if kv.get("is_linear", "0") != "0":
                raise ModelLoadError("linear trees are not supported")
            leaf = np.array(kv["leaf_value"].split(), dtype=np.float64)
            splits = len(leaf) - 1
            threshold = _numbers(kv, "threshold")
            decision = _numbers(kv, "decision_type").astype(np.int64)
            missing = (decision >> 2) & 3  # 0 none, 1 zero, 2 NaN
            default_left = (decision & 2) != 0
            zero_le = threshold >= 0.0
            # NaN is 0 unless the missing type is NaN; a zero is missing for type zero
            nan_left = np.where(missing > 0, default_left, zero_le)
            zero_left = np.where(missing == 1, default_left, zero_le)
            categorical = (decision & 1) == 1
            bounds = _numbers(kv, "cat_boundaries").astype(np.int64)
            cat = np.where(categorical, threshold, 0).astype(np.int64)  # its category set
            lo, hi = (n_bits + bounds[cat], n_bits + bounds[cat + 1]) if len(bounds) else (0, 0)
            new = {
                "feature": _numbers(kv, "split_feature").astype(np.int32),
                "threshold": threshold,
                "categorical": categorical,
                "nan_left": nan_left,
                "zero_left": zero_left,
                # `x <= threshold` (NaN: nan_left) alone is LightGBM's answer for every x,
                # zeros and tiny values included: true of most numerical nodes, which then
                # skip the zero test
                "plain": ~categorical & (np.abs(threshold) > _LGB_ZERO) & (zero_left == zero_le),
                "cat_lo": np.where(categorical, lo, 0),  # its words of cat_bits
                "cat_hi": np.where(categorical, hi, 0),
                "leaf_value": leaf,
                "cat_bits": _numbers(kv, "cat_threshold"),
            }
            for side in ("left_child", "right_child"):
                child = _numbers(kv, side).astype(np.int64)  # >= 0 a node of this tree, < 0 leaf ~c
                new[side] = np.where(child >= 0, n_nodes + child, ~(n_leaves + ~child))
            for key, array in new.items():
                parts.setdefault(key, []).append(array)
            roots.append(n_nodes if splits else ~n_leaves)
            n_nodes, n_leaves = n_nodes + splits, n_leaves + len(leaf)
            n_bits += len(new["cat_bits"])

        def flat(key: str, dtype: Any) -> np.ndarray:
            return np.concatenate(parts[key]).astype(dtype) if blocks else np.empty(0, dtype)

        self.n_trees = len(blocks)
        self.n_splits = n_nodes
        self._arrays = (
            flat("feature", np.int64),
            flat("threshold", np.float64),
            flat("categorical", np.bool_),
            flat("plain", np.bool_),
            flat("nan_left", np.bool_),
            flat("zero_left", np.bool_),
            flat("left_child", np.int64),
            flat("right_child", np.int64),
            flat("cat_lo", np.int64),
            flat("cat_hi", np.int64),
            flat("cat_bits", np.uint32),
            flat("leaf_value", np.float64),
            np.array(roots, dtype=np.int64),
        )
        self.n_plain = int(self._arrays[3].sum())  # split nodes on the plain-compare path

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The flat per-node arrays, in `_forest_raw`'s order."""
        return self._arrays

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (the sum of the trees' leaf values, in tree order) of each row of X."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty(len(X), dtype=np.float64)
        _forest_raw(X, self._arrays, _LGB_ZERO, out)
        return out


@numba.njit(cache=True, nogil=True)
def _forest_raw(X, trees, zero, out):
    """Each row's sum over the trees of the leaf it reaches; node and leaf indices are global,
    a leaf l is written ~l. Tree by tree over all rows, so one tree's nodes stay in cache while
    the rows pass through it; each row still adds its leaves in tree order."""
    feature, threshold, categorical, plain, nan_left, zero_left, left, right = trees[:8]
    cat_lo, cat_hi, cat_bits, leaf_value, roots = trees[8:]
    out[:] = 0.0
    for root in roots:
        for i in range(X.shape[0]):
            node = root
            while node >= 0:
                x = X[i, feature[node]]
                if plain[node]:
                    go_left = x <= threshold[node] or (x != x and nan_left[node])
                elif categorical[node]:  # left when the category's bit is set; NaN, < 0: right
                    go_left = False
                    if x > -1.0 and x < 2147483648.0:
                        c = int(x)
                        word = cat_lo[node] + c // 32
                        if word < cat_hi[node]:
                            go_left = ((cat_bits[word] >> (c % 32)) & 1) == 1
                elif x != x:
                    go_left = nan_left[node]
                elif abs(x) <= zero:
                    go_left = zero_left[node]
                else:
                    go_left = x <= threshold[node]
                node = left[node] if go_left else right[node]
            out[i] += leaf_value[~node]


def model_text_problem(text: str) -> str | None:
    """Why a LightGBM text model is not whole, or None. LightGBM 4.7 can abort or segfault on a
    cut model text (lightgbm-org/LightGBM#3733), so the structure is checked before parsing:
    the header's `tree_sizes` must match the trees present, and both end markers be there."""
    if not text.startswith("tree\n"):
        return "not a LightGBM text model"
    header, sep, _ = text.partition("\nTree=0\n")
    sizes_line = next((ln for ln in header.splitlines() if ln.startswith("tree_sizes=")), None)
    if not sep or sizes_line is None:
        return "no trees in the model text"
    try:
        sizes = [int(x) for x in sizes_line.removeprefix("tree_sizes=").split()]
    except ValueError:
        return "malformed tree_sizes line"
    trees = text.count("\nTree=")
    if trees != len(sizes):
        return f"{trees} trees present, the header lists {len(sizes)}: the file is cut"
    if "\nend of trees\n" not in text or "\nend of parameters\n" not in text:
        return "the end markers are missing: the file is cut"
    return None


def _columns(model: Literal["title", "row"], context: bool) -> list[int] | None:
    if context:
        return None
    full = feature_names(model)
    return [full.index(n) for n in feature_names(model, context=False)]
