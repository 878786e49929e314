"""The optimizer step: the loss is normalised over the whole step, whatever its micro-batches."""

import contextlib
import copy
from dataclasses import dataclass

import pytest
import torch

from ov_train.errors import TrainingError
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.rng import deterministic_mode
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan
from ov_train.train_step import train_step

CPU = torch.device("cpu")


def _setup(model, recipe):
    model = copy.deepcopy(model)
    freeze(model, recipe.model.trainable)
    optimizer = build_optimizer(model, recipe)
    return model, optimizer, build_scheduler(optimizer, recipe)


def _step(model, optimizer, scheduler, micro_batches, step=1, world=None):
    return train_step(
        model,
        optimizer,
        scheduler,
        StepPlan.of(micro_batches),
        world=world or SingleProcess(),
        device=CPU,
        autocast=contextlib.nullcontext,
        clip_grad_norm=1.0,
        step=step,
    )


def _capture_gradients(optimizer):
    captured = []

    def hook(opt, args, kwargs):
        captured.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])

    optimizer.register_step_pre_hook(hook)
    return captured


def _run(model, recipe, step_batches):
    model, optimizer, scheduler = _setup(model, recipe)
    before = [p.detach().clone() for p in model.parameters()]
    gradients = _capture_gradients(optimizer)
    losses = [
        _step(model, optimizer, scheduler, batches, step).loss
        for step, batches in enumerate(step_batches, 1)
    ]
    updates = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    return losses, gradients, updates


def test_accumulating_8x1_equals_one_micro_batch_of_8(tiny_model, make_recipe, samples):
    recipe = make_recipe("optim.weight_decay=0.1", "train.steps=3")
    steps = [samples.make_samples(8, seed=s) for s in range(3)]
    one_by_eight = [[samples.pack(step)] for step in steps]
    eight_by_one = [[samples.pack([s]) for s in step] for step in steps]
    with deterministic_mode(True):
        losses_a, grads_a, updates_a = _run(tiny_model, recipe, one_by_eight)
        losses_b, grads_b, updates_b = _run(tiny_model, recipe, eight_by_one)
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    for step_a, step_b in zip(grads_a, grads_b, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * step_a[0].abs().max().item())
    assert any(u.abs().max() > 0 for u in updates_a)
    for a, b in zip(updates_a, updates_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-8)


def test_a_mean_of_micro_batch_means_would_train_differently(tiny_model, make_recipe, samples):
    """The check above can fail: weighting micro-batches equally gives other gradients."""
    recipe = make_recipe()
    model, _, _ = _setup(tiny_model, recipe)
    parts = [samples.pack(samples.make_samples(1, seed=s)) for s in range(2)]
    packed = samples.pack([*samples.make_samples(1, seed=0), *samples.make_samples(1, seed=1)])
    counts = []
    for part in parts:
        out = model(**part.batch.model_inputs(), return_logits=False)
        (out.loss / len(parts)).backward()
        counts.append(out.num_supervised)
    naive = model.projector.mlp[0].weight.grad.clone()
    model.zero_grad()
    model(**packed.batch.model_inputs(), return_logits=False).loss.backward()
    exact = model.projector.mlp[0].weight.grad
    assert counts[0] != counts[1]
    assert not torch.allclose(naive, exact, rtol=1e-3, atol=0)


def test_stage1_steps_over_text_only_micro_batches(tiny_model, make_recipe, samples):
    recipe = make_recipe(base="stage1-tiny")
    model, optimizer, scheduler = _setup(tiny_model, recipe)
    text_only = samples.pack([samples.make_sample(7, image=False)])
    with_image = samples.pack([samples.make_sample(8, image=True)])
    before = model.projector.mlp[0].weight.detach().clone()
    result = _step(model, optimizer, scheduler, [text_only, with_image])
    assert result.supervised_tokens == text_only.num_supervised + with_image.num_supervised
    assert not torch.equal(before, model.projector.mlp[0].weight)
    assert set(result.learning_rates) == {"projector.decay", "projector.no_decay"}


@dataclass(frozen=True)
class _OneOfTwoRanks:
    """Rank 1 of a 2-process world whose peer contributes nothing (enough to reach the
    data-parallel rules of train_step without starting processes)."""

    rank: int = 1
    size: int = 2
    device: torch.device = CPU
    data_rank: int = 1
    data_size: int = 2

    def coordinate(self, dim):
        return 1 if dim == "dp_shard" else 0

    def degree(self, dim):
        return 2 if dim == "dp_shard" else 1

    def sum(self, value):
        return value

    def barrier(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("base", ["stage1-tiny", "stage2-tiny"])
def test_under_data_parallelism_a_micro_batch_without_an_image_is_an_error(
    tiny_model, make_recipe, samples, base
):
    """In one process Stage-1 skips the backward of a text-only row (above); with peers, a rank
    without an image would run other collectives than they do, so it is an error naming the fix,
    raised before the forward."""
    model, optimizer, scheduler = _setup(tiny_model, make_recipe(base=base))
    text_only = samples.pack([samples.make_sample(7, image=False)])
    padded = samples.pack([samples.make_sample(8, image=True)])
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(
        TrainingError, match=r"step 3, micro-batch 1 on rank 1 has no image: .*pad_row"
    ):
        _step(model, optimizer, scheduler, [padded, text_only], step=3, world=_OneOfTwoRanks())
    assert len(calls) == 1


def test_a_step_without_supervised_tokens_is_an_error(tiny_model, make_recipe, samples):
    model, optimizer, scheduler = _setup(tiny_model, make_recipe())
    unsupervised = samples.pack([samples.make_sample(3, supervised=False)])
    with pytest.raises(TrainingError, match="step 5: no supervised token"):
        _step(model, optimizer, scheduler, [unsupervised], step=5)


def test_a_non_finite_loss_stops_before_the_optimizer_moves(tiny_model, make_recipe, samples):
    model, optimizer, scheduler = _setup(tiny_model, make_recipe())
    with torch.no_grad():
        model.language_model.norm.weight[0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(TrainingError, match="step 2: the loss is nan; parameters left unchanged"):
        _step(model, optimizer, scheduler, [samples.pack(samples.make_samples(2))], step=2)
    assert not optimizer.state
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, before[name], rtol=0, atol=0, equal_nan=True)
