"""One optimizer step of a pipelined model: `train_step`'s rules, run by a pipeline schedule.

The normalisation is `train_step`'s: the step's supervised-target count N is known from the
micro-batches' metadata before any backward, summed over the data-parallel ranks (each counted
once: by its rank at tp = cp = pp = 0), and every micro-batch backpropagates its CE sum / N, so
the gradients are those of the global batch whatever the number of stages, micro-batches or
ranks. What differs is who runs what: every rank of a pipeline draws the step's micro-batches
(they hold the same ones) and hands them to the schedule (`distributed.pipeline.Pipeline.run`),
which forwards and backpropagates them stage by stage; only the last stage computes a loss.

Then `train_step.finish_step`: the loss (summed from the last stage's tp-rank-0 ranks), the
token count, the gradient norm over every stage (each stage's squared norm summed over the
pipeline group, so all ranks clip by the norm of the whole model), the optimizer and schedule
steps. The error rules are `train_step`'s: no supervised token in the step, a micro-batch without
an image under several processes, a non-finite loss or gradient norm, each a `TrainingError`
naming the step before the optimizer touches the parameters.
"""

import torch
import torch.distributed as dist

from ov_train.distributed.pipeline import Pipeline
from ov_train.errors import TrainingError
from ov_train.parallel import World
from ov_train.source import StepPlan
from ov_train.train_step import (
    StepResult,
    check_has_image,
    finish_step,
    global_supervised_count,
)


def pipeline_step(
    pipeline: Pipeline,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: StepPlan,
    *,
    world: World,
    device: torch.device,
    clip_grad_norm: float,
    step: int,
) -> StepResult:
    """Run one optimizer step through `pipeline` (see the module docstring; the precision
    context is the pipeline's own, `Pipeline.autocast`); `step` (1-based) names it in errors."""
    counts = micro_batches.supervised_targets
    total_supervised = global_supervised_count(counts, world, device)
    if total_supervised == 0:
        raise TrainingError(f"step {step}: no supervised token in any of its micro-batches")
    batches = [micro_batch.batch for micro_batch in micro_batches]
    for index, (batch, count) in enumerate(zip(batches, counts, strict=True)):
        check_has_image(batch, world, step=step, index=index)
        found = batch.num_supervised
        if found != count:
            raise TrainingError(
                f"step {step}, micro-batch {index}: its metadata has {found} supervised targets "
                f"where the source announced {count}"
            )
    tokens = sum(int(batch.input_ids.numel()) for batch in batches)
    loss_sum = pipeline.run(batches, total_supervised, step=step)
    # finish_step counts the loss of the last pipeline rank; the V schedule puts the last stage
    # on the first: every rank of the pipeline gets the sum (one scalar).
    dist.all_reduce(loss_sum, group=pipeline.group)
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
        norm_groups=(pipeline.group,),
    )
