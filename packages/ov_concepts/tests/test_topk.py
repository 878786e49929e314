"""Blocked top-K against the brute-force oracle: exact, ties to the lower id, any block size."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import ov_concepts.topk as topk_module
from ov_concepts.topk import (
    block_candidates,
    blocked_topk,
    blocked_topk_deferred,
    brute_force_topk,
    merge_running,
)


def oracle(images: torch.Tensor, concepts: torch.Tensor, k: int):
    """Independent reference: float64 scores, Python sort by (-score, id)."""
    scores = (images.double() @ concepts.double().T).tolist()
    ids = [sorted(range(len(row)), key=lambda j, row=row: (-row[j], j))[:k] for row in scores]
    return torch.tensor(ids)


@pytest.mark.parametrize("seed", range(6))
def test_small_integer_inputs_with_many_ties_match_the_oracle_for_every_block_size(seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-2, 3, (23, 3), generator=g).float()
    concepts = torch.randint(-2, 3, (97, 3), generator=g).float()  # few distinct scores: ties
    for k in (1, 5, 17, 97):
        expected = oracle(images, concepts, k)
        for block in (1, 4, 16, 50, 97, 1000):
            for margin, exact_rows in ((1, 1), (3, 2), (8, 64)):
                scores, ids = blocked_topk(images, concepts, k, block, margin, exact_rows)
                assert torch.equal(ids, expected), (k, block, margin, exact_rows)
                exact = (images.double() @ concepts.double().T).gather(1, expected)
                assert torch.equal(scores.double(), exact)


def test_duplicated_concepts_rank_by_lower_id():
    concepts = torch.eye(4).repeat(5, 1)  # ids 0, 4, 8, ... are the same vector
    images = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    scores, ids = blocked_topk(images, concepts, k=3, concept_block=3)
    assert ids.tolist() == [[0, 4, 8], [2, 6, 10]]
    assert scores.tolist() == [[1.0] * 3, [1.0] * 3]


def test_random_float_inputs_match_brute_force_exactly():
    g = torch.Generator().manual_seed(7)
    images = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=1)
    concepts = torch.nn.functional.normalize(torch.randn(5000, 32, generator=g), dim=1)
    expected_scores, expected_ids = brute_force_topk(images, concepts, 10)
    assert torch.equal(expected_ids, oracle(images, concepts, 10))
    for block in (128, 1000, 4096, 5000):
        scores, ids = blocked_topk(images, concepts, 10, block)
        assert torch.equal(ids, expected_ids)
        torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-6)


def test_rows_are_sorted_best_first():
    g = torch.Generator().manual_seed(1)
    scores, _ = blocked_topk(
        torch.randn(50, 8, generator=g), torch.randn(400, 8, generator=g), 12, 64
    )
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_bf16_blocks_are_exact_on_representable_inputs():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(-3, 4, (40, 6), generator=g).to(torch.bfloat16)
    concepts = torch.randint(-3, 4, (300, 6), generator=g).to(torch.bfloat16)
    _, ids = blocked_topk(images, concepts, 9, 64)
    assert torch.equal(ids, oracle(images.float(), concepts.float(), 9))


def test_block_candidates_repairs_a_boundary_tie_that_topk_cut():
    # Eleven equal scores, k=2, margin 1: topk keeps three of them in an arbitrary order; the
    # boundary tie reaches the last candidate, so the row is recomputed exactly.
    scores = torch.tensor([[0.5] * 11 + [0.9]])
    values, ids = block_candidates(scores, first_id=100, k=2, tie_margin=1)
    assert ids.tolist() == [[111, 100]]
    assert values.tolist() == [[pytest.approx(0.9), 0.5]]


def test_merge_keeps_running_entries_first_on_equal_scores():
    running = (torch.tensor([[0.7, 0.5]]), torch.tensor([[3, 9]]))
    later = (torch.tensor([[0.7, 0.6]]), torch.tensor([[20, 21]]))
    scores, ids = merge_running(running, later, 3)
    assert ids.tolist() == [[3, 20, 21]]
    assert scores[0].tolist() == pytest.approx([0.7, 0.7, 0.6])


@pytest.mark.parametrize(
    ("images", "concepts", "k", "block", "message"),
    [
        ((2, 3), (5, 4), 1, 4, "do not match"),
        ((2, 3), (5, 3), 6, 4, "k must be in 1..5"),
        ((2, 3), (5, 3), 0, 4, "k must be in 1..5"),
        ((2, 3), (5, 3), 2, 0, "concept_block"),
    ],
)
def test_bad_arguments_are_refused(images, concepts, k, block, message):
    with pytest.raises(ValueError, match=message):
        blocked_topk(torch.ones(images), torch.ones(concepts), k, block)


_SYNCING = {"__bool__", "item", "tolist", "cpu", "numpy", "nonzero", "__int__", "__float__"}


class _CountHostSyncs(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device (read a value or a
    data-dependent shape): on CUDA each is a stall; on CPU they are counted the same way."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_blocked_topk_syncs_with_the_host_once_per_call_not_per_concept_block():
    g = torch.Generator().manual_seed(11)
    images = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=1)
    concepts = torch.nn.functional.normalize(torch.randn(4000, 16, generator=g), dim=1)
    expected = brute_force_topk(images, concepts, 10)[1]
    for block in (100, 4000):  # 40 concept blocks, then 1
        with _CountHostSyncs() as counter:
            _, ids = blocked_topk(images, concepts, 10, concept_block=block)
        assert counter.calls == ["__bool__"]  # the overflow flag, read once
        assert torch.equal(ids, expected)
    # the per-block path, which the fallback uses, does sync per block: the counter sees it
    with _CountHostSyncs() as counter:
        topk_module.blocked_topk_per_block(images, concepts, 10, concept_block=100)
    assert len(counter.calls) >= 40


def test_the_deferred_path_has_no_data_dependent_host_step():
    # On the meta device a tensor has a shape but no values: reading a value, a data-dependent
    # shape (nonzero, boolean masks) or branching on data raises. 30 concept blocks run through.
    images = torch.empty(64, 32, device="meta")
    concepts = torch.empty(3000, 32, device="meta")
    scores, ids, overflow = blocked_topk_deferred(images, concepts, 10, concept_block=100)
    assert scores.shape == ids.shape == (64, 10)
    assert overflow.shape == ()
    with pytest.raises(RuntimeError, match="meta"):
        bool(overflow)  # the check itself: would fail like any host sync would


def test_more_risky_rows_than_exact_rows_fall_back_to_the_per_block_path(monkeypatch):
    concepts = torch.eye(4).repeat(6, 1)  # 6 copies of each vector: every row has boundary ties
    images = torch.eye(4)[[0, 1, 2, 3, 0, 2]]
    expected = [[c + 4 * i for i in range(3)] for c in (0, 1, 2, 3, 0, 2)]
    fallbacks = []
    real = topk_module.blocked_topk_per_block
    monkeypatch.setattr(
        topk_module, "blocked_topk_per_block", lambda *a: fallbacks.append(1) or real(*a)
    )
    _, ids = blocked_topk(images, concepts, 3, concept_block=8, tie_margin=1, exact_rows=6)
    assert ids.tolist() == expected
    assert fallbacks == []  # 6 risky rows, 6 exact rows per block: no fallback
    _, ids = blocked_topk(images, concepts, 3, concept_block=8, tie_margin=1, exact_rows=2)
    assert ids.tolist() == expected
    assert fallbacks == [1]


def _block_score_oracle(images, concepts, k, block):
    """Top-k by (-score, id) of the very numbers the blocked matmuls produce, fully sorted."""
    scores = torch.cat(
        [images @ concepts[first : first + block].T for first in range(0, len(concepts), block)],
        dim=1,
    )
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return order


def test_near_ties_are_exact_with_respect_to_the_block_scores():
    # 100 base concepts, each with 30 near-copies perturbed at the fp32 rounding level: many
    # scores of a row differ by a few ulps, so fp32 rounding decides their order.
    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.normalize(torch.randn(100, 48, generator=g), dim=1)
    noise = torch.randn(100, 30, 48, generator=g) * 3e-8
    concepts = (base[:, None, :] + noise).reshape(-1, 48)
    concepts = concepts[torch.randperm(len(concepts), generator=g)]
    images = torch.nn.functional.normalize(torch.randn(60, 48, generator=g), dim=1)
    exact64 = images.double() @ concepts.double().T
    k = 12
    best64 = exact64.sort(dim=1, descending=True).values[:, k - 1]
    for block in (64, 1000, 3000):
        scores, ids = blocked_topk(images, concepts, k, concept_block=block)
        # exact: identical to sorting the block scores themselves, ties to the lower id
        assert torch.equal(ids, _block_score_oracle(images, concepts, k, block)), block
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
        # and against float64 truth, a chosen concept is never worse than the true k-th by more
        # than fp32 rounding of a 48-term dot product (a few 1e-8)
        chosen64 = exact64.gather(1, ids)
        assert float((best64 - chosen64.min(dim=1).values).max()) < 2e-7, block
