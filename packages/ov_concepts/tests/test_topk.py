"""Blocked top-K against the brute-force oracle: exact, ties to the lower id, any block size."""

import pytest
import torch

from ov_concepts.topk import block_candidates, blocked_topk, brute_force_topk, merge_running


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
            for margin in (1, 3, 8):
                scores, ids = blocked_topk(images, concepts, k, block, margin)
                assert torch.equal(ids, expected), (k, block, margin)
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
