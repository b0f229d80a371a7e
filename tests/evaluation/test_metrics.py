"""engine.evaluation.metrics: every metric on tiny pages whose values are worked out by hand in the
comments, plus the bootstrap's sanity (contains the mean, narrows with n, covers ~95%)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation.metrics import (
    average_precision_at_k,
    bootstrap_ci,
    bootstrap_ratio_ci,
    cascade_expected_plays,
    cascade_slot_probs,
    coverage,
    discounts_2d,
    duplicate_rate,
    effective_catalog_size,
    first_appearances,
    genre_diversity,
    hit_at_k,
    list_metrics,
    n2dcg,
    ndcg_at_k,
    page_grid,
    paired_comparison,
    ratio_comparison,
    read_gain,
    recall_at_k,
    visible_recall,
)
from engine.request.layout import DeviceLayout

L3 = math.log2(3)
# A 2 x 3 page of which the device shows the top-left 1 x 2 corner.
SMALL = DeviceLayout(rows=2, titles_per_row=3, min_row_length=1, visible_rows=1, visible_titles=2)
# Row 1: 5 7 9; row 2: 7 (a repeat) 3 and an empty slot.
PAGE = page_grid([np.array([5, 7, 9]), np.array([7, 3])])


# ----- list metrics ----------------------------------------------------------------------------


def test_list_metrics_by_hand() -> None:
    ranked, truth = np.array([4, 2, 9, 1]), np.array([2, 1, 8])
    # k = 3: relevance 0 1 0.
    assert recall_at_k(ranked, truth, 3) == pytest.approx(1 / 3)  # 1 hit / min(3, 3)
    # DCG = 1/log2(3); IDCG = 1 + 1/log2(3) + 1/log2(4) (three hits possible).
    assert ndcg_at_k(ranked, truth, 3) == pytest.approx((1 / L3) / (1 + 1 / L3 + 0.5))
    assert average_precision_at_k(ranked, truth, 3) == pytest.approx((1 / 2) / 3)  # P@2 = 1/2
    assert hit_at_k(ranked, truth, 3) == 1.0
    assert hit_at_k(ranked, truth, 1) == 0.0
    # k = 4: relevance 0 1 0 1 -> AP = (1/2 + 2/4) / min(4, 3) = 1/3; recall 2/3.
    assert average_precision_at_k(ranked, truth, 4) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, truth, 4) == pytest.approx(2 / 3)
    # |truth| < k: a perfect list scores 1 on every metric.
    perfect = list_metrics(np.array([2, 1, 7, 6]), np.array([1, 2]), 4)
    assert perfect == {"Recall@4": 1.0, "NDCG@4": 1.0, "MAP@4": 1.0, "HitRate@4": 1.0}
    # Nothing relevant, or an empty truth: 0.
    assert list_metrics(np.array([3, 4]), np.array([9]), 2)["NDCG@2"] == 0.0
    assert recall_at_k(ranked, np.array([], dtype=np.int64), 3) == 0.0


# ----- page metrics ----------------------------------------------------------------------------


def test_page_grid_pads_and_first_appearances_skip_repeats() -> None:
    assert PAGE.tolist() == [[5, 7, 9], [7, 3, -1]]
    assert first_appearances(PAGE).tolist() == [[True, True, True], [False, True, False]]


def test_n2dcg_by_hand() -> None:
    # Discounts 1/log2(r + c): (1,1) 1, (1,2) and (2,1) 1/log2(3), (2,2) 1/2, (1,3) 1/2.
    d = discounts_2d(2, 3)
    assert d[0, 0] == 1.0
    assert d[0, 1] == d[1, 0] == pytest.approx(1 / L3)
    assert d[1, 1] == d[0, 2] == pytest.approx(0.5)
    truth = np.array([7, 3])
    # 7 at (1,2) counts 1/log2(3); its repeat at (2,1) counts 0; 3 at (2,2) counts 1/2.
    # Ideal for |truth| = 2: the two largest discounts of the 2 x 3 grid, 1 + 1/log2(3).
    expected = (1 / L3 + 0.5) / (1 + 1 / L3)
    assert n2dcg(PAGE, truth, SMALL) == pytest.approx(expected)  # 0.69343
    assert expected == pytest.approx(0.693426, abs=1e-6)
    # Both relevant titles in the two best slots: 1.
    best = page_grid([np.array([7, 3, 9]), np.array([5])])
    assert n2dcg(best, truth, SMALL) == pytest.approx((1 + 1 / L3) / (1 + 1 / L3))
    # Worse placement scores less; no relevant title scores 0.
    assert n2dcg(page_grid([np.array([5, 9, 7]), np.array([1, 2, 3])]), truth, SMALL) < expected
    assert n2dcg(PAGE, np.array([100]), SMALL) == 0.0


def test_n2dcg_repeat_does_not_count_twice() -> None:
    # The same relevant title in every slot of row 1 earns only its first slot's discount.
    grid = page_grid([np.array([7, 7, 7])])
    assert n2dcg(grid, np.array([7]), SMALL) == pytest.approx(1.0)
    assert n2dcg(grid, np.array([7, 8]), SMALL) == pytest.approx(1 / (1 + 1 / L3))


def test_read_gain_by_hand() -> None:
    # Measured weights instead of 1/log2(r + c): row 1 counts 1, 0.5, 0.25, row 2 only its head.
    weights = np.array([[1.0, 0.5, 0.25], [0.2, 0.0, 0.0]])
    truth = np.array([7, 3])
    # PAGE: 7 at (1,2) counts 0.5, its repeat at (2,1) 0, 3 at (2,2) 0 (an unread slot); the
    # ideal for two titles is 1 + 0.5.
    assert read_gain(PAGE, truth, weights) == pytest.approx(0.5 / 1.5)
    # A grid wider than the weights: slots past them count 0.
    wide = page_grid([np.array([1, 2, 4, 7]), np.array([3])])
    assert read_gain(wide, truth, weights) == pytest.approx(0.2 / 1.5)
    # The weights of N2DCG give N2DCG.
    assert read_gain(PAGE, truth, discounts_2d(SMALL.rows, SMALL.titles_per_row)) == pytest.approx(
        n2dcg(PAGE, truth, SMALL)
    )


def test_visible_recall_by_hand() -> None:
    # Visible corner: 5 7 -> one of the two relevant titles; min(|truth| 2, 2 slots) = 2.
    assert visible_recall(PAGE, np.array([7, 3]), SMALL) == pytest.approx(0.5)
    # Three relevant titles but only 2 visible slots: 1 hit / 2.
    assert visible_recall(PAGE, np.array([7, 3, 9]), SMALL) == pytest.approx(0.5)
    assert visible_recall(PAGE, np.array([5, 7]), SMALL) == pytest.approx(1.0)
    # 3 is on the page but not visible.
    assert visible_recall(PAGE, np.array([3]), SMALL) == 0.0


def test_cascade_expected_plays_by_hand() -> None:
    truth = np.array([7])
    kw = {"attraction": 0.5, "row_stop": 0.3}
    # First slot relevant: plays with 0.5.
    assert cascade_expected_plays(
        page_grid([np.array([7, 5])]), truth, col_continue=0.8, **kw
    ) == pytest.approx(0.5)
    # Second slot: reached with 0.8 -> 0.4.
    assert cascade_expected_plays(
        page_grid([np.array([5, 7])]), truth, col_continue=0.8, **kw
    ) == pytest.approx(0.4)
    # Second row: row 1 has no play, go on with 1 - 0.3 -> 0.7 x 0.5 = 0.35.
    two_rows = page_grid([np.array([5]), np.array([7])])
    assert cascade_expected_plays(two_rows, truth, col_continue=0.8, **kw) == pytest.approx(0.35)
    # Two relevant in a row: 0.5 + (1 - 0.5) x 0.8 x 0.5 = 0.7; a repeat adds nothing.
    both = page_grid([np.array([7, 3])])
    assert cascade_expected_plays(both, np.array([7, 3]), col_continue=0.8, **kw) == pytest.approx(
        0.7
    )
    again = page_grid([np.array([7, 7])])
    assert cascade_expected_plays(again, truth, col_continue=0.8, **kw) == pytest.approx(0.5)
    probs = cascade_slot_probs(both, np.array([7, 3]), col_continue=0.8, **kw)
    assert probs.shape == (1, 2)
    assert probs[0].tolist() == pytest.approx([0.5, 0.2])


def test_duplicate_rate_by_hand() -> None:
    # 5 filled slots (5 7 9 7 3), 4 distinct -> 1 - 4/5.
    assert duplicate_rate(PAGE) == pytest.approx(0.2)
    assert duplicate_rate(page_grid([np.array([1, 2]), np.array([3, 4])])) == 0.0
    assert duplicate_rate(page_grid([])) == 0.0


def test_genre_diversity_by_hand() -> None:
    genres = np.array(
        [
            [1, 0, 0, 0],  # title 0: genre A
            [1, 1, 0, 0],  # title 1: A and B
            [0, 0, 0, 1],  # title 2: D
        ],
        dtype=bool,
    )
    assert genre_diversity(np.array([0, 1]), genres) == pytest.approx(2 / 4)  # A, B
    assert genre_diversity(np.array([[0, 2], [1, -1]]), genres) == pytest.approx(3 / 4)
    assert genre_diversity(np.array([-1]), genres) == 0.0


def test_effective_catalog_size_by_hand() -> None:
    # One title takes everything: 1. Four equal titles: 2 x (1+2+3+4)/4 - 1 = 4.
    assert effective_catalog_size(np.array([0, 9, 0])) == pytest.approx(1.0)
    assert effective_catalog_size(np.array([2, 2, 2, 2])) == pytest.approx(4.0)
    # Shares 3/4, 1/4: 2 x (1 x 0.75 + 2 x 0.25) - 1 = 1.5 (order of the input is irrelevant).
    assert effective_catalog_size(np.array([1, 0, 3])) == pytest.approx(1.5)
    assert effective_catalog_size(np.zeros(3)) == 0.0


def test_coverage_by_hand() -> None:
    assert coverage(np.array([1, 1, 2, -1]), 10) == pytest.approx(0.2)


# ----- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.exponential(1.0, 50)
    large = rng.exponential(1.0, 5000)
    a = bootstrap_ci(small, np.random.default_rng(1))
    b = bootstrap_ci(large, np.random.default_rng(1))
    assert a.lo <= a.value <= a.hi and b.lo <= b.value <= b.hi
    assert a.value == pytest.approx(small.mean())
    assert a.n == 50
    # Width shrinks like 1/sqrt(n): 100x the members, about a tenth of the width.
    ratio = (b.hi - b.lo) / (a.hi - a.lo)
    assert 0.05 < ratio < 0.2
    # Same seed, same interval.
    assert bootstrap_ci(small, np.random.default_rng(1)) == a


def test_bootstrap_ci_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    trials = 300
    for _ in range(trials):
        ci = bootstrap_ci(rng.normal(2.0, 1.0, 60), rng, n_boot=400)
        hits += ci.lo <= 2.0 <= ci.hi
    # Percentile bootstrap at n = 60 runs slightly below nominal; far outside [0.88, 0.99]
    # would mean a broken resampler.
    assert 0.88 <= hits / trials <= 0.99


def test_paired_comparison_detects_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.02, 400)
    c = paired_comparison(better, base, np.random.default_rng(0))
    assert c.significant and c.lo > 0 and c.diff == pytest.approx(better.mean() - base.mean())
    assert c.relative == pytest.approx(c.diff / base.mean())
    assert c.p_value < 0.01
    same = paired_comparison(base, base, np.random.default_rng(0))
    assert same.diff == 0.0 and not same.significant
    noise = paired_comparison(base + rng.normal(0, 0.1, 400), base, np.random.default_rng(0))
    assert noise.lo < noise.diff < noise.hi
    with pytest.raises(ValueError, match="shape"):
        paired_comparison(base, base[:10], rng)


def test_ratio_intervals_and_unpaired_comparison() -> None:
    # Member-level sessions and plays: true take-rate 0.3 in A, 0.2 in B.
    rng = np.random.default_rng(5)
    sess_a = rng.integers(1, 5, 2000).astype(float)
    sess_b = rng.integers(1, 5, 2000).astype(float)
    plays_a = rng.binomial(sess_a.astype(int), 0.3).astype(float)
    plays_b = rng.binomial(sess_b.astype(int), 0.2).astype(float)
    ci = bootstrap_ratio_ci(plays_a, sess_a, np.random.default_rng(0))
    assert ci.value == pytest.approx(plays_a.sum() / sess_a.sum())
    assert ci.lo < 0.3 < ci.hi
    c = ratio_comparison(plays_a, sess_a, plays_b, sess_b, np.random.default_rng(0))
    assert c.significant and c.lo < 0.1 < c.hi
    flat = ratio_comparison(plays_a, sess_a, plays_a, sess_a, np.random.default_rng(0))
    assert not flat.significant
