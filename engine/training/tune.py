"""`rowrank train --tune-budget SECONDS`: choose ranker keys on validation data cut from the
training data itself.

The validation split holds out each member's last `holdout` plays of the training History (the
test period, after the cut-off, is never read). Every ranker whose config declares a search space
(`RankerConfig.tune_space`) is fitted on what is left and asked for each sampled member's rows at
the time just after the member's last kept play; its rows, poured into one list in the order it
proposes them, are scored by NDCG@10 against the held-out titles. That is the ranker's
contribution to a page: what it would show, in its own order.

The search is coordinate descent, one key at a time from the built-in value, over the declared
values. All rankers advance together, one trial each per round, so a cheap ranker is not starved
by an expensive one; a trial is started only when the ranker's last trial time still fits in the
budget. The trials and their order depend only on the data, the config and the seed, so two runs
that finish the same trials choose the same keys (the manifest says whether the search finished).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.candidates import Ranker, RankerConfig
from engine.config import EngineConfig, build_rankers, parse_config
from engine.data.columns import DEVICES
from engine.data.history import History, drop_last_plays
from engine.evaluation.metrics import ndcg_at_k
from engine.pipeline import resolve_country
from engine.request.context import RequestContext

K = 10
# A key replaces the current value only when it raises validation NDCG@10 by at least this share
# and this much: with about a thousand members, smaller differences are within the split's noise
# (a row that scores 0.0004 "doubling" to 0.0008 is one more hit, not a better key).
MIN_GAIN = 0.01
MIN_GAIN_ABS = 0.001


@dataclass(frozen=True)
class Validation:
    """Each sampled member's held-out plays, and the History without them."""

    history: History
    members: np.ndarray  # History user indices scored
    at_us: np.ndarray  # request time per member: just after their last kept play
    truth: list[np.ndarray]  # held-out title indices per member
    holdout: int

    @classmethod
    def split(
        cls, history: History, holdout: int, max_members: int, min_kept: int, seed: int
    ) -> Validation:
        kept, dropped = drop_last_plays(history, holdout)
        n_kept = np.diff(kept.user_offsets)
        n_held = np.bincount(history.play_user[dropped], minlength=history.n_users)
        members = np.flatnonzero((n_kept >= min_kept) & (n_held > 0))
        if len(members) > max_members:
            rng = np.random.default_rng(seed)
            members = np.sort(rng.choice(members, max_members, replace=False))
        at = np.array([int(kept.play_ts[kept.user_plays(int(u)).stop - 1]) + 1 for u in members])
        truth = [
            np.unique(
                history.play_title[history.user_plays(int(u))][dropped[history.user_plays(int(u))]]
            )
            for u in members
        ]
        return cls(kept, members.astype(np.int64), at.astype(np.int64), truth, holdout)

    def requests(self, default_country: str | None = None) -> list[RequestContext]:
        h = self.history
        out = []
        for u, at in zip(self.members.tolist(), self.at_us.tolist(), strict=True):
            last_device = int(h.play_device[h.user_plays(u).stop - 1])
            device = DEVICES[last_device] if last_device >= 0 else DEVICES[0]
            ctx = RequestContext(str(h.user_ids[u]), device, datetime.fromtimestamp(at / 1e6, UTC))
            out.append(resolve_country(ctx, h, default_country))
        return out


def score_ranker(ranker: Ranker, v: Validation, requests: list[RequestContext]) -> float:
    """Mean NDCG@10 over the validation members of the ranker's rows poured into one list."""
    total = 0.0
    for ctx, truth in zip(requests, v.truth, strict=True):
        rows = ranker.propose(ctx, v.history)
        poured = np.concatenate([r.titles for r in rows]) if rows else np.empty(0, np.int64)
        _, first = np.unique(poured, return_index=True)
        total += ndcg_at_k(poured[np.sort(first)], truth, K)
    return total / max(len(requests), 1)


@dataclass
class Trial:
    ranker: str
    keys: dict[str, Any]  # the keys that differ from the given config
    ndcg_at_10: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranker": self.ranker,
            "keys": self.keys,
            "ndcg_at_10": round(self.ndcg_at_10, 6),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class _Search:
    """Coordinate descent over one ranker's declared keys, from its given config."""

    name: str
    given: RankerConfig
    space: dict[str, tuple[Any, ...]]
    best_keys: dict[str, Any] = field(default_factory=dict)
    best_score: float = float("nan")
    last_seconds: float = 0.0
    _steps: Iterator[tuple[str, Any]] | None = None

    def __post_init__(self) -> None:
        given = self.given.model_dump()
        self._steps = iter(
            [(k, v) for k, values in self.space.items() for v in values if v != given[k]]
        )

    def next_keys(self) -> dict[str, Any] | None:
        assert self._steps is not None
        for key, value in self._steps:
            keys = {**self.best_keys, key: value}
            if keys != self.best_keys:
                return keys
        return None


@dataclass(frozen=True)
class TuneResult:
    budget_s: float
    seed: int
    spent_s: float
    complete: bool
    validation: dict[str, Any]
    trials: list[Trial]
    chosen: dict[str, dict[str, Any]]  # ranker -> keys changed from the given config

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "seed": self.seed,
            "spent_s": round(self.spent_s, 2),
            "complete": self.complete,
            "validation": self.validation,
            "chosen": self.chosen,
            "trials": [t.to_dict() for t in self.trials],
        }

    def apply(self, cfg: EngineConfig) -> EngineConfig:
        """The engine config with the chosen keys."""
        return with_keys(cfg, self.chosen, "keys chosen by tuning")


def tune(
    cfg: EngineConfig,
    history: History,
    *,
    budget_s: float,
    seed: int = 0,
    holdout: int = 5,
    max_members: int = 1000,
    min_kept: int = 5,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Choose keys for every ranker of `cfg` that declares a search space, within `budget_s`."""
    t0 = time.perf_counter()
    v = Validation.split(history, holdout, max_members, min_kept, seed)
    info = {
        "holdout": holdout,
        "members": len(v.members),
        "held_out_titles": int(sum(len(t) for t in v.truth)),
    }
    searches = []
    for name, spec in cfg.rankers.items():
        if space := spec.config.tune_space():
            searches.append(_Search(name, spec.config, space))
    if budget_s <= 0 or len(v.members) == 0 or not searches:
        return TuneResult(budget_s, seed, 0.0, budget_s <= 0, info, [], {})
    requests = v.requests(cfg.serving.default_country)
    trials: list[Trial] = []

    def run(s: _Search, keys: dict[str, Any]) -> Trial:
        t = time.perf_counter()
        trial_cfg = with_keys(cfg, {s.name: keys}, f"a tuning trial of {s.name}")
        ranker = build_rankers(trial_cfg)[s.name].fit(v.history)
        trial = Trial(s.name, keys, score_ranker(ranker, v, requests), time.perf_counter() - t)
        s.last_seconds = trial.seconds
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        return trial

    def fits(s: _Search) -> bool:
        return time.perf_counter() - t0 + s.last_seconds <= budget_s

    complete = True
    for s in searches:  # the given keys first: every choice is measured against them
        if not fits(s):
            complete = False
            continue
        s.best_score = run(s, {}).ndcg_at_10
    active = [s for s in searches if s.best_score == s.best_score]  # baseline measured
    while active:
        for s in list(active):
            keys = s.next_keys()
            if keys is None:
                active.remove(s)
                continue
            if not fits(s):
                complete = False
                active.remove(s)
                continue
            trial = run(s, keys)
            gain = trial.ndcg_at_10 - s.best_score
            if gain > s.best_score * MIN_GAIN and gain >= MIN_GAIN_ABS:
                s.best_keys, s.best_score = keys, trial.ndcg_at_10
    chosen = {s.name: s.best_keys for s in searches if s.best_keys}
    return TuneResult(budget_s, seed, time.perf_counter() - t0, complete, info, trials, chosen)


def with_keys(cfg: EngineConfig, keys: dict[str, dict[str, Any]], why: str) -> EngineConfig:
    """`cfg` with ranker keys replaced ({ranker instance: {key: value}})."""
    if not any(keys.values()):
        return cfg
    doc = cfg.to_document()
    for name, changed in keys.items():
        doc["rankers"][name].update(changed)
    return parse_config(doc, source=f"engine config + {why}")


def print_trial(enabled: bool) -> Callable[[Trial], None] | None:
    """A line on stderr per trial while tuning runs (the budget can be minutes)."""
    if not enabled:
        return None

    def show(t: Trial) -> None:
        keys = ", ".join(f"{k}={v}" for k, v in t.keys.items()) or "built-in keys"
        print(
            f"tuning {t.ranker}: {keys}: NDCG@10 {t.ndcg_at_10:.4f} ({t.seconds:.1f} s)",
            file=sys.stderr,
        )

    return show


def tuning_lines(result: dict[str, Any]) -> list[str]:
    """Lines for the training summary: per ranker, the given keys' score and what was chosen."""
    if not result.get("budget_s"):
        return ["ranker keys: as configured (no --tune-budget)"]
    if not result.get("trials"):
        return ["ranker keys: as configured (nothing to tune within the budget)"]
    v = result["validation"]
    lines = [
        f"tuning: {len(result['trials'])} trials in {result['spent_s']:.0f} s of a "
        f"{result['budget_s']:.0f} s budget "
        f"({'finished' if result['complete'] else 'stopped by the budget'}); "
        f"validation: each member's last {v['holdout']} training plays held out, "
        f"{v['members']} members, NDCG@10 of each ranker's rows",
    ]
    by_ranker: dict[str, list[dict[str, Any]]] = {}
    for t in result["trials"]:
        by_ranker.setdefault(t["ranker"], []).append(t)
    for name, ts in by_ranker.items():
        base = next((t["ndcg_at_10"] for t in ts if not t["keys"]), float("nan"))
        keys = result["chosen"].get(name, {})
        best = max(t["ndcg_at_10"] for t in ts)
        what = ", ".join(f"{k}={v}" for k, v in keys.items()) if keys else "built-in keys kept"
        lines.append(f"  {name:<22} {len(ts):>3} trials  built-in {base:.4f} -> {best:.4f}  {what}")
    return lines
