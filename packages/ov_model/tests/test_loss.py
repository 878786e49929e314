"""The chunked supervised loss equals plain cross entropy on full logits."""

import torch
import torch.nn.functional as F

from ov_model.loss import cross_entropy_sum
from ov_model.packing import IGNORE_INDEX, position_ids, shifted_targets


def _supervised_sum(hidden, weight, targets, chunk_size=4096):
    """CE summed over the rows whose target is not IGNORE_INDEX, and their number."""
    rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return cross_entropy_sum(hidden, weight, rows, targets[rows], chunk_size), int(rows.numel())


def test_chunked_loss_and_gradients_equal_full_cross_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(97, 16, requires_grad=True)
    targets = torch.randint(0, 97, (50,))
    targets[::3] = IGNORE_INDEX
    total, count = _supervised_sum(hidden, weight, targets, chunk_size=7)
    total.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    expected.backward()
    assert count == int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_no_supervised_token_gives_zero_with_a_working_backward():
    hidden = torch.randn(4, 8, requires_grad=True)
    total, count = _supervised_sum(hidden, torch.randn(10, 8), torch.full((4,), IGNORE_INDEX))
    total.backward()
    assert count == 0
    assert total.item() == 0.0
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_targets_never_cross_a_sample_boundary_and_positions_restart():
    cu = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    labels = torch.arange(9)
    assert shifted_targets(labels, cu).tolist() == [1, 2, -100, 4, -100, 6, 7, 8, -100]
    assert position_ids(cu).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
