"""engine.evaluation.realdata and bench/bench_realdata.py: the splits hold out exactly what they
say and nothing of it reaches training; the metrics, EASE and the bootstrap give known values; the
whole protocol runs on a small generated MovieLens release and prints every row."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
import scipy.sparse as sp

from engine.cli import main
from engine.data.columns import Col
from engine.data.dataset import Dataset, load_dataset
from engine.data.history import to_us
from engine.data.movielens import import_movielens
from engine.evaluation.metrics import bootstrap_ratio_ci
from engine.evaluation.realdata import (
    BASELINES,
    HOLD_OUT,
    MIN_PLAYS,
    deal,
    ease_weights,
    global_split,
    held_out_plays,
    leave_last_out,
    list_scores,
    make_realdata_split,
    poured_n2dcg,
    top_unplayed,
    union_recall,
)
from engine.request.layout import DeviceLayout

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated MovieLens-format release (fixtures/movielens/make_realdata_fixture.py)."""
    make = _load(ROOT / "fixtures" / "movielens" / "make_realdata_fixture.py", "make_realdata")
    out: Path = make.write(tmp_path_factory.mktemp("ml-realdata") / "ml-tiny", seed=3)
    return out


@pytest.fixture(scope="module")
def ds(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("ml-realdata-ds")
    import_movielens(release, out)
    return load_dataset(out)


def _keys(plays: pl.DataFrame) -> set[tuple[str, str, int]]:
    ts = plays[Col.TS].dt.epoch("us").to_list()
    return set(zip(plays[Col.USER_ID].to_list(), plays[Col.TITLE_ID].to_list(), ts, strict=True))


def _last_n_by_hand(plays: pl.DataFrame, n: int, min_plays: int) -> set[tuple[str, str, int]]:
    """Each member's last n plays by (time, title id), computed with plain Python sorting."""
    by_user: dict[str, list[tuple[int, str]]] = {}
    for u, t, ts in _keys(plays):
        by_user.setdefault(u, []).append((ts, t))
    out = set()
    for u, items in by_user.items():
        if len(items) >= min_plays:
            out |= {(u, t, ts) for ts, t in sorted(items)[-n:]}
    return out


# ----- splits -------------------------------------------------------------------------------------


def test_member_split_holds_out_exactly_the_last_plays_and_trains_on_none(ds: Dataset) -> None:
    split = leave_last_out(ds)
    held = _last_n_by_hand(ds.plays, HOLD_OUT, MIN_PLAYS)
    train = _keys(split.train.plays)
    assert held and train.isdisjoint(held)  # the leakage check
    assert train | held == _keys(ds.plays)
    assert split.held_out == len(held)
    h = split.history
    assert len(h.play_user) == len(train)
    for u, truth, at in zip(split.users.tolist(), split.truth, split.at, strict=True):
        uid = str(h.user_ids[u])
        expect = {t for (v, t, _) in held if v == uid}
        assert set(h.title_ids[truth].tolist()) <= expect
        played = h.play_ts[h.user_plays(u)]
        # the page is asked for just after the member's last training play
        assert to_us(at) == played.max() + 1_000_000
    scored = {str(h.user_ids[u]) for u in split.users.tolist()}
    counts = ds.plays.group_by(Col.USER_ID).len()
    eligible = set(counts.filter(pl.col("len") >= MIN_PLAYS)[Col.USER_ID].to_list())
    assert scored == eligible  # every fixture member's held-out titles are new to them


def test_member_validation_comes_from_the_training_side_only(ds: Dataset) -> None:
    test = leave_last_out(ds)
    val = make_realdata_split(ds, "member", validation=True)
    test_held = _keys(ds.plays) - _keys(test.train.plays)
    val_all = _keys(val.train.plays) | (_keys(test.train.plays) - _keys(val.train.plays))
    assert val_all == _keys(test.train.plays)
    assert val_all.isdisjoint(test_held)
    # the validation hold-out is the last plays of the training side: the 5 before the last 5
    assert _keys(test.train.plays) - _keys(val.train.plays) == _last_n_by_hand(
        test.train.plays, HOLD_OUT, MIN_PLAYS
    )


def test_ties_in_time_are_broken_by_title_id() -> None:
    ts = datetime(2020, 1, 1, tzinfo=UTC)
    plays = pl.DataFrame(
        {
            Col.USER_ID: ["a"] * 12 + ["b"] * 9,
            Col.TITLE_ID: [f"t{i:02d}" for i in range(12)] + [f"t{i:02d}" for i in range(9)],
            # a: the last 8 plays share one time; b: too few plays to split
            Col.TS: [ts + timedelta(days=i) for i in range(4)]
            + [ts + timedelta(days=9)] * 8
            + [ts + timedelta(days=i) for i in range(9)],
        }
    ).sample(fraction=1.0, shuffle=True, seed=1)
    mask = held_out_plays(plays, 5, 10)
    held = plays.filter(mask)
    assert sorted(held[Col.TITLE_ID].to_list()) == ["t07", "t08", "t09", "t10", "t11"]
    assert set(held[Col.USER_ID].to_list()) == {"a"}


def test_global_split_trains_on_nothing_at_or_after_the_cut(ds: Dataset) -> None:
    for split in (global_split(ds), make_realdata_split(ds, "global", validation=True)):
        assert split.until is not None
        cut = split.until
        assert split.train.plays[Col.TS].max() < cut  # type: ignore[operator]
        assert split.history.play_ts.max() < to_us(cut)
        assert len(split.users) > 0
        assert all(a == cut for a in split.at)
        after = ds.plays.filter(pl.col(Col.TS) >= pl.lit(cut).dt.cast_time_unit("us"))
        h = split.history
        for u, truth in zip(split.users.tolist(), split.truth, strict=True):
            later = set(after.filter(pl.col(Col.USER_ID) == h.user_ids[u])[Col.TITLE_ID])
            assert set(h.title_ids[truth].tolist()) <= later
    val = make_realdata_split(ds, "global", validation=True)
    test = global_split(ds)
    assert val.until is not None and test.until is not None and val.until < test.until
    assert val.train.plays[Col.TS].max() < val.until  # type: ignore[operator]


# ----- metrics, EASE, bootstrap -------------------------------------------------------------------


def test_list_metrics_on_hand_made_lists() -> None:
    lists = [np.array([3, 1, 2, -1]), np.array([5, 6]), np.array([9, 8, 7])]
    truth = [np.array([1]), np.array([7]), np.array([9, 7])]
    s = list_scores(lists, truth, k=10)
    d3 = 1.0 / np.log2(3)
    d4 = 1.0 / np.log2(4)
    np.testing.assert_allclose(s.ndcg, [d3, 0.0, (1.0 + d4) / (1.0 + d3)])
    np.testing.assert_allclose(s.recall, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(list_scores(lists, truth, k=1).recall, [0.0, 0.0, 1.0])


def test_poured_n2dcg_and_union_recall() -> None:
    layout = DeviceLayout(rows=2, titles_per_row=2, min_row_length=1, visible_rows=2,
                          visible_titles=2)  # fmt: skip
    # [[5, 6], [7, 8]]: the hit at row 2, column 1 has discount 1/log2(3); ideal for one hit is 1
    got = poured_n2dcg(np.array([5, 6, 7, 8]), np.array([7]), [2, 2], layout)
    np.testing.assert_allclose(got, [0.0, 1.0 / np.log2(3)])  # the hit's row holds it all
    # row lengths decide the shape: [[5], [6, 7]] puts 7 at (2, 2), discount 1/log2(4)
    got = poured_n2dcg(np.array([5, 6, 7, 8]), np.array([7]), [1, 2], layout)
    assert got.sum() == pytest.approx(0.5)
    # dealt by anti-diagonals: ranks 0, 1 | 2, 3 fill (1,1), (1,2), (2,1), (2,2)
    dealt = deal(np.arange(10), [4, 3, 3])
    assert dealt.tolist() == [[0, 1, 3, 6], [2, 4, 7, -1], [5, 8, 9, -1]]
    # the third title sits at (2,1) dealt, at (1,3) poured: discounts 1/log2(3) and 1/2
    got = poured_n2dcg(np.array([5, 6, 7, 8]), np.array([7]), [2, 2], layout, dealt=True)
    assert got.tolist() == pytest.approx([0.0, 1 / np.log2(3)])
    u = union_recall([np.array([1, 2, 3]), np.array([4])], [np.array([2, 9]), np.array([5])])
    np.testing.assert_allclose(u, [0.5, 0.0])


def test_top_unplayed_excludes_played_and_breaks_ties_by_index() -> None:
    s = np.array([1.0, 3.0, 3.0, 2.0, -np.inf])
    assert top_unplayed(s, np.array([2]), 10).tolist() == [1, 3, 0]


def test_ease_is_the_per_title_ridge_regression() -> None:
    """Steck's closed form equals, column by column, ridge regression of a title's column on
    all the other columns (the constraint diag(B) = 0)."""
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((30, 6)) < 0.4).astype(np.float32))
    lam = 3.0
    b = ease_weights(x, lam)
    xd = x.toarray().astype(np.float64)
    assert np.all(np.diag(b) == 0.0)
    for j in range(6):
        rest = [i for i in range(6) if i != j]
        a = xd[:, rest]
        w = np.linalg.solve(a.T @ a + lam * np.eye(5), a.T @ xd[:, j])
        np.testing.assert_allclose(b[rest, j], w, rtol=1e-8, atol=1e-10)


def test_bootstrap_ratio_interval_contains_the_estimate() -> None:
    rng = np.random.default_rng(7)
    base = rng.random(200)
    better = base * 1.2 + rng.random(200) * 0.05
    r = bootstrap_ratio_ci(better, base, np.random.default_rng(1))
    assert r.lo <= r.value <= r.hi
    assert r.value == pytest.approx(better.sum() / base.sum())
    assert r.lo > 1.0  # a 20% better list over 200 paired members is clearly better
    same = bootstrap_ratio_ci(base, base, np.random.default_rng(1))
    assert same.value == same.lo == same.hi == pytest.approx(1.0)


# ----- the whole protocol -------------------------------------------------------------------------


@pytest.mark.slow
def test_whole_protocol_on_a_generated_release(release: Path, tmp_path: Path) -> None:
    pytest.importorskip("implicit", reason="the optional `bench` extra is not installed")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        bench = _load(ROOT / "bench" / "bench_realdata.py", "bench_realdata")
        work = tmp_path / "work"
        # `rowrank bench --realdata` and the bench script are one protocol
        cli = ["bench", "--realdata", "--data", str(release), "--out", str(work)]
        assert main([*cli, "--split", "both"]) == 0
        assert bench.main(["--data", str(release), "--work", str(work), "--validation",
                           "--split", "member"]) == 0  # fmt: skip
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for kind in ("member", "global"):
        r = orjson.loads((work / f"{kind}-test-default.json").read_bytes())
        assert r["split"] == f"{kind}-test" and r["tuned_on"] == f"{kind}-validation"
        names = [row["list"] for row in r["rows"]]
        for b in BASELINES:
            assert b.name in names
            assert r["tuning"][b.name]["chosen"] in [p for p, _ in r["tuning"][b.name]["grid"]]
        for ranker in ("pvr", "top_picks", "trending_24h", "because_you_watched"):
            assert f"rowrank {ranker}" in names
        assert "rowrank Top Picks as shown" in names
        assert {p["baseline"] for p in r["page"]} == {b.name for b in BASELINES}
        for p in r["page"]:  # the rows' shares add up to the page's N2DCG
            assert sum(p["by_row"]["page"]) == pytest.approx(p["page_n2dcg"], abs=1e-4)
            assert sum(p["by_row"]["poured"]) == pytest.approx(p["poured_n2dcg"], abs=1e-4)
            # dealt is the better layout of the same list: never below poured on average
            assert p["dealt_n2dcg"] >= p["poured_n2dcg"] - 1e-9
        best = next(row for row in r["rows"] if row["list"] == r["best_baseline"])
        assert best["ndcg10_vs_best"]["value"] == pytest.approx(1.0)
        for row in r["rows"]:
            assert 0.0 <= row["ndcg10"]["value"] <= 1.0
            assert 0.0 <= row["recall10"]["value"] <= 1.0
        assert 0.0 < r["union"]["recall"]["value"] <= 1.0
        assert r["members"] > 0
    val = orjson.loads((work / "member-validation-default.json").read_bytes())
    assert val["split"] == val["tuned_on"] == "member-validation"
    # the cached models were reused: a second directory per split would mean a retrain
    models = sorted(p.name for p in (work / "models").iterdir() if not p.name.startswith("."))
    assert [m.rsplit("-", 1)[0] for m in models] == [
        "global-test",
        "member-test",
        "member-validation",
    ]


def real_movielens_dir() -> Path:
    import os

    env = os.environ.get("ROWRANK_MOVIELENS_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "ml-latest-small"


def test_real_ml_latest_small_splits(tmp_path: Path) -> None:
    src = real_movielens_dir()
    if not (src / "ratings.csv").is_file():
        pytest.skip(f"MovieLens ml-latest-small not found at {src} (set ROWRANK_MOVIELENS_DIR)")
    import_movielens(src, tmp_path)
    ds = load_dataset(tmp_path)
    test = leave_last_out(ds)
    assert len(test.users) == 610  # every member has at least 20 ratings
    assert test.held_out == 610 * HOLD_OUT
    assert test.train.plays.height == 100_836 - 610 * HOLD_OUT
    assert _keys(test.train.plays).isdisjoint(_keys(ds.plays) - _keys(test.train.plays))
    g = global_split(ds)
    assert g.until is not None and g.history.play_ts.max() < to_us(g.until)
    assert 20 <= len(g.users) <= 100


def test_two_runs_compare_paired_by_member(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """bench/compare_realdata.py: B's page N2DCG over A's, paired over the same members, and
    refused when the runs scored different members."""
    compare = _load(ROOT / "bench" / "compare_realdata.py", "compare_realdata")
    users = ["1", "2", "3", "4"]
    a: dict[str, Any] = {
        "split": "member-validation",
        "page_by_member": {"users": users, "n2dcg": [0.2] * 4},
    }
    b: dict[str, Any] = {
        "split": "member-validation",
        "page_by_member": {"users": users, "n2dcg": [0.3] * 4},
    }
    (tmp_path / "a.json").write_bytes(orjson.dumps(a))
    (tmp_path / "b.json").write_bytes(orjson.dumps(b))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "B / A: 1.500 [1.500, 1.500]" in out and "4 / 0 / 0" in out
    b["page_by_member"]["users"] = ["1", "2", "3", "5"]
    (tmp_path / "b.json").write_bytes(orjson.dumps(b))
    with pytest.raises(SystemExit, match="different splits or members"):
        compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
