"""Plan statistics, checked on hand-worked cases."""

import numpy as np
import pytest

from ov_packing import compute_stats, pack
from ov_packing.stats import batched_padding, format_stats


def test_batched_padding_pads_each_batch_to_its_longest():
    # batches [3, 5] -> 2 padding; [1, 4] -> 3; [2] -> 0
    assert batched_padding(np.array([3, 5, 1, 4, 2]), 2) == 5


def test_stats_of_a_hand_worked_plan():
    # capacity 10: 6+4 | 7+3 | 5 and 12 rejected -> 3 bins, 25 tokens, 5 padding
    plan = pack(np.array([6, 4, 7, 3, 12, 5]), capacity=10)
    stats = compute_stats(plan, batch_size=2)
    assert stats.samples_in == 6
    assert stats.samples_packed == 5
    assert stats.rejected == {"tokens_over_capacity": 1, "patches_over_capacity": 0}
    assert stats.bins == 3
    assert stats.lower_bound_bins == 3  # ceil(25 / 10)
    assert stats.fill_efficiency == pytest.approx(25 / 30)
    assert (stats.samples_per_bin_min, stats.samples_per_bin_max) == (1, 2)
    assert stats.samples_per_bin_mean == pytest.approx(5 / 3)
    assert stats.padding_tokens == 5
    assert stats.padding_pad_to_capacity == 50 - 25
    # input order without the rejected sample: [6, 4] [7, 3] [5] -> 2 + 4 + 0
    assert stats.padding_batched == 6
    assert stats.compression_vs_pad_to_capacity == pytest.approx(5.0)
    assert stats.compression_vs_batched == pytest.approx(1.2)
    assert "+0.000%" in format_stats(stats)


def test_perfect_packing_reports_no_padding_left():
    stats = compute_stats(pack(np.array([5, 5, 10]), capacity=10))
    assert stats.padding_tokens == 0
    assert stats.compression_vs_batched is None
    assert "no padding left" in format_stats(stats)


def test_empty_plan_has_zero_stats():
    stats = compute_stats(pack(np.zeros(0, dtype=np.int32), capacity=10))
    assert (stats.bins, stats.samples_in, stats.padding_tokens) == (0, 0, 0)


def test_lower_bound_accounts_for_the_patch_budget():
    # tokens alone need 1 bin of 100; patches 6 + 6 + 6 in bins of 10 need 2 (18 / 10), and the
    # three samples over half the patch budget cannot share: 3
    plan = pack(
        np.array([5, 5, 5, 5]), patches=np.array([6, 6, 6, 1]), capacity=100, patch_capacity=10
    )
    stats = compute_stats(plan)
    assert stats.lower_bound_terms == {
        "tokens": 1,
        "large_tokens": 0,
        "patches": 2,
        "large_patches": 3,
    }
    assert stats.lower_bound_bins == 3
    assert stats.bins == 3
    assert "lower bound 3 from large patches, +0.000%" in format_stats(stats)
