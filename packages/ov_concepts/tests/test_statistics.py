"""Concentration statistics against hand-computed values."""

import math

import numpy as np
import pytest

from ov_concepts.statistics import concept_stats


def test_a_flat_distribution_has_full_effective_number_and_zero_gini():
    stats = concept_stats(np.full(200, 7))
    assert stats.covered == 200
    assert stats.coverage == 1.0
    assert stats.effective_concepts == pytest.approx(200)
    assert stats.entropy == pytest.approx(math.log(200))
    assert stats.gini == pytest.approx(0.0, abs=1e-12)
    assert stats.top1_share == pytest.approx(2 / 200)
    assert stats.bottom50_share == pytest.approx(0.5)


def test_one_concept_holding_everything():
    counts = np.zeros(100, dtype=np.int64)
    counts[42] = 9
    stats = concept_stats(counts)
    assert stats.covered == 1
    assert stats.coverage == pytest.approx(0.01)
    assert stats.effective_concepts == pytest.approx(1.0)
    assert stats.gini == pytest.approx(0.99)  # (V - 1) / V
    assert stats.top1_share == 1.0
    assert stats.bottom50_share == 0.0
    assert stats.max_count == 9
    assert stats.assignments == 9


def test_small_hand_computed_case():
    counts = np.array([0, 1, 1, 2, 4])  # total 8
    stats = concept_stats(counts)
    shares = np.array([1, 1, 2, 4]) / 8
    assert stats.entropy == pytest.approx(-(shares * np.log(shares)).sum())
    # Gini of [0, 1, 1, 2, 4]: sum |xi - xj| / (2 n^2 mean) = 36 / (2 * 25 * 1.6) = 0.45
    assert stats.gini == pytest.approx(0.45)
    assert stats.top1_share == pytest.approx(4 / 8)  # ceil(5 / 100) = 1 concept
    assert stats.bottom50_share == pytest.approx(1 / 8)  # floor(5 / 2) = 2 least: 0 and 1


def test_empty_counts_are_all_zero_and_bad_input_is_refused():
    assert concept_stats(np.zeros(5, dtype=np.int64)).effective_concepts == 0.0
    with pytest.raises(ValueError, match=r"non-empty vector"):
        concept_stats(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"non-negative integers"):
        concept_stats(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match=r"non-negative integers"):
        concept_stats(np.array([1, -1]))
