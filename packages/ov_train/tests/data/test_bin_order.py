"""Bin order: per-epoch permutations, the rank split, greedy micro-batch cuts."""

import itertools

import numpy as np
import pytest

from ov_train.data.bin_order import bins_per_rank, epoch_order, micro_batch_spans, rank_bins


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_order(1000, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(1000))
    assert np.array_equal(first, epoch_order(1000, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(1000, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(1000, seed=4, epoch=0))


@pytest.mark.parametrize(("num_bins", "world_size"), [(10, 1), (10, 3), (7, 7), (1001, 8)])
def test_ranks_partition_every_epoch(num_bins, world_size):
    for epoch in (0, 5):
        shares = [rank_bins(num_bins, 9, epoch, rank, world_size) for rank in range(world_size)]
        assert sorted(np.concatenate(shares).tolist()) == list(range(num_bins))
        assert [len(share) for share in shares] == [
            bins_per_rank(num_bins, rank, world_size) for rank in range(world_size)
        ]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_spans_are_greedy_within_budget_and_whole_bins():
    tokens = np.array([5, 3, 4, 9, 12, 1, 1, 1, 8])
    spans = list(micro_batch_spans(tokens, budget=10))
    assert spans == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 8), (8, 9)]
    assert list(micro_batch_spans(tokens, budget=10, start=3)) == spans[2:]
    assert list(micro_batch_spans(tokens, budget=100)) == [(0, 9)]
    assert list(micro_batch_spans(np.array([], dtype=np.int64), budget=5)) == []


def test_spans_restarted_at_any_cut_continue_the_same_cuts():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, 300)
    spans = list(micro_batch_spans(tokens, budget=120))
    assert spans[0][0] == 0
    assert spans[-1][1] == 300
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end == begin
    for index in (1, 17, len(spans) - 1):
        assert list(micro_batch_spans(tokens, 120, spans[index][0])) == spans[index:]
