"""Pipeline parallelism: the model cut into stages over the "pp" ranks, run by a
`torch.distributed.pipelining` schedule.

`build_pipeline(model, recipe, world)`:
1. plans the stages (`pipeline_plan`: which decoder layers each stage runs, which stages this
   rank holds; stage 0 adds the ViT, projector and embeddings, the last stage the final norm,
   head and loss) and moves the model's modules into this rank's `StageModule`s under their
   full-model names (`pipeline_stage_module`; the rest of the model is dropped);
2. gives each stage module the same chain as a whole model (`parallelize`: tensor parallel,
   activation checkpointing, FSDP2 over the data-parallel mesh), so PP composes with FSDP and TP
   as torchtitan does it: one FSDP root per stage. With a data-parallel degree of 1 there is
   nothing to shard and FSDP2 is left out (bf16 then runs under autocast). The zero-bubble
   schedules split backward into an input-gradient pass and a later weight-gradient pass over
   the parameters the module holds when the first starts: with FSDP2 resharding after forward
   those are the sharded ones, not the gathered ones the graph used, and the weight gradients
   come out wrong (measured), so they need `reshard_after_forward = false` under FSDP2;
3. wraps each in a `PipelineStage` with explicit input and output examples. torch's shape
   inference would run the stage on dummy data it cannot pack (the peer then waits forever);
   the shapes are static instead: the first stage takes (1, T) token ids, every other stage the
   (T, hidden) states, T = `parallel.static_row_tokens(train.micro_batch_tokens)`, the length
   the data path pads every row to (T / tp under sequence parallelism: a tp rank sends its
   share of the tokens); the last stage returns its micro-batch's CE sum (0-d);
4. builds the schedule (1F1B, Interleaved1F1B, InterleavedZeroBubble, ZBVZeroBubble) with
   `scale_grads=False`: the loss function divides each micro-batch's CE sum by the step's global
   supervised count N (summed over the data-parallel ranks), so the gradients are the global
   batch's, as in `train_step`; torch's default would divide them again by the micro-batches.

Metadata (cu_seqlens, positions, supervised rows, image layout) never travels as a tensor: every
rank holds the step's micro-batches and reads it through `MicroBatchChannel`; the stage tells
its module the micro-batch index just before each forward (`_SideChannelStage`).

`Pipeline.model` joins this rank's stages into one module with the full model's names: the
optimizer, the gradient clipping and the DCP checkpoint see it like a (partial) `LlavaOV`.
"""

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
)
from torch.torch_version import TorchVersion

from ov_model.model import LlavaOV
from ov_model.packing import PackedBatch
from ov_train.config import ParallelConfig, Recipe
from ov_train.distributed.parallelize import fsdp_param_dtype, parallelize
from ov_train.distributed.pipeline_plan import (
    V_SCHEDULES,
    StagePlan,
    check_micro_batches,
    stage_plans,
)
from ov_train.distributed.pipeline_stage_module import (
    MicroBatchChannel,
    ModelPart,
    StageModule,
    merge_parts,
)
from ov_train.distributed.world import DistributedWorld, World
from ov_train.errors import RecipeError, TrainingError
from ov_train.optim import parameter_groups
from ov_train.precision import autocast_factory

SPLIT_BACKWARD_SCHEDULES = ("InterleavedZeroBubble", "ZBVZeroBubble")
SCHEDULES = {
    "1F1B": Schedule1F1B,
    "Interleaved1F1B": ScheduleInterleaved1F1B,
    "InterleavedZeroBubble": ScheduleInterleavedZeroBubble,
    "ZBVZeroBubble": ScheduleZBVZeroBubble,
}


class _SideChannelStage(PipelineStage):
    """A `PipelineStage` that tells its `StageModule` which micro-batch it forwards (the
    schedule knows the index; the module reads the micro-batch's metadata by it)."""

    def forward_one_chunk(self, fwd_chunk_id: int, *args, **kwargs):
        self.submod.micro_batch = fwd_chunk_id
        try:
            return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)
        finally:
            self.submod.micro_batch = None


class _GlobalMean:
    """The schedule's loss function: a micro-batch's CE sum over the step's global supervised
    count (set per step). torch hands it a target per micro-batch; ours needs none."""

    def __init__(self) -> None:
        self.total_supervised = 0

    def __call__(self, loss_sum: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_sum / self.total_supervised


@dataclass
class Pipeline:
    """This rank's part of a pipelined model and the schedule that runs it."""

    model: ModelPart
    """This rank's stages as one module with the full model's names (optimizer, checkpoints)."""
    stage_modules: list[StageModule]
    stages: list[PipelineStage]
    schedule: object
    channel: MicroBatchChannel
    group: dist.ProcessGroup
    """The pipeline's process group (this rank and the ranks holding the other stages)."""
    micro_batches: int
    """Micro-batches per step (the schedule is built for this many)."""
    optimizer_groups: list[str]
    """The whole model's optimizer group names (`optim.build_optimizer(group_names=)`)."""
    autocast: Callable[[], AbstractContextManager]
    """The context the schedule runs in: bf16 autocast when the recipe asks for it and no
    FSDP2 casts the parameters (a data-parallel degree of 1), else nothing."""
    _loss: _GlobalMean

    @property
    def has_first_stage(self) -> bool:
        return any(module.plan.is_first for module in self.stage_modules)

    def run(self, batches: Sequence[PackedBatch], total_supervised: int, *, step: int):
        """Forward and backward every micro-batch of the step through the schedule, each
        backpropagating its CE sum / `total_supervised`; returns this rank's CE sum (float64,
        0 without the last stage). Gradients are left accumulated (and FSDP-reduced)."""
        if len(batches) != self.micro_batches:
            raise TrainingError(
                f"step {step}: {len(batches)} micro-batches, but the pipeline schedule was "
                f"built for {self.micro_batches}"
            )
        ids = self.channel.load(batches, step=step)
        self._loss.total_supervised = total_supervised
        device = self.channel.device
        targets = torch.zeros(len(batches), 1, device=device)  # unused, but torch wants one
        inputs = (ids,) if self.has_first_stage else ()
        with self.autocast():
            self.schedule.step(*inputs, target=targets, return_outputs=False)
        return self.channel.loss_sum()


def check_schedule_with_fsdp(parallel: ParallelConfig, *, sharded: bool) -> None:
    """RecipeError for a zero-bubble schedule under FSDP2 (`sharded`: the data-parallel mesh
    has more than one rank) that reshards after forward."""
    split_backward = parallel.pp_schedule in SPLIT_BACKWARD_SCHEDULES
    if sharded and split_backward and parallel.reshard_after_forward:
        raise RecipeError(
            f"parallel.pp_schedule {parallel.pp_schedule} with FSDP2 needs "
            "parallel.reshard_after_forward = false: zero-bubble schedules take the stage's "
            "parameters for their separate weight-gradient pass when its input-gradient pass "
            "starts, and parameters resharded after forward are not the ones the graph used "
            "(wrong weight gradients, measured); or use 1F1B / Interleaved1F1B"
        )


def build_pipeline(model: LlavaOV, recipe: Recipe, world: World) -> Pipeline:
    """This rank's stages of `model` (frozen as the recipe says, on `world.device`),
    parallelized, and the recipe's schedule (see the module docstring)."""
    parallel = recipe.parallel
    if parallel.pp == 1 or not isinstance(world, DistributedWorld):
        raise TrainingError("build_pipeline needs parallel.pp > 1 in a distributed world")
    micro_batches = recipe.train.micro_batches_per_rank(world.data_size)
    check_micro_batches(parallel, micro_batches)
    row_tokens = parallel.static_row_tokens(recipe.train.micro_batch_tokens)
    plans = stage_plans(parallel, model.config, world.coordinate("pp"))
    optimizer_groups = [group["name"] for group in parameter_groups(model, recipe)]
    channel = MicroBatchChannel(model.config, row_tokens, world.device)
    shard = world.fsdp_mesh.size() > 1
    check_schedule_with_fsdp(parallel, sharded=shard)
    group = world.mesh["pp"].get_group()
    check_schedule_supported(parallel.pp_schedule, dist.get_backend(group))
    modules = [StageModule(model, plan, channel) for plan in plans]
    for module in modules:
        parallelize(module, recipe, world, shard=shard)
    # sequence parallelism leaves each tp rank its share of the row's tokens between layers
    split = parallel.tp if parallel.tp > 1 and parallel.sequence_parallel else 1
    state_tokens = row_tokens // split
    if shard:  # FSDP2 computes in its param dtype, the states travel in it
        dtype = fsdp_param_dtype(recipe, world) or torch.float32
        autocast = contextlib.nullcontext
    else:  # autocast keeps the residual stream, the states, in fp32
        dtype = torch.float32
        autocast = autocast_factory(recipe.train.dtype, world.device)
    stages = [
        _SideChannelStage(
            module,
            plan.index,
            plan.count,
            world.device,
            input_args=_input_example(plan, row_tokens, state_tokens, model, dtype, world.device),
            output_args=_output_example(plan, state_tokens, model, dtype, world.device),
            group=group,
        )
        for module, plan in zip(modules, plans, strict=True)
    ]
    loss = _GlobalMean()
    schedule = _build_schedule(parallel.pp_schedule, stages, micro_batches, loss)
    return Pipeline(
        model=merge_parts(modules),
        stage_modules=modules,
        stages=stages,
        schedule=schedule,
        channel=channel,
        group=group,
        micro_batches=micro_batches,
        optimizer_groups=optimizer_groups,
        autocast=autocast,
        _loss=loss,
    )


def check_schedule_supported(schedule: str, backend: str) -> None:
    """RecipeError when this torch cannot run `schedule` over `backend`: torch 2.11's V schedule
    fails in gloo's point-to-point setup (a peer's connection closes, measured); 2.15 runs it.
    The versions between are not measured and are refused too."""
    if schedule in V_SCHEDULES and backend == "gloo" and TorchVersion(torch.__version__) < "2.15":
        raise RecipeError(
            f"parallel.pp_schedule {schedule} over gloo needs torch >= 2.15 (torch 2.11's V "
            f"schedule fails in gloo's point-to-point setup); this is torch {torch.__version__}: "
            "use Interleaved1F1B or InterleavedZeroBubble, or NCCL"
        )


def _hidden_example(
    tokens: int, model: LlavaOV, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A (tokens, hidden) state as stages send it (the callers make it require grad, as the
    states do: else torch plans no gradient exchange for them)."""
    return torch.empty(tokens, model.config.text.hidden_size, dtype=dtype, device=device)


def _input_example(plan: StagePlan, row_tokens, state_tokens, model, dtype, device):
    if plan.is_first:
        return torch.empty(1, row_tokens, dtype=torch.int64, device=device)
    return _hidden_example(state_tokens, model, dtype, device).requires_grad_()


def _output_example(plan: StagePlan, state_tokens, model, dtype, device) -> torch.Tensor:
    if plan.is_last:
        return torch.empty((), dtype=torch.float32, device=device, requires_grad=True)
    return _hidden_example(state_tokens, model, dtype, device).requires_grad_()


def _build_schedule(
    name: str, stages: list[PipelineStage], micro_batches: int, loss: _GlobalMean
) -> object:
    if name not in SCHEDULES:
        raise RecipeError(f"parallel.pp_schedule {name!r}: choose one of {sorted(SCHEDULES)}")
    schedule_class = SCHEDULES[name]
    if schedule_class is Schedule1F1B:
        return schedule_class(stages[0], micro_batches, loss_fn=loss, scale_grads=False)
    return schedule_class(stages, micro_batches, loss_fn=loss, scale_grads=False)
