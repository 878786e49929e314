"""A dry run of `parallelize` on N ranks without N processes or any GPU: what one rank holds.

Why: the memory plan (`memory_estimate`) counts parameters from the config, by formula; the
real wrappers decide what a rank actually holds (which tensors tensor parallel splits, how FSDP2
rounds uneven shards, what stays replicated). Running them for real needs the ranks. Here, as
torchtitan's dry run does, one process joins a process group of the `fake` backend
(`torch.testing._internal.distributed.fake_pg`: every collective returns at once, nothing is
sent) as rank 0 of a world of N, builds the run's 5-D device mesh over it, builds the model on
the meta device (shapes only, no memory: the 8B model in about a second) and applies the real
`ov_train.parallel.parallelize` (tensor parallel -> context parallel -> activation checkpointing
-> FSDP2). Each parameter is then a DTensor whose local shard has the shape rank 0 would hold.

What it cannot show: anything computed (activations, communication, time): those stay
analytic. Pipeline stages are counted from the measured per-module shards (the mesh's pp dim does
not change how a module is sharded: FSDP2 and TP never span it), with `Layout.stage_layers`'s
split. Rank 0 holds FSDP2's largest shard (torch.chunk's split: the first ranks get the
rounded-up rows).

The dry run happens in a forked child process, which sends back the counts: the fake process
group, its device mesh and the wrappers never touch the caller. (In-process, a caller that later
ran a backward could no longer fork workers that run one: autograd refused them as a bad fork,
measured with the test harness.) A process that already has a process group (a real run)
cannot dry-run.
"""

import multiprocessing
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ov_train.config import Recipe
from ov_train.errors import RecipeError, TrainingError


@dataclass(frozen=True)
class ShardedParameters:
    """Parameter values rank 0 holds after `parallelize` (local shards), by FSDP unit; each
    counts one module of its kind (all ViT blocks and all decoder layers are alike)."""

    vision_block: int
    vision_stem: int
    projector: int
    decoder_layer: int
    embedding: int
    final_norm: int
    lm_head: int
    """0 when tied to the embedding."""
    vision_blocks: int
    decoder_layers: int

    @property
    def total(self) -> int:
        """The whole model's shards on rank 0 (every stage's modules, as without pipelining)."""
        return (
            self.vision_blocks * self.vision_block
            + self.vision_stem
            + self.projector
            + self.decoder_layers * self.decoder_layer
            + self.embedding
            + self.final_norm
            + self.lm_head
        )

    def stage_total(self, layers: int, *, first: bool, last: bool) -> int:
        """The shards of a pipeline rank holding `layers` decoder layers, the first stage's
        modules (ViT, projector, embedding) when `first`, the last's (norm, head) when `last`."""
        total = layers * self.decoder_layer
        if first:
            total += self.vision_blocks * self.vision_block + self.vision_stem
            total += self.projector + self.embedding
        if last:
            total += self.final_norm + self.lm_head
        return total


def _local_numel(module: nn.Module, *, recurse: bool = True) -> int:
    return sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel()
        for p in module.parameters(recurse=recurse)
    )


def measure_sharded_parameters(recipe: Recipe, world_size: int) -> ShardedParameters:
    """Rank 0's parameter shards when `recipe` runs on `world_size` ranks (see the module
    docstring); the error `parallelize` raises for a layout it refuses (RecipeError for degrees,
    heads vs tp, ...)."""
    if dist.is_initialized():
        raise RecipeError("a dry run needs a process without a process group")
    recipe.parallel.degrees(world_size)  # the degrees' error before anything starts
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_dry_run_child, args=(send, recipe, world_size))
    child.start()
    send.close()
    try:
        outcome, value = receive.recv()
    except EOFError:
        outcome, value = "died", None
    finally:
        receive.close()
        child.join()
    if outcome == "died":
        raise TrainingError(f"the dry run's process died (exit code {child.exitcode})")
    if outcome == "error":
        raise value
    return value


def _dry_run_child(send, recipe: Recipe, world_size: int) -> None:
    code = 1
    try:
        try:
            send.send(("counts", _measure(recipe, world_size)))
        except (RecipeError, TrainingError) as error:
            send.send(("error", error))
        code = 0
    finally:
        send.close()
        os._exit(code)  # never the caller's exit handlers (pytest's, a CLI's)


def _measure(recipe: Recipe, world_size: int) -> ShardedParameters:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ov_model.model import LlavaOV
    from ov_train.distributed.mesh import build_mesh, data_parallel_mesh
    from ov_train.distributed.world import DistributedWorld
    from ov_train.memory_estimate import recipe_model_config
    from ov_train.optim import freeze
    from ov_train.parallel import parallelize

    config = recipe_model_config(recipe)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        mesh = build_mesh(recipe.parallel, world_size, "cpu")
        world = DistributedWorld(
            rank=0,
            size=world_size,
            local_rank=0,
            device=torch.device("cpu"),
            mesh=mesh,
            fsdp_mesh=data_parallel_mesh(mesh),
        )
        with torch.device("meta"):
            model = LlavaOV(config)
        freeze(model, recipe.model.trainable)
        model = parallelize(model, recipe, world)
        vision, language = model.vision, model.language_model
        blocks = list(vision.blocks)
        layers = list(language.layers)
        return ShardedParameters(
            vision_block=_local_numel(blocks[0]),
            vision_stem=_local_numel(vision) - sum(_local_numel(b) for b in blocks),
            projector=_local_numel(model.projector),
            decoder_layer=_local_numel(layers[0]),
            embedding=_local_numel(language.embed_tokens),
            final_norm=_local_numel(language.norm),
            lm_head=0 if model.lm_head is None else _local_numel(model.lm_head),
            vision_blocks=len(blocks),
            decoder_layers=len(layers),
        )
    finally:
        dist.destroy_process_group()
