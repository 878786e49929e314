"""One optimizer step over several micro-batches, normalised by the step's supervised tokens.

The release's loss is the cross entropy summed over the supervised tokens of the global batch,
divided by their number. A per-micro-batch mean averaged over micro-batches is not that: it
weighs a token of a short micro-batch more than one of a long micro-batch, so 1 micro-batch of
8 samples and 8 micro-batches of 1 sample would train differently. Here:

1. the source announces the supervised-target count of each of the step's micro-batches from
   metadata (`source.StepPlan`), so the number N of the whole step is known before any backward
   without holding the micro-batches; it is summed over the ranks through `World.sum` (in one
   process: itself), and each micro-batch is drawn only when its turn comes;
2. each micro-batch runs forward and backpropagates `loss_sum / N`; the gradients accumulate
   to exactly the gradient of (sum over the step) / N, whatever the split into micro-batches
   (up to float summation order);
3. the gradient norm is clipped, AdamW steps, the schedule advances, gradients are dropped.

In one process, a micro-batch whose loss does not depend on a trainable parameter (in Stage-1, a
text-only row: only the projector trains and it sees no image) is forwarded for its loss but not
backpropagated. Under data parallelism every rank must run the same collectives in the same
order: FSDP2 all-gathers each ViT block before its forward, so a rank whose row has no image
would all-gather a decoder layer while its peers gather a ViT block (gloo aborts or mixes
tensors, NCCL hangs until the timeout), and a rank skipping a backward would skip gradient
reductions its peers run. The data path prevents both: every image-less packed row carries the
padding image of `ov_model.packing.pad_row`, so every rank runs the ViT and the projector, and
every loss reaches a trainable parameter. A micro-batch without an image under data parallelism
is an error naming the step and rank, raised before its forward, not a hang.

Gradients are summed over ranks (FSDP2 is set so, see `distributed.fsdp`): each rank's
`loss_sum / N` with the global N makes the sum the gradient of the global batch.

With tensor, context or pipeline parallelism several ranks hold the same micro-batches (the tp,
cp and pp ranks of one data-parallel rank), so sums over the world count each thing once: the
supervised and token counts come from the rank at tp = cp = pp = 0 of each data-parallel rank;
the loss sum from tp rank 0 of the last pipeline stage (the tp ranks' vocabulary-parallel loss
is the same number; the cp ranks' sums are partial, over their tokens, and all count). With replicas
(HSDP) the cross-replica all-reduce runs once, in the step's last backward. The norm is
clipped over the (possibly sharded) gradients by `distributed.clipping.clip_gradients`. A step
whose loss or gradient norm is not finite raises `TrainingError` before the optimizer touches
the parameters, so the last checkpoint and the model stay sound.
"""

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from ov_model.packing import PackedBatch
from ov_train.errors import TrainingError
from ov_train.optim import trainable_parameters
from ov_train.parallel import World, clip_gradients, sync_replicas
from ov_train.source import StepPlan, model_inputs


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step measured (summed over ranks)."""

    loss: float
    """Cross entropy summed over the step's supervised targets / their number."""
    supervised_tokens: int
    tokens: int
    """Tokens forwarded (image tokens included)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    learning_rates: dict[str, float]
    """Learning rate each parameter group stepped with, by group name."""


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: StepPlan,
    *,
    world: World,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    clip_grad_norm: float,
    step: int,
) -> StepResult:
    """Run one optimizer step (see the module docstring); `step` (1-based) names it in errors."""
    counts = micro_batches.supervised_targets
    total_supervised = global_supervised_count(counts, world, device)
    if total_supervised == 0:
        raise TrainingError(f"step {step}: no supervised token in any of its micro-batches")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for index, (micro_batch, count) in enumerate(zip(micro_batches, counts, strict=True)):
        sync_replicas(model, last_micro_batch=index == len(counts) - 1)
        check_has_image(micro_batch.batch, world, step=step, index=index)
        tokens += int(micro_batch.batch.input_ids.numel())
        with autocast():
            out = model(**model_inputs(micro_batch.batch, device), return_logits=False)
        if out.num_supervised != count:
            raise TrainingError(
                f"step {step}, micro-batch {index}: the model counted {out.num_supervised} "
                f"supervised targets where the batch has {count}"
            )
        if out.loss_sum.requires_grad:  # always, with an image (see the module docstring)
            (out.loss_sum / total_supervised).backward()
        loss_sum += out.loss_sum.detach().double()
    return finish_step(
        optimizer,
        scheduler,
        loss_sum,
        tokens,
        total_supervised,
        world=world,
        device=device,
        clip_grad_norm=clip_grad_norm,
        step=step,
    )


def check_has_image(batch: PackedBatch, world: World, *, step: int, index: int) -> None:
    """TrainingError naming the step, micro-batch and rank when a row has no image under
    several processes (see the module docstring: the ViT's collectives run on every rank)."""
    if world.size > 1 and batch.pixel_values is None:
        raise TrainingError(
            f"step {step}, micro-batch {index} on rank {world.rank} has no image: with several "
            "processes every rank runs the ViT's collectives for every micro-batch, so an "
            "image-less row needs the padding image of ov_model.packing.pad_row"
        )


def holds_whole_batch(world: World) -> bool:
    """Whether this rank speaks for its data-parallel rank's micro-batches when counting them:
    the tp, cp and pp ranks of one data-parallel rank all hold the same micro-batches, so only
    the one at tp = cp = pp = 0 counts their tokens."""
    return all(world.coordinate(dim) == 0 for dim in ("tp", "cp", "pp"))


def holds_loss(world: World) -> bool:
    """Whether this rank's loss sum counts: tp ranks hold the same (vocabulary-parallel, then
    reduced) loss, so only tp rank 0's counts; cp ranks hold partial sums over their tokens,
    so every one counts; only the last pipeline stage computes a loss."""
    return world.coordinate("tp") == 0 and world.coordinate("pp") == world.degree("pp") - 1


def global_supervised_count(counts: Sequence[int], world: World, device: torch.device) -> int:
    """The supervised targets of the whole global batch: this data-parallel rank's micro-batch
    `counts` summed over the data-parallel ranks (once per data-parallel rank)."""
    mine = sum(counts) if holds_whole_batch(world) else 0
    return int(world.sum(torch.tensor([mine], dtype=torch.int64, device=device)).item())


def finish_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_sum: torch.Tensor,
    tokens: int,
    total_supervised: int,
    *,
    world: World,
    device: torch.device,
    clip_grad_norm: float,
    step: int,
    norm_groups: Sequence[object] = (),
) -> StepResult:
    """After the step's backward passes: the global loss and token count, the clipped
    gradient norm, the optimizer and schedule steps. `loss_sum` (float64) is this rank's CE
    sum, `tokens` the tokens it forwarded; `norm_groups`: process groups the gradient norm's
    square is summed over besides the gradients' own meshes (the pipeline's stages)."""
    if not holds_loss(world):
        loss_sum = torch.zeros_like(loss_sum)
    if not holds_whole_batch(world):
        tokens = 0
    sums = world.sum(
        torch.stack([loss_sum, torch.tensor(tokens, dtype=torch.float64, device=device)])
    )
    loss = float(sums[0]) / total_supervised
    total_tokens = int(sums[1])
    if not math.isfinite(loss):
        raise TrainingError(f"step {step}: the loss is {loss}; parameters left unchanged")
    parameters = trainable_parameters(optimizer)
    max_norm = clip_grad_norm if clip_grad_norm > 0 else math.inf
    grad_norm = clip_gradients(parameters, max_norm, groups=norm_groups)
    if not math.isfinite(grad_norm):
        raise TrainingError(f"step {step}: the gradient norm is {grad_norm}; parameters unchanged")
    rates = {group["name"]: float(group["lr"]) for group in optimizer.param_groups}
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, total_supervised, total_tokens, grad_norm, rates)
