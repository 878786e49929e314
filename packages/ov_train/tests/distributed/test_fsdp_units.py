"""The FSDP2 units follow the recipe's trainable units, so none is partly frozen."""

import pytest

from ov_train.distributed.fsdp import check_units_uniformly_trained, fsdp_units
from ov_train.errors import TrainingError
from ov_train.optim import freeze


def test_units_cover_every_block_and_layer_below_the_root(tiny_model):
    units = [module for module, _ in fsdp_units(tiny_model)]
    vision, language = tiny_model.vision, tiny_model.language_model
    assert units == [*vision.blocks, vision, tiny_model.projector, *language.layers]
    assert [receives for _, receives in fsdp_units(tiny_model)].count(True) == 1


@pytest.mark.parametrize(
    "trainable", [("projector",), ("vision", "projector", "llm"), ("llm",), ("vision",)]
)
def test_every_recipe_freezing_leaves_each_unit_wholly_frozen_or_trained(tiny_model, trainable):
    freeze(tiny_model, trainable)
    check_units_uniformly_trained(tiny_model)


def test_a_partly_frozen_unit_is_refused_naming_it(tiny_model):
    tiny_model.language_model.layers[1].mlp.up_proj.weight.requires_grad_(False)
    with pytest.raises(
        TrainingError, match=r"unit language_model\.layers\.1 mixes frozen .*up_proj"
    ):
        check_units_uniformly_trained(tiny_model)
    tiny_model.language_model.layers[1].mlp.up_proj.weight.requires_grad_(True)
    tiny_model.language_model.norm.weight.requires_grad_(False)
    with pytest.raises(TrainingError, match=r"unit the root mixes frozen .*language_model\.norm"):
        check_units_uniformly_trained(tiny_model)
