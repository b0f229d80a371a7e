"""The guards: a row kind keeps its ranker's order where the title model ordered that kind's
rows worse on the held-out window (and the page then shows the ranker's order); the rows keep
the editorial template's order where the row model did not beat it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from engine.pipeline import order_titles
from engine.request.features import feature_names
from engine.request.scorers import PageModelConfig, RankData
from engine.training.train import (
    row_model_wins,
    template_row_scores,
    title_model_wins,
    title_order_by_kind,
)
from rankers._common import make_row


def _window(kinds: list[int], size: int) -> SimpleNamespace:
    n = len(kinds) * size
    X = np.zeros((n, len(feature_names("title"))), dtype=np.float32)
    X[:, feature_names("title").index("row_rank")] = np.tile(np.arange(size), len(kinds))
    return SimpleNamespace(
        title_x=X,
        position=None,
        row_kind=np.array(kinds),
        row_size=np.full(len(kinds), size),
        store=SimpleNamespace(kinds=("top_picks", "trending")),
    )


def test_the_guard_keeps_the_ranker_order_only_where_the_model_loses() -> None:
    size = 10
    kinds = [0, 1] * 20  # top_picks and trending rows alternate
    rng = np.random.default_rng(0)
    y = np.zeros(len(kinds) * size, dtype=np.int8)
    scores = np.zeros(len(y))
    for r, k in enumerate(kinds):
        s = slice(r * size, (r + 1) * size)
        if k == 0:  # the ranker's first title is played; the model puts it last
            y[s.start] = 1
            scores[s] = np.arange(size)  # ascending: the played title scores lowest
        else:  # the ranker's 8th title is played; the model puts it first
            y[s.start + 7] = 1
            scores[s] = rng.random(size)
            scores[s.start + 7] = 2.0
    w = _window(kinds, size)
    d = RankData(w.title_x, y, w.row_size, None)
    got = title_order_by_kind(scores, d, w)  # type: ignore[arg-type]
    assert got["top_picks"]["ranker_order"] > got["top_picks"]["title_model"]
    assert got["trending"]["title_model"] > got["trending"]["ranker_order"]
    assert got["top_picks"]["rows_with_a_play"] == 20
    # the model orders trending only where it has shown it on enough rows with a play
    assert title_model_wins(got["trending"], PageModelConfig(guard_min_rows=20))
    assert not title_model_wins(got["trending"], PageModelConfig(guard_min_rows=21))
    assert not title_model_wins(got["top_picks"], PageModelConfig(guard_min_rows=0))


def test_a_guarded_row_keeps_its_ranker_order_on_the_page() -> None:
    a = make_row(ranker="a", kind="top_picks", title="A", titles=np.arange(5), scores=-np.arange(5))
    b = make_row(ranker="b", kind="pvr", title="B", titles=np.arange(5, 9), scores=-np.arange(4))
    model = np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.1, 0.4, 0.3, 0.2])
    free, _ = order_titles([a, b], model)
    guarded, idx = order_titles([a, b], model, [True, False])
    assert free[0].titles.tolist() == [3, 1, 2, 4, 0]
    assert guarded[0].titles.tolist() == [0, 1, 2, 3, 4]
    assert guarded[1].titles.tolist() == free[1].titles.tolist() == [6, 7, 8, 5]
    # the row's scores are still the title model's, title by title
    assert np.allclose(guarded[0].scores, model[idx[0]])


def test_template_scores_give_each_row_its_template_slot() -> None:
    w = SimpleNamespace(
        row_size=np.array([2, 2, 2, 2]),
        row_visible=np.array([2, 2, 2, 2]),
        row_kind=np.array([1, 0, 1, 1]),
        store=SimpleNamespace(kinds=("top_picks", "trending")),
        page_size=np.array([3, 1]),
    )
    title_scores = np.array([0.1, 0.2, 0.9, 0.8, 0.5, 0.6, 0.3, 0.3])
    got = template_row_scores(w, title_scores, ("top_picks", "trending", "pvr_genre"))  # type: ignore[arg-type]
    # page 1: Top Picks takes slot 0, the better trending row slot 1, the other trending row
    # finds no slot left and comes last; page 2's lone trending row takes slot 1
    assert np.argsort(-got[:3]).tolist() == [1, 2, 0]
    assert -1.5 < got[3] < -0.5


def test_the_row_model_orders_rows_only_where_it_beats_the_template() -> None:
    report = {"valid_ndcg_at_10": 0.8, "template_ndcg_at_10": 0.7}
    assert row_model_wins(report)
    assert not row_model_wins({**report, "template_ndcg_at_10": 0.8})


def test_a_template_guard_in_the_manifest_orders_rows_by_the_template(tiny_model) -> None:
    import engine
    from engine.pipeline import Engine

    eng = engine.load(tiny_model)

    def with_row_order(row_order: str) -> Engine:
        return Engine(
            config=eng.config,
            page_config=eng.page_config.model_copy(update={"row_order": "learned"}),
            history=eng.history,
            rankers=eng.rankers,
            store=eng.store,
            model=eng.model,
            model_version=eng.model_version,
            manifest={**eng.manifest, "row_order": row_order},
        )

    assert with_row_order("learned").row_scorer.method == "learned"
    assert with_row_order("template").row_scorer.method == "template"
    # and the engine reports the order it serves
    assert with_row_order("template").page_config.row_order == "template"
