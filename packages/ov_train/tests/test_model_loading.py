"""The run's starting model: from an HF folder through the meta device (bitwise what
`LlavaOV.from_pretrained` loads, mismatches listed), or the seeded preset (bitwise today's)."""

import shutil

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_model.errors import CheckpointError
from ov_train.model_loading import build_training_model
from ov_train.parallel import SingleProcess
from rice_vit.safetensors_folder import SINGLE_FILE, read_tensors, write_tensors

WORLD = SingleProcess()


def test_a_model_folder_loads_bitwise_as_from_pretrained_frozen_as_the_recipe_says(
    make_recipe, tiny_model_dir
):
    recipe = make_recipe(f"model.path={tiny_model_dir}", base="stage1-tiny")
    model, config = build_training_model(recipe, WORLD)
    reference = LlavaOV.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert config == reference.config
    assert model.training
    expected = reference.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == "cpu", name
        assert torch.equal(tensor, expected[name]), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in expected if n.startswith("projector.")}


def test_a_preset_without_path_is_the_seeded_model_of_today(make_recipe):
    torch.manual_seed(7)
    model, _ = build_training_model(make_recipe(), WORLD)
    torch.manual_seed(7)
    expected = LlavaOV(PRESETS["tiny"]).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_folder_that_does_not_match_its_config_lists_every_problem(
    make_recipe, tiny_model_dir, tmp_path
):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    tensors = read_tensors(folder)
    del tensors["model.norm.weight"]
    tensors["visual.merger.ln_q.weight"] = torch.zeros(3)
    tensors["extra.weight"] = torch.zeros(1)
    (folder / SINGLE_FILE).unlink()
    write_tensors(folder, tensors)
    with pytest.raises(CheckpointError) as caught:
        build_training_model(make_recipe(f"model.path={folder}"), WORLD)
    message = str(caught.value)
    assert "missing (1): model.norm.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "visual.merger.ln_q.weight: stored (3,), config needs (64,)" in message
