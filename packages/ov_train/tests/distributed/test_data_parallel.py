"""2 processes against 1 on the same global batch, through the real `train_step`.

Each launch trains several layouts one after the other in the same forked processes (one process
group, a fresh model and mesh per layout) and returns the losses, gradient norms, the whole
gradients of every step and the parameters after the last step; the test compares them with one
process training on all the micro-batches of each step (rank r of W takes global micro-batches
r, r + W, ... of a step, as the data path does).
"""

import pytest
import torch
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import ov_train.distributed.fsdp as fsdp
from ov_model import PRESETS, LlavaOV
from ov_train.parallel import DistributedWorld, clip_gradients, init_world

pytestmark = pytest.mark.dist

STEPS, PER_RANK = 2, 2
CLIP = 0.05  # well below the tiny model's gradient norm (about 1-3): clipping acts


def tiny_model() -> LlavaOV:
    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"])


def _recipe(make_recipe, *overrides, ranks: int = 2, base: str = "stage2-tiny"):
    """A tiny recipe for `ranks` processes sharing a step of 2 x PER_RANK micro-batches (4 x
    PER_RANK with 4 ranks: PER_RANK each)."""
    global_batch = PER_RANK * max(ranks, 2)
    return make_recipe(
        "parallel.timeout_s=60",
        "train.clip_grad_norm=0",
        "train.dtype=fp32",
        f"train.grad_accumulation={global_batch}",  # global: PER_RANK on each of the ranks
        *overrides,
        base=base,
    )


# ------------------------------------------------------------------------- layouts, 2 processes
def _gradients_on_two_meshes_and_plain(world):
    """Three parameters whose whole gradients are `_mixed_gradients()`: one sharded on the 1-D
    dp_shard mesh, one on the 2-D mesh (sharded on another dim), one plain."""
    first, second, third = _mixed_gradients()
    placed = [
        (world.mesh["dp_shard"], [Shard(0)], first),
        (world.mesh[("dp_replicate", "dp_shard")], [Replicate(), Shard(1)], second),
    ]
    parameters = []
    for mesh, placements, gradient in placed:
        parameter = torch.nn.Parameter(
            distribute_tensor(torch.zeros_like(gradient), mesh, placements)
        )
        parameter.grad = distribute_tensor(gradient, mesh, placements)
        parameters.append(parameter)
    plain = torch.nn.Parameter(torch.zeros_like(third))
    plain.grad = third.clone()
    return [*parameters, plain]


def _mixed_gradients():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(6, 4, generator=generator) for _ in range(3)]


def _layouts_worker(rank, dist, recipes, step_batches):
    world = init_world(recipes["fsdp"].parallel, "cpu")
    assert isinstance(world, DistributedWorld)
    facts = {
        "rank": world.rank,
        "size": world.size,
        "device": str(world.device),
        "sum": world.sum(torch.tensor([rank + 1.0, 10.0])).tolist(),
    }
    world.barrier()
    parameters = _gradients_on_two_meshes_and_plain(world)
    facts["clip_norm"] = clip_gradients(parameters, 1.0)
    facts["clipped"] = [dist.full_tensor(p.grad) for p in parameters]
    runs = {}
    for name, recipe in recipes.items():
        if name == "fsdp_averaging":
            # FSDP2's default reduction (a mean over ranks): what the summed runs must not equal
            summing = fsdp.sum_gradients
            fsdp.sum_gradients = lambda module: None
            try:
                runs[name] = dist.train_distributed(tiny_model, recipe, step_batches)
            finally:
                fsdp.sum_gradients = summing
        else:
            runs[name] = dist.train_distributed(tiny_model, recipe, step_batches)
    return {"facts": facts, "runs": runs}


def test_replicate_fsdp_checkpointing_clipping_and_bf16_train_like_one_process(
    dist, make_recipe, make_batches
):
    step_batches = [make_batches(2 * PER_RANK, 3, seed=step) for step in range(STEPS)]
    fsdp2 = ("parallel.dp_shard=2",)
    recipes = {
        "replicate": _recipe(make_recipe, "parallel.dp_replicate=2", "parallel.dp_shard=1"),
        "fsdp": _recipe(make_recipe, *fsdp2),
        "fsdp_ac_full": _recipe(make_recipe, *fsdp2, "parallel.activation_checkpointing=full"),
        "fsdp_ac_selective": _recipe(
            make_recipe,
            *fsdp2,
            "parallel.activation_checkpointing=selective",
            "parallel.checkpoint_every=2",
        ),
        "fsdp_no_reshard": _recipe(make_recipe, *fsdp2, "parallel.reshard_after_forward=false"),
        "fsdp_clip": _recipe(make_recipe, *fsdp2, f"train.clip_grad_norm={CLIP}"),
        "fsdp_bf16": _recipe(make_recipe, *fsdp2, "train.dtype=bf16"),
        "fsdp_averaging": _recipe(make_recipe, *fsdp2),
    }
    results = dist.run_workers(_layouts_worker, 2, dist, recipes, step_batches)

    assert [r["facts"]["rank"] for r in results] == [0, 1]
    assert all(r["facts"]["size"] == 2 and r["facts"]["device"] == "cpu" for r in results)
    assert all(r["facts"]["sum"] == [3.0, 20.0] for r in results)
    plain = [torch.nn.Parameter(torch.zeros(6, 4)) for _ in range(3)]
    for parameter, gradient in zip(plain, _mixed_gradients(), strict=True):
        parameter.grad = gradient
    want_norm = float(torch.nn.utils.clip_grad_norm_(plain, 1.0))
    assert want_norm > 2
    for result in results:
        assert result["facts"]["clip_norm"] == pytest.approx(want_norm, rel=1e-6)
        for got, parameter in zip(result["facts"]["clipped"], plain, strict=True):
            torch.testing.assert_close(got, parameter.grad, rtol=1e-6, atol=1e-7)

    reference = dist.train_one_process(tiny_model, _recipe(make_recipe, ranks=1), step_batches)
    clipped = dist.train_one_process(
        tiny_model, _recipe(make_recipe, f"train.clip_grad_norm={CLIP}", ranks=1), step_batches
    )
    assert min(clipped["grad_norms"]) > 10 * CLIP
    for rank in (0, 1):
        runs = results[rank]["runs"]
        layouts = runs["fsdp"]["layouts"]
        assert set(layouts.values()) == {"('dp_shard',)(Shard(dim=0),)"}
        assert set(runs["replicate"]["layouts"].values()) == {
            "('dp_replicate', 'dp_shard')(Replicate(), Shard(dim=0))"
        }
        for name in ("replicate", "fsdp", "fsdp_ac_full", "fsdp_ac_selective", "fsdp_no_reshard"):
            dist.assert_same_training(runs[name], reference)
        dist.assert_same_training(runs["fsdp_clip"], clipped)

        # the default mean over 2 ranks halves every gradient: summing is what makes them equal
        averaged = runs["fsdp_averaging"]["gradients"][0]
        for name, value in reference["gradients"][0].items():
            torch.testing.assert_close(averaged[name] * 2, value, rtol=1e-5, atol=1e-7)

        bf16 = runs["fsdp_bf16"]
        assert bf16["losses"] != reference["losses"]  # the forward did run in bf16
        assert bf16["losses"] == pytest.approx(reference["losses"], rel=2e-2)
        for got, want in zip(bf16["gradients"], reference["gradients"], strict=True):
            assert dist.cosine(got, want) >= 0.999
        assert all(p.dtype == torch.float32 for p in bf16["parameters"].values())


# ---------------------------------------------------- a text-only rank, frozen modules, 2 processes
def _mixed_modality_batches(dist, samples, seed):
    """One step of 4 micro-batches: 0 and 2 (rank 0's) with images, 1 and 3 (rank 1's) text
    only, each text-only row ending in the padding sample of `ov_model.packing.pad_row`."""
    batches = []
    for index in range(2 * PER_RANK):
        base = seed * 100 + index * 10
        if index % 2 == 0:
            row = [samples.make_sample(base + i, image=i != 1) for i in range(3)]
        else:
            row = [samples.make_sample(base + i, image=False) for i in range(3)]
        batches.append(dist.padded_row(row, PRESETS["tiny"]))
    return batches


def _mixed_worker(rank, dist, recipes, step_batches):
    return {
        name: dist.train_distributed(tiny_model, recipe, step_batches)
        for name, recipe in recipes.items()
    }


def test_a_text_only_rank_in_stage1_and_stage2_trains_like_one_process(dist, make_recipe, samples):
    step_batches = [_mixed_modality_batches(dist, samples, seed) for seed in range(STEPS)]
    assert all(b.batch.pixel_values is not None for step in step_batches for b in step)
    assert [b.batch.pixel_values.shape[0] for b in step_batches[0]][1::2] == [4, 4]
    stages = {"stage1": "stage1-tiny", "stage2": "stage2-tiny"}
    recipes = {
        stage: _recipe(make_recipe, "parallel.dp_shard=2", base=base)
        for stage, base in stages.items()
    }
    recipes["stage1_bf16"] = _recipe(
        make_recipe, "parallel.dp_shard=2", "train.dtype=bf16", base="stage1-tiny"
    )
    results = dist.run_workers(_mixed_worker, 2, dist, recipes, step_batches)

    initial = dict(tiny_model().named_parameters())
    references = {
        stage: dist.train_one_process(
            tiny_model, _recipe(make_recipe, ranks=1, base=base), step_batches
        )
        for stage, base in stages.items()
    }
    for rank in (0, 1):  # frozen units in bf16: gathered in bf16, never reduced
        bf16 = results[rank]["stage1_bf16"]
        assert bf16["losses"] == pytest.approx(references["stage1"]["losses"], rel=2e-2)
        for got, want in zip(bf16["gradients"], references["stage1"]["gradients"], strict=True):
            assert got.keys() == want.keys()
            assert dist.cosine(got, want) >= 0.999
    for stage in stages:
        reference = references[stage]
        for rank in (0, 1):
            run = results[rank][stage]
            dist.assert_same_training(run, reference)
            assert all(layout != "plain" for layout in run["layouts"].values())
            if stage == "stage1":
                # only the projector trains; the frozen ViT and LLM are sharded and unchanged
                assert set(run["learning_rates"][0]) == {"projector.decay", "projector.no_decay"}
                trained = {n for step in run["gradients"] for n in step}
                assert trained
                assert all(n.startswith("projector.") for n in trained)
                for name, value in run["parameters"].items():
                    changed = not torch.equal(value, initial[name].detach())
                    assert changed == name.startswith("projector."), name


# ------------------------------------------------------------------------------ HSDP, 4 processes
def _hsdp_worker(rank, dist, recipe, step_batches):
    result = dist.train_distributed(tiny_model, recipe, step_batches)
    world = init_world(recipe.parallel, "cpu")
    result["mesh"] = world.mesh.shape
    return result


@pytest.mark.slow
def test_hsdp_on_four_processes_trains_like_one_process(dist, make_recipe, make_batches):
    step_batches = [make_batches(4 * PER_RANK, 3, seed=step) for step in range(STEPS)]
    recipe = _recipe(make_recipe, "parallel.dp_replicate=2", ranks=4)  # dp_shard -1: 2
    results = dist.run_workers(_hsdp_worker, 4, dist, recipe, step_batches)
    reference = dist.train_one_process(
        tiny_model,
        _recipe(make_recipe, f"train.grad_accumulation={4 * PER_RANK}", ranks=1),
        step_batches,
    )
    for run in results:
        assert tuple(run["mesh"]) == (1, 2, 2, 1, 1)  # pp, dp_replicate, dp_shard, cp, tp
        assert set(run["layouts"].values()) == {
            "('dp_replicate', 'dp_shard')(Replicate(), Shard(dim=0))"
        }
        dist.assert_same_training(run, reference)
