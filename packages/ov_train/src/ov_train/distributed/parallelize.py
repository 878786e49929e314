"""`parallelize`: the distributed wrappers in torchtitan's order, and the forward's precision.

Order (torchtitan's): tensor/sequence parallel (next version) -> activation checkpointing ->
compile (not yet) -> FSDP2. Activation checkpointing goes before FSDP2 so the recompute runs
inside each layer's FSDP unit; FSDP2 goes last because it replaces the parameters by sharded
DTensors, which the optimizer must then be built over (the trainer builds it after this).

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
from ov_train.distributed.mesh import data_parallel_mesh
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


def parallelize(model: nn.Module, recipe: Recipe, world: World) -> nn.Module:
    """Wrap `model` (frozen as the recipe says, on `world.device`) for `world`; in place.

    Call after `optim.freeze` and before building the optimizer.
    """
    parallel = recipe.parallel
    apply_activation_checkpointing(
        model, parallel.activation_checkpointing, parallel.checkpoint_every
    )
    if world.size == 1:
        return model
    if not isinstance(world, DistributedWorld):
        raise TrainingError(
            f"a world of {world.size} processes must be a DistributedWorld (ov_train.parallel."
            f"init_world), not {type(world).__name__}"
        )
    return shard_model(
        model,
        data_parallel_mesh(world.mesh),
        param_dtype=fsdp_param_dtype(recipe, world),
        reshard_after_forward=parallel.reshard_after_forward,
    )
