"""`rowrank train --tune-budget`: validation cut from the training data only, choices that beat
the given keys on it, reproducible, recorded, and served."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyWorld

import engine
from engine.config import EngineConfig, build_rankers, parse_config
from engine.data.dataset import load_dataset
from engine.data.history import History
from engine.training.train import summary, train
from engine.training.tune import Validation, score_ranker, tune


def _only(cfg: EngineConfig, name: str, **keys: object) -> EngineConfig:
    doc = cfg.to_document()
    doc["rankers"] = {name: {**doc["rankers"][name], **keys}}
    doc["assembly"]["pinned"] = []
    return parse_config(doc, source="test")


@pytest.fixture(scope="module")
def history(tiny_world: TinyWorld) -> History:
    ds = load_dataset(tiny_world.path)
    return History.from_dataset(ds, ds.clock - timedelta(days=3))


def test_validation_holds_out_each_members_last_plays_inside_the_training_data(
    history: History,
) -> None:
    v = Validation.split(history, holdout=3, max_members=10_000, min_kept=2, seed=0)
    assert len(v.members) > 50
    for i, u in enumerate(v.members.tolist()):
        s = history.user_plays(u)
        titles, ts = history.play_title[s], history.play_ts[s]
        # the truth is exactly the member's last 3 plays, all before the cut-off
        assert set(v.truth[i].tolist()) == set(titles[-3:].tolist())
        assert ts[-1] < history.cutoff_us
        # the request is just after the last kept play, before the first held-out one
        assert ts[-4] < v.at_us[i] <= ts[-3]
        kept = v.history.user_plays(u)
        assert kept.stop - kept.start == len(titles) - 3
    assert len(v.history.play_user) < len(history.play_user)


def test_tuning_moves_a_bad_key_and_records_every_trial(
    history: History, tiny_config: EngineConfig
) -> None:
    # No popularity at all is a poor PVR on this world: the search must find better.
    cfg = _only(tiny_config, "pvr", popularity_weight=0.0)
    result = tune(cfg, history, budget_s=300, seed=0, max_members=300)
    assert result.complete
    given = next(t for t in result.trials if t.ranker == "pvr" and not t.keys)
    best = max(result.trials, key=lambda t: t.ndcg_at_10)
    assert best.ndcg_at_10 > given.ndcg_at_10 * 1.05
    chosen = result.chosen["pvr"]
    assert chosen["popularity_weight"] > 0.0
    assert any(t.keys == chosen and t.ndcg_at_10 == best.ndcg_at_10 for t in result.trials)
    # every value of the declared space was tried once, the given one as the baseline
    space = cfg.rankers["pvr"].config.tune_space()
    assert len(result.trials) == 1 + sum(
        sum(v != getattr(cfg.rankers["pvr"].config, k) for v in vals) for k, vals in space.items()
    )
    # the recorded score is what the chosen keys score when fitted again
    v = Validation.split(history, 5, 300, 5, 0)
    ranker = build_rankers(result.apply(cfg))["pvr"].fit(v.history)
    assert score_ranker(ranker, v, v.requests()) == pytest.approx(best.ndcg_at_10, abs=1e-12)
    # the same data, config and seed choose the same keys
    again = tune(cfg, history, budget_s=300, seed=0, max_members=300)
    assert again.chosen == result.chosen
    assert [t.ndcg_at_10 for t in again.trials] == [t.ndcg_at_10 for t in result.trials]


def test_no_budget_keeps_the_config_and_a_small_budget_says_it_stopped(
    history: History, tiny_config: EngineConfig
) -> None:
    off = tune(tiny_config, history, budget_s=0, seed=0)
    assert off.trials == [] and off.apply(tiny_config) is tiny_config
    short = tune(_only(tiny_config, "pvr"), history, budget_s=1e-6, seed=0)
    assert not short.complete and short.chosen == {}


def test_train_serves_the_chosen_keys_and_says_what_it_chose(
    tiny_world: TinyWorld, tiny_config: EngineConfig, tmp_path: Path
) -> None:
    doc = tiny_config.to_document()
    doc["rankers"]["pvr"]["popularity_weight"] = 0.0
    doc["rankers"] = {k: doc["rankers"][k] for k in ("pvr", "trending_24h", "continue_watching")}
    doc["assembly"]["pinned"] = []
    cfg = parse_config(doc, source="test")
    manifest = train(tiny_world.path, tmp_path / "m", engine_config=cfg, tune_budget=120)
    tuning = manifest["tuning"]
    assert tuning["config_given"]["rankers"]["pvr"]["popularity_weight"] == 0.0
    chosen = tuning["chosen"]["pvr"]
    assert manifest["config"]["rankers"]["pvr"]["popularity_weight"] == chosen["popularity_weight"]
    served = engine.load(tmp_path / "m")
    pvr = served.rankers["pvr"]
    assert pvr.config.popularity_weight == chosen["popularity_weight"] != 0.0
    text = summary(manifest)
    assert "pvr" in text and f"popularity_weight={chosen['popularity_weight']}" in text
    assert np.isfinite(manifest["metrics"]["timings"]["tuning_s"])


def test_cli_refuses_a_negative_budget(tiny_world: TinyWorld, tmp_path: Path) -> None:
    from engine.cli import EXIT_USAGE, TUNE_BUDGET_S, build_parser, main

    args = build_parser().parse_args(["train", str(tiny_world.path), str(tmp_path / "m")])
    assert args.tune_budget == TUNE_BUDGET_S > 0 and args.seed == 0
    code = main(["train", str(tiny_world.path), str(tmp_path / "m"), "--tune-budget", "-1"])
    assert code == EXIT_USAGE and not (tmp_path / "m").exists()
