"""`clip_gradients` on plain tensors is `torch.nn.utils.clip_grad_norm_`, bit for bit (sharded
gradients are checked against one process in test_data_parallel)."""

import math

import pytest
import torch

from ov_train.parallel import clip_gradients


def _parameters(seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    parameters = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    for p in parameters:
        p.grad = torch.randn(p.shape, generator=generator) * 3
    frozen = torch.nn.Parameter(torch.randn(5, generator=generator), requires_grad=False)
    return [*parameters, frozen]


@pytest.mark.parametrize("max_norm", [0.5, 100.0, math.inf])
def test_plain_gradients_clip_exactly_like_torch(max_norm):
    ours, theirs = _parameters(0), _parameters(0)
    norm = clip_gradients(ours, max_norm)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm == float(want)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:3]]))
    assert float(clipped) == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_no_gradient_measures_zero_and_a_nan_gradient_reports_nan():
    parameters = _parameters(1)
    assert clip_gradients([p for p in parameters if p.grad is None], 1.0) == 0.0
    parameters[0].grad[0, 0] = float("nan")
    assert math.isnan(clip_gradients(parameters, 1.0))
