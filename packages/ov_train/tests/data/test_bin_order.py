"""The global micro-batch stream: per-epoch permutations, greedy cuts, positions across epochs,
and rank shares that interleave to the same stream at every world size."""

import itertools

import numpy as np
import pytest

from ov_train.data.bin_order import (
    EpochPlans,
    StreamPosition,
    epoch_order,
    micro_batch_spans,
    plan_epoch,
)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_order(1000, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(1000))
    assert np.array_equal(first, epoch_order(1000, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(1000, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(1000, seed=4, epoch=0))


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


def test_an_epoch_plan_cuts_the_epoch_order_into_every_bin_once():
    tokens = np.random.default_rng(1).integers(1, 60, 101)
    plan = plan_epoch(tokens, seed=5, epoch=2, budget=100)
    assert np.array_equal(plan.order, epoch_order(101, 5, 2))
    bins = np.concatenate([plan.bins(m) for m in range(len(plan))])
    assert np.array_equal(bins, plan.order)
    spans = list(micro_batch_spans(tokens[plan.order], 100))
    assert [(int(a), int(b)) for a, b in itertools.pairwise(plan.cuts)] == spans


def test_positions_advance_across_epoch_ends():
    plans = EpochPlans(np.full(10, 40), seed=0, budget=100)  # 5 micro-batches per epoch
    assert len(plans[0]) == len(plans[7]) == 5
    assert plans.advance(StreamPosition(0, 3), 1) == StreamPosition(0, 4)
    assert plans.advance(StreamPosition(0, 3), 2) == StreamPosition(1, 0)
    assert plans.advance(StreamPosition(0, 3), 13) == StreamPosition(3, 1)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_rank_shares_interleave_to_the_global_stream_at_every_world_size(world_size):
    plans = EpochPlans(np.random.default_rng(2).integers(1, 60, 23), seed=4, budget=90)
    start = StreamPosition(0, 2)
    rounds = 12
    shares = [
        list(itertools.islice(plans.rank_positions(start, rank, world_size), rounds))
        for rank in range(world_size)
    ]
    interleaved = [shares[rank][k] for k in range(rounds) for rank in range(world_size)]
    one_rank = list(itertools.islice(plans.rank_positions(start, 0, 1), rounds * world_size))
    assert interleaved == one_rank
    assert len({position.epoch for position in one_rank}) > 1  # the check crosses epochs


def test_an_empty_stream_is_refused():
    with pytest.raises(ValueError, match="at least one bin"):
        EpochPlans(np.zeros(0, dtype=np.int64), seed=0, budget=10)
