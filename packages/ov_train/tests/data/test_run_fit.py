"""run_fit: micro-batches per epoch cut as the loader cuts them, epochs per run, and the
warnings for a packing capacity that does not divide the micro-batch budget."""

import numpy as np
import pytest

from ov_train.data.bin_order import plan_epoch
from ov_train.data.run_fit import capacity_warnings, largest_divisor_below, run_fit


def _fit(bin_tokens, *, capacity, budget, steps=3, accumulation=2, seed=0):
    return run_fit(
        np.asarray(bin_tokens),
        samples=10,
        capacity=capacity,
        recipe_name="stage1-tiny",
        steps=steps,
        grad_accumulation=accumulation,
        micro_batch_tokens=budget,
        seed=seed,
    )


def test_full_bins_two_per_micro_batch_give_exact_epochs():
    fit = _fit([100] * 4, capacity=100, budget=200)
    assert (fit.bins, fit.tokens, fit.samples) == (4, 400, 10)
    assert fit.micro_batches_per_epoch == 2
    assert fit.micro_batches_per_run == 6
    assert fit.tokens_per_run_at_most == 1200
    assert fit.epochs_per_run == 3.0
    assert fit.warnings == []
    assert "3 steps x 2 micro-batches of <= 200 tokens" in fit.summary()
    assert "-> 3.00 epochs per run" in fit.summary()


def test_micro_batches_per_epoch_are_the_loaders_cut_of_epoch_zero():
    tokens = np.array([90, 30, 60, 100, 10, 70, 50, 80, 20], dtype=np.int64)
    fit = _fit(tokens, capacity=100, budget=200, steps=10, accumulation=1, seed=7)
    expected = len(plan_epoch(tokens, 7, 0, 200))
    assert fit.micro_batches_per_epoch == expected
    assert fit.epochs_per_run == round(10 / expected, 4)


def test_a_budget_that_is_not_a_multiple_of_the_capacity_is_warned_with_the_unused_share():
    (warning,) = _fit([100] * 4, capacity=100, budget=250).warnings
    assert "train.micro_batch_tokens 250 is not a multiple of packing capacity 100" in warning
    assert "at most 2 full bins (200 tokens), 50 tokens (20%) of the budget unused" in warning
    assert "--capacity 50 or set train.micro_batch_tokens to 200" in warning


def test_a_capacity_above_the_budget_counts_the_bins_over_it():
    (warning,) = capacity_warnings(np.array([250, 150, 300, 200]), 300, 200, "stage2-8b")
    assert "packing capacity 300 is above stage2-8b's train.micro_batch_tokens 200" in warning
    assert "(2 of 4 bins here)" in warning
    assert "--capacity 200" in warning


@pytest.mark.parametrize(
    ("budget", "capacity", "expected"), [(250, 100, 50), (32768, 10000, 8192), (200, 100, 100)]
)
def test_largest_divisor_below(budget, capacity, expected):
    assert largest_divisor_below(budget, capacity) == expected
    assert budget % expected == 0
    assert expected <= capacity
