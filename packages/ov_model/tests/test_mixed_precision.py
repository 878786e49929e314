"""bf16 on the CPU, as a proxy for the CUDA training path: autocast over fp32 weights (the default
on CUDA) and pure bf16 weights run forward and backward, and their loss and gradients stay close
to fp32, with tolerances tight enough that a model without RoPE, or with the ViT's rows and
columns swapped, fails them (checked here, so the tolerance proves its own sensitivity).

Measured on this batch (relative L2 error against fp32; torch 2.15, CPU): autocast: logits 0.5%,
gradients 0.9-1.4%; pure bf16: logits 0.7%, gradients 1.1-1.6%. Mutations in fp32: no RoPE:
gradients 41-48%; ViT RoPE rows/columns swapped or ViT RoPE dropped: vision gradients 12%,
projector 7-8%, LLM 3-4%, logits 2%.
"""

import contextlib
import copy

import pytest
import torch

from ov_model import language_model
from ov_model.packing import IGNORE_INDEX, PackedBatch
from rice_vit import model as vision_model
from rice_vit import rope

GROUPS = ("vision", "projector", "language_model")
GRADIENT_TOLERANCE = 0.04
"""Relative L2 error of each group's gradient (bf16 reaches 1.6%, the mutations 7% or more)."""
LOGITS_TOLERANCE = 0.015
LOSS_TOLERANCE = 1e-3


class Sample:
    def __init__(self, ids, labels, pixel_values=None, image_grid_thw=None):
        self.input_ids = torch.tensor(ids)
        self.labels = torch.tensor(labels)
        self.pixel_values = pixel_values
        self.image_grid_thw = image_grid_thw


def make_sample(seed: int, image: bool) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    length = int(torch.randint(8, 31, (1,), generator=generator))
    ids = torch.randint(10, 500, (length,), generator=generator).tolist()
    pixels = grid = None
    if image:
        h, w = (4, 4) if seed % 3 else (4, 8)
        ids = ids[:3] + [3] + [5] * (h * w // 4) + [4] + ids[3:]
        pixels = torch.randn(h * w, 588, generator=generator)
        grid = torch.tensor([[1, h, w]])
    half = len(ids) // 2
    return Sample(ids, [IGNORE_INDEX] * half + ids[half:], pixels, grid)


@pytest.fixture(scope="module")
def batch() -> PackedBatch:
    return PackedBatch.from_samples([make_sample(i, image=i % 3 != 1) for i in range(6)])


def run(model, batch: PackedBatch, context=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Loss, logits and each group's flattened gradient (zeros where a parameter got none)."""
    model.zero_grad()
    with context():
        out = model(**batch.model_inputs())
    out.loss_sum.backward()
    result = {"loss": out.loss.detach().float(), "logits": out.logits.detach().float()}
    for group in GROUPS:
        result[group] = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten()
                for p in getattr(model, group).parameters()
            ]
        )
    return result


def deviations(result: dict, reference: dict) -> dict[str, float]:
    """Relative L2 error of every entry of `result` against `reference`."""
    return {
        name: float((value - reference[name]).norm() / reference[name].norm())
        for name, value in result.items()
    }


def within_tolerance(deviation: dict[str, float]) -> bool:
    return (
        deviation["loss"] <= LOSS_TOLERANCE
        and deviation["logits"] <= LOGITS_TOLERANCE
        and all(deviation[group] <= GRADIENT_TOLERANCE for group in GROUPS)
    )


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(0).train()


@pytest.fixture(scope="module")
def reference(model, batch):
    return run(model, batch)


def identity_rope(x, cos, sin):
    return x


def swapped_patch_angles(rows, cols, head_dim):
    return rope.patch_rope_angles(cols, rows, head_dim)


MUTATIONS = {
    "no RoPE": [
        ("ov_model.language_model.apply_rope", identity_rope),
        ("rice_vit.model.apply_rope", identity_rope),
    ],
    "no ViT RoPE": [("rice_vit.model.apply_rope", identity_rope)],
    "ViT rows and columns swapped": [("rice_vit.model.patch_rope_angles", swapped_patch_angles)],
}


def test_bf16_autocast_over_fp32_weights_is_close_to_fp32(model, batch, reference):
    seen = []

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return attention(q, k, v, *args, **kwargs)

    attention = language_model.varlen_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(language_model, "varlen_attention", spy)
        patch.setattr(vision_model, "varlen_attention", spy)
        result = run(model, batch, lambda: torch.autocast("cpu", torch.bfloat16))
    assert len(seen) >= 2
    assert set(seen) == {(torch.bfloat16,) * 3}
    deviation = deviations(result, reference)
    assert within_tolerance(deviation), deviation


def test_pure_bf16_weights_run_forward_and_backward_close_to_fp32(model, batch, reference):
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    result = run(bf16, batch)
    assert all(p.grad.dtype is torch.bfloat16 for p in bf16.parameters() if p.grad is not None)
    deviation = deviations(result, reference)
    assert within_tolerance(deviation), deviation


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_tolerance_fails_a_model_without_rope_or_with_swapped_rows_and_columns(
    model, batch, reference, mutation
):
    with pytest.MonkeyPatch.context() as patch:
        for target, replacement in MUTATIONS[mutation]:
            patch.setattr(target, replacement)
        mutated = run(model, batch)  # fp32: the deviation is the mutation's alone
    deviation = deviations(mutated, reference)
    assert not within_tolerance(deviation), deviation
    assert max(deviation[group] for group in GROUPS) > 1.5 * GRADIENT_TOLERANCE, deviation
