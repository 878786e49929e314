"""The training step under bf16 on the CPU, a proxy for the default CUDA path (bf16 autocast over
fp32 master weights): the real `train_step` and a real `Trainer` run with `train.dtype=bf16`, with
loss and gradients close to fp32. The gradient tolerance is checked to fail a model whose RoPE is
dropped or whose ViT rows and columns are swapped, so passing it means something.

Measured (relative L2 error against the fp32 step, CPU, torch 2.15; `pytest -s` prints them):
bf16 autocast: loss 8e-5, gradients 0.8-1.3% per module; the mutations, in fp32: swapped ViT
axes: vision 14%, projector 9%, LLM 4%; no RoPE: 40-45%.
"""

import contextlib
import copy
import math

import pytest
import torch

from ov_train.memory_loader import InMemoryLoader
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.precision import autocast_factory
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan
from ov_train.train_loop import Trainer
from ov_train.train_step import train_step
from rice_vit import rope

CPU = torch.device("cpu")
MODULES = ("vision", "projector", "language_model")
GRADIENT_TOLERANCE = 0.04
LOSS_TOLERANCE = 1e-3


def _identity_rope(x, cos, sin):
    return x


def _swapped_angles(rows, cols, head_dim):
    return rope.patch_rope_angles(cols, rows, head_dim)


MUTATIONS = {
    "no RoPE": [
        ("ov_model.language_model.apply_rope", _identity_rope),
        ("rice_vit.model.apply_rope", _identity_rope),
    ],
    "ViT rows and columns swapped": [("rice_vit.model.patch_rope_angles", _swapped_angles)],
}


def _perturbed(model):
    """The model with norms away from 1 and biases away from 0 (as after some training)."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _one_step(model, recipe, micro_batches, autocast):
    """(loss, gradient per module) of one real train_step, gradients taken before AdamW."""
    model = copy.deepcopy(model)
    freeze(model, recipe.model.trainable)
    optimizer = build_optimizer(model, recipe)
    gradients = {}

    def capture(*_):
        for module in MODULES:
            gradients[module] = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                    for p in getattr(model, module).parameters()
                ]
            )

    optimizer.register_step_pre_hook(capture)
    result = train_step(
        model,
        optimizer,
        build_scheduler(optimizer, recipe),
        StepPlan.of(micro_batches),
        world=SingleProcess(),
        device=CPU,
        autocast=autocast,
        clip_grad_norm=0.0,  # compare raw gradients, not differently clipped ones
        step=1,
    )
    return result.loss, gradients


def _deviation(step, reference) -> dict[str, float]:
    (loss, gradients), (reference_loss, reference_gradients) = step, reference
    deviation = {"loss": abs(loss - reference_loss) / abs(reference_loss)}
    for module in MODULES:
        expected = reference_gradients[module]
        deviation[module] = float((gradients[module] - expected).norm() / expected.norm())
    return deviation


def _within_tolerance(deviation: dict[str, float]) -> bool:
    return deviation["loss"] <= LOSS_TOLERANCE and all(
        deviation[module] <= GRADIENT_TOLERANCE for module in MODULES
    )


@pytest.fixture(scope="module")
def setup(make_recipe, make_batches):
    torch.manual_seed(0)
    from ov_model import PRESETS, LlavaOV

    model = _perturbed(LlavaOV(PRESETS["tiny"]).train())
    recipe = make_recipe()  # stage2-tiny: every module trains
    micro_batches = make_batches(2, 3)
    reference = _one_step(model, recipe, micro_batches, contextlib.nullcontext)
    return model, recipe, micro_batches, reference


def test_a_bf16_autocast_train_step_has_loss_and_gradients_close_to_fp32(setup):
    model, recipe, micro_batches, reference = setup
    bf16 = _one_step(model, recipe, micro_batches, autocast_factory("bf16", CPU))
    deviation = _deviation(bf16, reference)
    print("bf16 autocast step deviation:", deviation)
    assert _within_tolerance(deviation), deviation


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_step_tolerance_fails_without_rope_or_with_swapped_vit_axes(setup, mutation):
    model, recipe, micro_batches, reference = setup
    with pytest.MonkeyPatch.context() as patch:
        for target, replacement in MUTATIONS[mutation]:
            patch.setattr(target, replacement)
        mutated = _one_step(model, recipe, micro_batches, contextlib.nullcontext)
    deviation = _deviation(mutated, reference)
    print(f"{mutation} deviation:", deviation)
    assert not _within_tolerance(deviation), deviation


def test_a_trainer_run_with_train_dtype_bf16_trains_in_bf16_with_fp32_master_weights(
    tmp_path, make_recipe, make_batches
):
    # The reproduction of issue 12: `ov-train run stage2-tiny --set train.dtype=bf16` crashed in
    # the first attention (q/k fp32, v bf16).
    from ov_model import PRESETS, LlavaOV

    losses = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = LlavaOV(PRESETS["tiny"])
        seen = []
        model.language_model.layers[0].self_attn.o_proj.register_forward_hook(
            lambda module, args, output, seen=seen: seen.append(args[0].dtype)
        )
        recipe = make_recipe("train.steps=2", f"train.dtype={dtype}", "checkpoint.every=100")
        result = Trainer(recipe, InMemoryLoader(make_batches(3)), tmp_path / dtype, model=model)
        losses[dtype] = [loss for _, loss in result.run().losses]
        expected = torch.bfloat16 if dtype == "bf16" else torch.float32
        assert set(seen) == {expected}
        assert all(p.dtype is torch.float32 for p in model.parameters())
    assert all(math.isfinite(loss) for loss in losses["bf16"])
    for bf16, fp32 in zip(losses["bf16"], losses["fp32"], strict=True):
        assert abs(bf16 - fp32) <= 1e-2 * abs(fp32)
