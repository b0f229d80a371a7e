"""The bench's statistics against scipy: the interleaving test is scipy's exact binomial test,
and the report's significance marks are corrected for the number of comparisons
(Benjamini-Hochberg, scipy.stats.false_discovery_control), the correction named in the report."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from scipy.stats import binomtest, false_discovery_control

from engine.evaluation.benchmark import (
    correct_for_multiple_comparisons,
    interleaving_result,
    report_comparisons,
)
from engine.evaluation.report import _delta, sig_note


@pytest.mark.parametrize(("a", "b"), [(9, 2), (8, 1), (30, 18), (0, 5), (7, 7), (1, 0)])
def test_interleaving_p_value_is_scipys_exact_binomial_test(a: int, b: int) -> None:
    res = interleaving_result(100, a + b, a, b)
    assert res["p_value"] == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-12)
    assert res["significant"] == (res["p_value"] < 0.05)
    assert res["delta"] == pytest.approx((a - b) / (a + b))


def test_interleaving_exact_test_differs_from_the_normal_approximation() -> None:
    """9 wins to 2: exact p = 0.0654; the old normal approximation said 0.0704."""
    assert interleaving_result(20, 11, 9, 2)["p_value"] == pytest.approx(0.06543, abs=1e-4)


def test_interleaving_without_plays_has_no_p_value() -> None:
    res = interleaving_result(10, 0, 0, 0)
    assert np.isnan(res["p_value"]) and not res["significant"]


def _cmp(p: float) -> dict[str, Any]:
    """A comparison as paired_comparison().to_dict() writes it (significant: p < 0.05)."""
    return {"diff": 0.01, "lo": 0.0, "hi": 0.02, "relative": 0.05, "p_value": p,
            "significant": p < 0.05}  # fmt: skip


def _results(ps: list[float]) -> dict[str, Any]:
    return {
        "offline": {"vs_baseline": {"b": {"m1": _cmp(ps[0]), "m2": _cmp(ps[1])}}},
        "ab": {"vs_baseline": {"b": {"take_rate": _cmp(ps[2])}}},
        "ablation": {"rankers": {"top_n": {"marginal": {"n2dcg": _cmp(ps[3])}}}},
        "interleaving": {"p_value": ps[4], "significant": ps[4] < 0.05},
    }


def test_marks_are_corrected_by_benjamini_hochberg_as_scipy_computes_it() -> None:
    ps = [0.001, 0.04, 0.3, 0.03, 0.6]
    results = _results(ps)
    before = copy.deepcopy(results)
    correct_for_multiple_comparisons(results)
    got = report_comparisons(results)
    assert [c["p_value"] for c in got] == ps  # every comparison of the report, once
    expected = false_discovery_control(np.array(ps), method="bh")
    assert [c["p_adjusted"] for c in got] == pytest.approx(expected.tolist(), rel=1e-12)
    # 0.04 and 0.03 were significant alone; adjusted for five comparisons (0.067) they are not.
    assert [c["significant_uncorrected"] for c in got] == [True, True, False, True, False]
    assert [c["significant"] for c in got] == [True, False, False, False, False]
    mc = results["multiple_comparisons"]
    assert mc["method"] == "Benjamini-Hochberg" and mc["comparisons"] == 5
    assert mc["marks_removed"] == 2
    # The mark the correction removed is gone from the report's cell; the one it kept stays.
    m1, m2 = (
        results["offline"]["vs_baseline"]["b"]["m1"],
        results["offline"]["vs_baseline"]["b"]["m2"],
    )
    assert _delta(before["offline"]["vs_baseline"]["b"]["m2"]).endswith("*")
    assert not _delta(m2).endswith("*")
    assert _delta(m1).endswith("*")
    note = sig_note(results)
    assert "Benjamini-Hochberg" in note and "5 comparisons" in note


def test_a_comparison_without_a_p_value_is_left_out_of_the_correction() -> None:
    results = _results([0.001, 0.04, 0.3, 0.03, 0.6])
    results["offline"]["vs_baseline"]["b"]["m1"]["p_value"] = None  # an empty comparison
    correct_for_multiple_comparisons(results)
    assert results["multiple_comparisons"]["comparisons"] == 4
    assert "p_adjusted" not in results["offline"]["vs_baseline"]["b"]["m1"]
    assert "No correction" in sig_note({})
