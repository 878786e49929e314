"""`parallelize` and `forward_autocast` in one process: today's single-process path, untouched."""

import contextlib
from dataclasses import dataclass

import pytest
import torch

from ov_train.distributed.parallelize import fsdp_param_dtype
from ov_train.errors import TrainingError
from ov_train.optim import freeze
from ov_train.parallel import DistributedWorld, SingleProcess, forward_autocast, parallelize

CPU = torch.device("cpu")


def test_one_process_with_the_default_recipe_gets_the_model_untouched(tiny_model, make_recipe):
    recipe = make_recipe()
    freeze(tiny_model, recipe.model.trainable)
    parameters = dict(tiny_model.named_parameters())
    forwards = {name: m.forward for name, m in tiny_model.named_modules()}
    model = parallelize(tiny_model, recipe, SingleProcess(device=CPU))
    assert model is tiny_model
    assert dict(model.named_parameters()) == parameters
    assert all(type(p) is torch.nn.Parameter for p in parameters.values())
    assert {name: m.forward for name, m in model.named_modules()} == forwards
    assert all("forward" not in vars(m) for m in model.modules())


def test_one_process_applies_the_activation_checkpointing_the_recipe_asks_for(
    tiny_model, make_recipe
):
    recipe = make_recipe("parallel.activation_checkpointing=full")
    model = parallelize(tiny_model, recipe, SingleProcess(device=CPU))
    assert all("forward" in vars(layer) for layer in model.language_model.layers)
    assert all("forward" in vars(block) for block in model.vision.blocks)


@pytest.mark.parametrize(("dtype", "autocast"), [("auto", False), ("fp32", False), ("bf16", True)])
def test_one_process_autocasts_as_the_recipe_says(make_recipe, dtype, autocast):
    recipe = make_recipe(f"train.dtype={dtype}")
    world = SingleProcess(device=CPU)
    assert fsdp_param_dtype(recipe, world) is None
    context = forward_autocast(recipe, world)()
    assert isinstance(context, torch.autocast) == autocast
    with context:
        assert torch.is_autocast_enabled("cpu") == autocast


def _two_ranks():
    return DistributedWorld(rank=0, size=2, local_rank=0, device=CPU, mesh=None, fsdp_mesh=None)


def test_with_fsdp_bf16_is_fsdp_mixed_precision_and_the_forward_does_not_autocast(make_recipe):
    recipe = make_recipe("train.dtype=bf16")
    assert fsdp_param_dtype(recipe, _two_ranks()) == torch.bfloat16
    assert forward_autocast(recipe, _two_ranks()) is contextlib.nullcontext
    fp32 = make_recipe("train.dtype=auto")
    assert fsdp_param_dtype(fp32, _two_ranks()) is None


@dataclass(frozen=True)
class _HandMadeWorld:
    rank: int = 0
    size: int = 2
    device: torch.device = CPU


def test_several_processes_need_a_distributed_world(tiny_model, make_recipe):
    with pytest.raises(TrainingError, match=r"must be a DistributedWorld .*not _HandMadeWorld"):
        parallelize(tiny_model, make_recipe(), _HandMadeWorld())
