"""Frequency tallies and the weighting rules, against hand-computed values."""

import numpy as np
import pytest

from ov_concepts.errors import BalanceError
from ov_concepts.rules import (
    concept_counts,
    concept_table,
    expected_metaclip_size,
    image_weights,
    selection_counts,
    solve_metaclip_threshold,
)

# Five images, K = 3, six concepts; -1 = no concept (below the minimum similarity).
IDS = np.array(
    [
        [0, 1, 2],
        [0, 1, -1],
        [0, 3, -1],
        [0, 1, 4],
        [-1, -1, -1],
    ],
    dtype=np.int32,
)
COUNTS = np.array([4, 3, 1, 1, 1, 0])


def test_counts_tally_each_concept_once_per_image_and_skip_minus_one():
    for chunk in (1, 2, 5, 100):
        np.testing.assert_array_equal(concept_counts(IDS, 6, chunk), COUNTS)


def test_selection_counts_follow_multiplicity():
    selected = np.array([0, 0, 2, 4])
    np.testing.assert_array_equal(selection_counts(IDS, selected, 6, 3), [3, 2, 2, 1, 0, 0])


def test_out_of_range_ids_name_the_row():
    bad = IDS.copy()
    bad[3, 2] = 6
    with pytest.raises(BalanceError, match=r"row 3 holds concept id \[0, 1, 6\] outside -1..5"):
        concept_counts(bad, 6, 2)
    bad[3, 2] = -2
    with pytest.raises(BalanceError, match=r"row 3"):
        concept_counts(bad, 6, 100)


def test_mean_sum_max_weights():
    table = concept_table(COUNTS, "mean", 1.0, None)
    np.testing.assert_allclose(table, [1 / 4, 1 / 3, 1, 1, 1, 0])
    inverse = {0: 1 / 4, 1: 1 / 3, 2: 1.0, 3: 1.0, 4: 1.0}
    rows = [[c for c in row if c >= 0] for row in IDS.tolist()]
    sums = [sum(inverse[c] for c in row) for row in rows]
    np.testing.assert_allclose(image_weights(IDS, table, "sum"), sums)
    means = [s / len(r) if r else 0.0 for s, r in zip(sums, rows, strict=True)]
    np.testing.assert_allclose(image_weights(IDS, table, "mean"), means)
    maxima = [max((inverse[c] for c in r), default=0.0) for r in rows]
    np.testing.assert_allclose(image_weights(IDS, table, "max"), maxima)


def test_alpha_tempers_the_inverse_frequency():
    uniform = image_weights(IDS, concept_table(COUNTS, "mean", 0.0, None), "mean")
    np.testing.assert_allclose(uniform, [1, 1, 1, 1, 0])
    squared = concept_table(COUNTS, "max", 2.0, None)
    np.testing.assert_allclose(squared[:2], [1 / 16, 1 / 9])


def test_metaclip_keep_probability_is_any_concept_passing():
    table = concept_table(COUNTS, "metaclip", 1.0, threshold=2.0)
    np.testing.assert_allclose(table, [0.5, 2 / 3, 1, 1, 1, 0])
    weights = image_weights(IDS, table, "metaclip")
    expected = [1.0, 1 - 0.5 * (1 / 3), 1.0, 1.0, 0.0]
    np.testing.assert_allclose(weights, expected)
    with pytest.raises(BalanceError, match=r"needs a threshold"):
        concept_table(COUNTS, "metaclip", 1.0, None)


def test_solved_metaclip_threshold_hits_the_expected_size(synthetic_assignments):
    ids = synthetic_assignments.ids
    counts = concept_counts(ids, synthetic_assignments.concepts, 4096)
    t = solve_metaclip_threshold(ids, counts, 5000, 4096)
    assert expected_metaclip_size(ids, counts, t, 4096) == pytest.approx(5000, rel=1e-5)
    everything = solve_metaclip_threshold(ids, counts, 10**9, 4096)
    assert everything == counts.max()
    with pytest.raises(BalanceError, match=r"multiple of 4096"):
        solve_metaclip_threshold(ids, counts, 5000, 1000)
