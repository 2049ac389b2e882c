"""The statistics of `compare --paired`: McNemar's test against SciPy's own binomial and chi-square, and the paired
bootstrap of F1 on items whose answer is known."""
from __future__ import annotations

import pytest
from scipy import stats

from deepcourse.results.paired import mcnemar, paired_bootstrap
from deepcourse.task import PairedItem


def answers(only_a: int, only_b: int, both: int = 5, neither: int = 3) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_is_the_exact_binomial_test_for_few_discordant_items() -> None:
    result = mcnemar(*answers(only_a=2, only_b=9))
    assert result["only_a_right"] == 2 and result["only_b_right"] == 9 and "exact" in result["test"]
    assert result["p_value"] == pytest.approx(stats.binomtest(2, 11, 0.5).pvalue)


def test_mcnemar_is_chi_square_with_continuity_correction_for_many() -> None:
    result = mcnemar(*answers(only_a=20, only_b=40))
    assert "chi-square" in result["test"]
    assert result["p_value"] == pytest.approx(stats.chi2.sf((abs(20 - 40) - 1) ** 2 / 60, df=1))


def test_mcnemar_without_a_discordant_item_finds_no_difference() -> None:
    assert mcnemar(*answers(only_a=0, only_b=0))["p_value"] == 1.0


def test_paired_bootstrap_of_f1() -> None:
    a = [PairedItem(str(i), "g", "p", 1, 2, 2) for i in range(40)]  # F1 0.5 on every sentence
    b = [PairedItem(str(i), "g", "g", 2, 2, 2) for i in range(40)]  # F1 1
    result = paired_bootstrap(a, b, resamples=200, seed=3)
    assert result["difference"] == pytest.approx(0.5)
    assert result["p_value"] == pytest.approx(1 / 201)  # no resample comes near a difference of 0
    assert result == paired_bootstrap(a, b, resamples=200, seed=3)  # seeded
    same = paired_bootstrap(a, a, resamples=200, seed=3)
    assert same["difference"] == 0 and same["p_value"] == 1.0
