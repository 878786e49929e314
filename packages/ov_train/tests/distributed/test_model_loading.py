"""The starting model on 2 ranks: built on the meta device, FSDP2-sharded, filled shard by shard
from the HF folder (each rank reading only its rows of each tensor): every rank holds about half
of each tensor, and the gathered weights equal `LlavaOV.from_pretrained`'s bitwise; the seeded
preset gathers to today's weights."""

import pytest
import torch
from torch.distributed.tensor import DTensor

from ov_model import PRESETS, LlavaOV
from ov_train import model_loading
from ov_train.model_loading import build_training_model
from ov_train.parallel import init_world

pytestmark = pytest.mark.dist


def _whole_tensor_read(*args, **kwargs):
    raise AssertionError("a Shard(0) parameter was read whole instead of its rows")


def _build_both(rank, dist, folder_recipe, preset_recipe):
    world = init_world(folder_recipe.parallel, "cpu")
    model_loading.distribute_tensor = _whole_tensor_read  # FSDP2's Shard(0): rows only
    model, _ = build_training_model(folder_recipe, world)
    local = {n: p.to_local().numel() for n, p in model.named_parameters() if isinstance(p, DTensor)}
    loaded = {n: dist.full_tensor(p.detach()).clone() for n, p in model.named_parameters()}
    torch.manual_seed(5)
    model, _ = build_training_model(preset_recipe, world)
    drawn = {n: dist.full_tensor(p.detach()).clone() for n, p in model.named_parameters()}
    return {"local": local, "loaded": loaded, "drawn": drawn}


def test_two_ranks_load_shards_of_the_folder_and_draw_the_seeded_preset(
    dist, make_recipe, tiny_model_dir
):
    folder_recipe = make_recipe(f"model.path={tiny_model_dir}", "parallel.timeout_s=60")
    preset_recipe = make_recipe("parallel.timeout_s=60")
    results = dist.run_workers(_build_both, 2, dist, folder_recipe, preset_recipe)
    reference = LlavaOV.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    torch.manual_seed(5)
    seeded = LlavaOV(PRESETS["tiny"]).state_dict()
    for result in results:
        assert result["loaded"].keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(result["loaded"][name], tensor), name
            assert torch.equal(result["drawn"][name], seeded[name]), name
    sharded = results[0]["local"]
    assert sharded.keys() == reference.keys()  # FSDP2 shards every parameter
    for name, tensor in reference.items():
        shares = [result["local"][name] for result in results]
        assert sum(shares) == tensor.numel(), name
        assert max(shares) <= -(-tensor.shape[0] // 2) * tensor[0].numel(), name
