"""A plan for a run on N GPUs before any GPU is booked: memory, compute, communication, days.

`plan_parallel(recipe, world_size)` answers, per pipeline rank (the dp, cp and tp ranks of one
pipeline rank hold the same amounts), what `ov-train plan-parallel` prints:

- memory: `memory_estimate.estimate_memory` for that rank (parameters, gradients, AdamW states,
  FSDP2's gathered units, activations with the micro-batches in flight, the backward transient,
  the allowance), and whether it fits the GPU;
- parameters: the shards rank 0 actually holds after the real `parallelize` on a fake process
  group (`parallel_dry_run`), next to the formula's count: the two must agree, or the formula
  is wrong about what tensor parallelism or FSDP2 split;
- communication: bytes one rank sends per optimizer step, by kind (`Communication`);
- compute: model FLOPs of a step (`flops.training_flops` over the assumed micro-batch, times the
  global batch) and the days a token budget takes at a stated MFU on GPUs of a stated peak.

Communication model (ring collectives: in an all-gather or reduce-scatter of a tensor of S
bytes over n ranks each rank sends (n - 1) / n x S, in an all-reduce twice that; T is the packed
row's tokens, m the micro-batches a data-parallel rank runs per step):
- FSDP2 over dp_shard x cp (f ranks): per micro-batch, every unit of the rank is all-gathered
  in bf16 for forward and, when resharded after forward, again for backward (units gradients
  flow through; the root stays gathered); trained units' gradients are reduce-scattered in
  fp32. Replica groups (dp_replicate, r) all-reduce the fp32 gradient shard once per step.
- tensor + sequence parallel (tp): per decoder layer and micro-batch, 4 collectives of the
  (T / cp) x hidden activations in forward (attention and MLP inputs all-gathered, outputs
  reduce-scattered; without sequence parallelism 2 all-reduces, the same bytes), 4 in backward,
  4 more in a checkpointed layer's recomputation; the vocabulary-parallel embedding's all-reduce
  and split, and the head's gathered supervised rows (forward and backward).
- context parallel (cp): per decoder layer and micro-batch, the all-gather path gathers k and v
  (kv_heads / tp wide) in forward and recomputation and reduce-scatters their gradients in
  backward; the ring path sends k and v cp - 1 times in forward and recomputation, and in
  backward k and v cp - 1 times plus the fp32 dk and dv a full turn (cp times).
- pipeline (pp): per micro-batch, each stage boundary on the rank sends the (T / tp under
  sequence parallelism) x hidden state forward and its gradient backward, in fp32 when the
  pipeline runs without FSDP2 (no data parallelism: `distributed.pipeline`).
A collective whose group spans nodes counts as sent between nodes (a ring or tree collective
runs at its slowest link): mesh dims are laid out tp innermost, then cp, dp_shard, dp_replicate,
pp (`distributed.mesh`), so with 8 GPUs per node tp <= 8 stays on NVLink, FSDP2 over dp_shard x
cp stays there while tp x cp x dp_shard <= 8 (HSDP's point), and so on.
Small collectives (loss and token counts, norm-weight gradients over tp, clipping) are left
out; they are bytes per step, not per token.

Compute model: the time of a step is its model FLOPs / (GPUs x peak x MFU), MFU's definition
(activation checkpointing's recomputation and the ViT's repeat on every tp and cp rank are
hardware work MFU does not credit: they lower the MFU a run reaches). The workload: the
`Workload` image share, every image `tokens_per_image` tokens with a square grid, one image per
packed sample (a text-only row is one sample).
"""

import math
from dataclasses import dataclass, field

from ov_model.config import LlavaOVConfig
from ov_train.config import MODULES, MeshShape, Recipe
from ov_train.errors import RecipeError
from ov_train.flops import StepFlops, training_flops
from ov_train.memory_estimate import (
    Layout,
    MemoryEstimate,
    Workload,
    estimate_memory,
    rank_parameters,
    recipe_model_config,
)
from ov_train.parallel_dry_run import ShardedParameters

DAY_SECONDS = 86_400


@dataclass(frozen=True, kw_only=True)
class Hardware:
    """The GPUs a plan is for and the utilisation it assumes."""

    gpu_memory_gib: float = 80.0
    """Memory of one GPU (an 80GB A800/A100/H100 has 80 GiB)."""
    peak_tflops: float = 312.0
    """Dense bf16 peak of one GPU in TFLOP/s (A800/A100: 312)."""
    mfu: float = 0.4
    """Model FLOPs utilisation the time estimate assumes."""
    gpus_per_node: int = 8
    """GPUs joined by NVLink; collectives of larger groups cross the network."""

    def __post_init__(self) -> None:
        if self.gpu_memory_gib <= 0 or self.peak_tflops <= 0:
            raise RecipeError("gpu_memory_gib and peak_tflops must be > 0")
        if self.gpus_per_node < 1:
            raise RecipeError(f"gpus_per_node must be >= 1, got {self.gpus_per_node}")
        if not 0 < self.mfu <= 1:
            raise RecipeError(f"mfu must lie in (0, 1], got {self.mfu}")


@dataclass(frozen=True, kw_only=True)
class Communication:
    """Bytes one rank sends per optimizer step, by kind (see the module docstring)."""

    fsdp_all_gather: float = 0.0
    fsdp_reduce_scatter: float = 0.0
    replica_all_reduce: float = 0.0
    tensor_parallel: float = 0.0
    context_parallel: float = 0.0
    pipeline: float = 0.0
    between_nodes: float = 0.0
    """The part of the total sent by collectives whose group spans nodes (they run at the
    network's speed, not NVLink's)."""

    @property
    def total(self) -> float:
        return (
            self.fsdp_all_gather
            + self.fsdp_reduce_scatter
            + self.replica_all_reduce
            + self.tensor_parallel
            + self.context_parallel
            + self.pipeline
        )


def _gradient_flows(trainable: set[str]) -> dict[str, bool]:
    """Whether backward runs through each module: it trains or something before it does."""
    result, upstream = {}, False
    for module in MODULES:  # vision -> projector -> llm, the order data flows
        upstream = upstream or module in trainable
        result[module] = upstream
    return result


def communication_per_step(
    config: LlavaOVConfig,
    workload: Workload,
    layout: Layout,
    *,
    trainable: tuple[str, ...] = MODULES,
    pp_rank: int = 0,
    element_bytes: int = 2,
    gpus_per_node: int = 8,
) -> Communication:
    """Bytes pipeline rank `pp_rank` sends per optimizer step of `layout.micro_batches`
    micro-batches (see the module docstring); `between_nodes` counts the collectives whose
    group spans nodes of `gpus_per_node` GPUs."""
    if layout.world_size == 1:
        return Communication()
    act, steps = element_bytes, layout.micro_batches
    text = config.text
    rank = rank_parameters(config, layout, pp_rank)
    flows = _gradient_flows(set(trainable))
    trained = sum(rank.of_module(m) for m in trainable)

    def ring(ranks: int) -> float:  # all-gather / reduce-scatter share a rank sends
        return (ranks - 1) / ranks

    shards, replicas = layout.fsdp_shards, layout.dp_replicate
    gather = reduce = all_reduce = 0.0
    if shards > 1:
        inner = {
            "vision": rank.vision,
            "projector": rank.projector,
            "llm": rank.layers * rank.decoder_layer,
        }
        backward = sum(size for module, size in inner.items() if flows[module])
        per_micro_batch = rank.total
        if layout.reshard_after_forward:
            per_micro_batch += backward
        gather = steps * act * per_micro_batch * ring(shards)
        reduce = steps * 4 * trained * ring(shards)
    if replicas > 1:
        all_reduce = 2 * ring(replicas) * 4 * trained / shards

    stages = layout.rank_stages(pp_rank)
    per_stage = layout.stage_layers(text.num_hidden_layers)
    first, last = 0 in stages, layout.virtual_stages - 1 in stages
    layers = sum(per_stage[stage] for stage in stages)
    checkpointed = sum(layout.checkpointed(per_stage[stage]) for stage in stages)
    local = workload.micro_batch_tokens / layout.cp
    hidden = local * text.hidden_size * act

    tensor = 0.0
    if layout.tp > 1:
        collectives = layers * 8 + checkpointed * 4
        if first:
            collectives += 3  # embedding: all-reduce (2) and the split's backward all-gather
        tensor = collectives * hidden * ring(layout.tp)
        if last:
            rows = workload.supervised_tokens / layout.cp
            tensor += 2 * rows * text.hidden_size * act * ring(layout.tp)
        tensor *= steps

    context = 0.0
    if layout.cp > 1:
        kv = local * 2 * text.num_key_value_heads * text.head_dim / layout.tp * act
        others = layout.cp - 1
        if layout.cp_attention == "allgather":
            per_layer = 2 * others * kv  # all-gather forward, reduce-scatter backward
            recompute = others * kv
        else:
            per_layer = others * kv + others * kv + layout.cp * kv * 4 / act
            recompute = others * kv
        context = steps * (layers * per_layer + checkpointed * recompute)

    pipeline = 0.0
    if layout.pp > 1:
        # stages exchange the row's state, a tp rank its share under sequence parallelism, in
        # fp32 when FSDP2 is left out (autocast keeps the residual stream in fp32)
        boundary = hidden / (layout.tp if layout.sequence_sharded else 1)
        if not layout.wrapped:
            boundary *= 4 / act
        sends = sum(stage != layout.virtual_stages - 1 for stage in stages)
        sends += sum(stage != 0 for stage in stages)
        pipeline = steps * sends * boundary

    # A mesh dim's group holds ranks `stride` apart (dims are laid out tp innermost, then cp,
    # dp_shard, dp_replicate, pp): it stays in a node when stride x size <= gpus_per_node.
    def spans(stride: int, size: int) -> bool:
        return size > 1 and stride * size > gpus_per_node

    tp, cp = layout.tp, layout.cp
    between = 0.0
    between += (gather + reduce) if spans(tp, shards) else 0.0
    between += all_reduce if spans(tp * shards, replicas) else 0.0
    between += tensor if spans(1, tp) else 0.0
    between += context if spans(tp, cp) else 0.0
    between += pipeline if spans(layout.world_size // layout.pp, layout.pp) else 0.0
    return Communication(
        between_nodes=between,
        fsdp_all_gather=gather,
        fsdp_reduce_scatter=reduce,
        replica_all_reduce=all_reduce,
        tensor_parallel=tensor,
        context_parallel=context,
        pipeline=pipeline,
    )


def micro_batch_flops(
    config: LlavaOVConfig, workload: Workload, trainable: tuple[str, ...] = MODULES
) -> StepFlops:
    """Model FLOPs of one micro-batch of `workload` (see the module docstring's workload)."""
    tokens = workload.micro_batch_tokens
    images = workload.images if workload.image_tokens else 0
    grids = []
    if images:
        per_image = workload.image_tokens / images
        side = max(1, round(math.sqrt(per_image))) * config.merge_size
        grids = [(side, side)] * images
    samples = max(images, 1)
    lengths = [tokens // samples + (i < tokens % samples) for i in range(samples)]
    return training_flops(
        config,
        sample_lengths=lengths,
        image_grids=grids,
        supervised_tokens=workload.supervised_tokens,
        trainable=trainable,
    )


@dataclass(frozen=True, kw_only=True)
class RankPlan:
    """What one pipeline rank (and every dp / cp / tp rank beside it) holds and sends."""

    pp_rank: int
    memory: MemoryEstimate
    communication: Communication
    sharded_parameters: int | None = None
    """Parameter values the dry run found on this rank (None: not measured)."""

    @property
    def formula_parameters(self) -> float:
        """The formula's parameter values on this rank: its modules over the FSDP2 shards."""
        rank = self.memory.rank_parameters
        layout = self.memory.layout
        return rank.total / (layout.fsdp_shards if layout.wrapped else 1)


@dataclass(frozen=True, kw_only=True)
class ParallelPlan:
    """A run's plan (see the module docstring); `ranks` has one entry per pipeline rank."""

    recipe: Recipe
    world_size: int
    shape: MeshShape
    micro_batches: int
    """Micro-batches each data-parallel rank (one pipeline) runs per optimizer step."""
    workload: Workload
    hardware: Hardware
    micro_batch_flops: StepFlops
    ranks: tuple[RankPlan, ...] = field(default_factory=tuple)

    @property
    def step_tokens(self) -> int:
        """Packed tokens of one optimizer step (the global batch)."""
        return self.recipe.train.grad_accumulation * self.workload.micro_batch_tokens

    @property
    def step_flops(self) -> float:
        """Model FLOPs of one optimizer step over all ranks."""
        return self.recipe.train.grad_accumulation * self.micro_batch_flops.total

    @property
    def step_seconds(self) -> float:
        """Seconds per optimizer step at `hardware.mfu`."""
        peak = self.world_size * self.hardware.peak_tflops * 1e12
        return self.step_flops / (peak * self.hardware.mfu)

    def days(self, tokens: float) -> float:
        """Days to train on `tokens` packed tokens at `hardware.mfu`."""
        return tokens / self.step_tokens * self.step_seconds / DAY_SECONDS

    def implied_mfu(self, tokens: float, days: float) -> float:
        """The MFU at which `tokens` take `days`."""
        return self.hardware.mfu * self.days(tokens) / days

    @property
    def fits(self) -> bool:
        return all(rank.memory.fits(self.hardware.gpu_memory_gib) for rank in self.ranks)


def plan_parallel(
    recipe: Recipe,
    world_size: int,
    *,
    hardware: Hardware | None = None,
    workload: Workload | None = None,
    measure: bool = True,
) -> ParallelPlan:
    """The plan of `recipe` on `world_size` GPUs (see the module docstring); with `measure`,
    the real `parallelize` runs on a fake process group to count each rank's shards.
    RecipeError when the layout does not fit the model or the global batch."""
    from ov_train.distributed.mesh import check_layout

    hardware = hardware or Hardware()
    config = recipe_model_config(recipe)
    parallel = recipe.parallel
    check_layout(parallel, config, world_size)
    shape = parallel.degrees(world_size)
    micro_batches = recipe.train.micro_batches_per_rank(shape.data_parallel)
    if parallel.pp > 1:  # what the pipeline refuses, with its messages
        from ov_train.distributed.pipeline import check_schedule_with_fsdp
        from ov_train.distributed.pipeline_plan import check_micro_batches, stage_plans

        for pp_rank in range(parallel.pp):
            stage_plans(parallel, config, pp_rank)
        check_micro_batches(parallel, micro_batches)
        sharded = shape.dp_replicate * shape.dp_shard * shape.cp > 1
        check_schedule_with_fsdp(parallel, sharded=sharded)
    if workload is None:
        workload = Workload(micro_batch_tokens=recipe.train.micro_batch_tokens)
    elif workload.micro_batch_tokens != recipe.train.micro_batch_tokens:
        raise RecipeError("the workload's micro_batch_tokens must be the recipe's")
    layout = Layout.from_parallel(parallel, world_size, micro_batches=micro_batches)
    trainable = recipe.model.trainable
    act = 4 if recipe.train.dtype == "fp32" else 2
    sharded: ShardedParameters | None = None
    if measure and world_size > 1:
        from ov_train.parallel_dry_run import measure_sharded_parameters

        sharded = measure_sharded_parameters(recipe, world_size)
    per_stage = layout.stage_layers(config.text.num_hidden_layers)
    ranks = []
    for pp_rank in range(shape.pp):
        stages = layout.rank_stages(pp_rank)
        measured = None
        if sharded is not None:
            measured = sharded.stage_total(
                sum(per_stage[s] for s in stages),
                first=0 in stages,
                last=layout.virtual_stages - 1 in stages,
            )
        ranks.append(
            RankPlan(
                pp_rank=pp_rank,
                memory=estimate_memory(
                    config,
                    workload,
                    layout,
                    trainable=trainable,
                    dtype=recipe.train.dtype,
                    pp_rank=pp_rank,
                ),
                communication=communication_per_step(
                    config,
                    workload,
                    layout,
                    trainable=trainable,
                    pp_rank=pp_rank,
                    element_bytes=act,
                    gpus_per_node=hardware.gpus_per_node,
                ),
                sharded_parameters=measured,
            )
        )
    return ParallelPlan(
        recipe=recipe,
        world_size=world_size,
        shape=shape,
        micro_batches=micro_batches,
        workload=workload,
        hardware=hardware,
        micro_batch_flops=micro_batch_flops(config, workload, trainable),
        ranks=tuple(ranks),
    )
