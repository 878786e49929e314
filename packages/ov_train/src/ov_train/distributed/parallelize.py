"""`parallelize`: the distributed wrappers in torchtitan's order, and the forward's precision.

Order (torchtitan's): tensor + sequence parallel (`tensor_parallel`) -> context parallel (the
model's sequence split, `context_parallel`) -> activation checkpointing -> compile (not yet) ->
FSDP2 over dp_shard x cp (`mesh.data_parallel_mesh`). Tensor parallelism goes first: it
replaces the LLM's weights by tp-sharded DTensors, which FSDP2 then shards again over the data
ranks (2-D parameters). Activation checkpointing goes before FSDP2 so the recompute runs inside
each layer's FSDP unit; FSDP2 goes last because it replaces the parameters by sharded DTensors,
which the optimizer must then be built over (the trainer builds it after this). Pipeline
parallelism splits the model into stages before all this and applies the chain to each stage.

In one process nothing is wrapped except what the recipe asks for (activation checkpointing,
which changes memory, not numbers); with the default recipe the model is returned untouched,
exactly today's single-process path.

Precision: the recipe's `train.dtype` resolves to bf16 or fp32 on the run's device
(`precision.autocast_dtype`). With several processes and bf16, FSDP2 casts the parameters
(`MixedPrecisionPolicy`, see `fsdp`), and the forward must NOT also run under autocast:
`forward_autocast` returns the context the trainer wraps its forward in (a null context then,
`torch.autocast(bf16)` in one process as before).
"""

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ov_train.config import Recipe
from ov_train.distributed.activation_checkpointing import apply_activation_checkpointing
from ov_train.distributed.fsdp import shard_model
from ov_train.distributed.mesh import check_layout
from ov_train.distributed.world import DistributedWorld, World
from ov_train.errors import TrainingError
from ov_train.precision import autocast_dtype, autocast_factory


def fsdp_param_dtype(recipe: Recipe, world: World) -> torch.dtype | None:
    """The dtype FSDP2 gathers parameters in (None: fp32, or one process without FSDP2)."""
    if world.size == 1:
        return None
    return autocast_dtype(recipe.train.dtype, world.device)


def forward_autocast(recipe: Recipe, world: World) -> Callable[[], AbstractContextManager]:
    """The context the trainer runs each forward in: autocast in one process when the recipe's
    dtype is bf16, nothing when FSDP2's mixed precision casts the parameters instead."""
    if fsdp_param_dtype(recipe, world) is not None:
        return contextlib.nullcontext
    return autocast_factory(recipe.train.dtype, world.device)


def parallelize(model: nn.Module, recipe: Recipe, world: World, *, shard: bool = True) -> nn.Module:
    """Wrap `model` (frozen as the recipe says, on `world.device`) for `world`; in place.

    Call after `optim.freeze` and before building the optimizer. Under pipeline parallelism
    this runs on each stage's module (`distributed.pipeline`), with `shard=False` (no FSDP2)
    when the data-parallel mesh is one rank.
    """
    parallel = recipe.parallel
    if world.size > 1 and not isinstance(world, DistributedWorld):
        raise TrainingError(
            f"a world of {world.size} processes must be a DistributedWorld (ov_train.parallel."
            f"init_world), not {type(world).__name__}"
        )
    if world.size > 1:
        check_layout(parallel, model.config, world.size)
    if parallel.tp > 1:
        from ov_train.distributed.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(model, world.mesh["tp"], sequence_parallel=parallel.sequence_parallel)
    if parallel.cp > 1:
        from ov_train.distributed.context_parallel import apply_context_parallel

        apply_context_parallel(model, world.mesh["cp"], parallel.cp_attention)
    apply_activation_checkpointing(
        model, parallel.activation_checkpointing, parallel.checkpoint_every
    )
    if world.size == 1 or not shard:
        return model
    return shard_model(
        model,
        world.fsdp_mesh,
        param_dtype=fsdp_param_dtype(recipe, world),
        reshard_after_forward=parallel.reshard_after_forward,
    )
