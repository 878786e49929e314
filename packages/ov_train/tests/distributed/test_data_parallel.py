"""2 processes against 1 on the same global batch, through the real `train_step`.

Each launch trains several layouts one after the other in the same two forked processes (one
process group, a fresh model and mesh per layout) and returns the losses, gradient norms, the
whole gradients of every step and the parameters after the last step; the test compares them
with one process training on all the micro-batches of each step.
"""

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_train.parallel import DistributedWorld, SingleProcess, init_world

pytestmark = pytest.mark.dist

STEPS, PER_RANK = 2, 2


def tiny_model() -> LlavaOV:
    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"])


def _recipe(make_recipe, *overrides):
    return make_recipe(
        "parallel.timeout_s=60",
        "train.clip_grad_norm=0",
        f"train.grad_accumulation={PER_RANK}",
        *overrides,
    )


def _worker(rank, dist, recipes, step_batches):
    world = init_world(next(iter(recipes.values())).parallel, "cpu")
    assert isinstance(world, DistributedWorld)
    facts = {
        "rank": world.rank,
        "size": world.size,
        "device": str(world.device),
        "sum": world.sum(torch.tensor([rank + 1.0, 10.0])).tolist(),
    }
    world.barrier()
    runs = {
        name: dist.train_distributed(tiny_model, recipe, step_batches)
        for name, recipe in recipes.items()
    }
    return {"facts": facts, "runs": runs}


def _reference(dist, recipe, step_batches):
    result = dist.train(tiny_model, recipe, step_batches, SingleProcess())
    del result["model"]
    return result


def _assert_same_training(run, reference, *, rtol=1e-5):
    assert run["supervised"] == reference["supervised"]
    assert run["losses"] == pytest.approx(reference["losses"], rel=1e-6)
    assert run["grad_norms"] == pytest.approx(reference["grad_norms"], rel=rtol)
    for got, want in zip(run["gradients"], reference["gradients"], strict=True):
        assert got.keys() == want.keys()
        for name in want:
            scale = want[name].abs().max().item()
            torch.testing.assert_close(
                got[name],
                want[name],
                rtol=rtol,
                atol=rtol * scale,
                msg=lambda m, n=name: f"{n}: {m}",
            )
    for name, value in reference["parameters"].items():
        torch.testing.assert_close(run["parameters"][name], value, rtol=1e-4, atol=1e-6)


def test_two_processes_train_like_one(dist, make_recipe, make_batches):
    step_batches = [make_batches(2 * PER_RANK, 3, seed=step) for step in range(STEPS)]
    recipes = {
        "replicate": _recipe(make_recipe, "parallel.dp_replicate=2", "parallel.dp_shard=1"),
        "fsdp": _recipe(make_recipe, "parallel.dp_shard=2"),
    }
    results = dist.run_workers(_worker, 2, dist, recipes, step_batches)
    assert [r["facts"]["rank"] for r in results] == [0, 1]
    assert all(r["facts"]["size"] == 2 and r["facts"]["device"] == "cpu" for r in results)
    assert all(r["facts"]["sum"] == [3.0, 20.0] for r in results)
    reference = _reference(
        dist, _recipe(make_recipe, f"train.grad_accumulation={2 * PER_RANK}"), step_batches
    )
    for name in recipes:
        for rank in (0, 1):
            _assert_same_training(results[rank]["runs"][name], reference)
