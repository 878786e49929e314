"""The one place where distributed training plugs in: the process world and `parallelize`.

The model stays plain single-device ov_model code. Everything a multi-process run changes goes
through two seams, so the distributed issue adds wrappers here and touches nothing else:

- `World`: this process's rank among how many, a sum across ranks (token counts for the loss
  normaliser, throughput) and a barrier (checkpoint commit). `SingleProcess` is the world of one
  process, where each is trivial. A torch.distributed world implements the same protocol.
- `parallelize(model, recipe, world)`: the wrappers in torchtitan's order (tensor/sequence
  parallel -> activation checkpointing -> compile -> FSDP2). Today it returns the model as it
  is. It runs after freezing and before the optimizer is built, where FSDP2 must run; parameter
  names are unchanged by these wrappers, so the optimizer's per-module groups and the
  checkpoint's keys stay as they are.

This module imports nothing of torch.distributed: one process needs none of it.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ov_train.config import Recipe
from ov_train.errors import TrainingError


@runtime_checkable
class World(Protocol):
    """The processes of a run, as the trainer sees them."""

    @property
    def rank(self) -> int:
        """This process's index, 0 .. size - 1."""
        ...

    @property
    def size(self) -> int:
        """Number of processes."""
        ...

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `value` over all processes (every process gets it)."""
        ...

    def barrier(self) -> None:
        """Return when every process has reached this call."""
        ...


@dataclass(frozen=True)
class SingleProcess:
    """The world of one process: sums are the value itself, barriers return at once."""

    rank: int = 0
    size: int = 1

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` itself: there is no other process."""
        return value

    def barrier(self) -> None:
        """Nothing to wait for."""


def is_main(world: World) -> bool:
    """Whether this process writes the run's shared files (rank 0)."""
    return world.rank == 0


def parallelize(model: nn.Module, recipe: Recipe, world: World) -> nn.Module:
    """Apply the distributed wrappers the recipe and world call for; the identity in one process.

    Raises TrainingError for a world of several processes until those wrappers exist, rather
    than silently training unsynchronised copies.
    """
    del recipe  # read by the wrappers to come (parallel degrees, activation checkpointing)
    if world.size != 1:
        raise TrainingError(
            f"a world of {world.size} processes needs the distributed wrappers, which this "
            "version does not have yet; run one process"
        )
    return model
