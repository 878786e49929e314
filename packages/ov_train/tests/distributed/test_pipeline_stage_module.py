"""Stage modules hold the full model's modules under its names, and the side channel refuses a
row that is not of the static length (one process, no process group)."""

import dataclasses

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_train.config import ParallelConfig
from ov_train.distributed.activation_checkpointing import checkpointed_layers
from ov_train.distributed.pipeline_plan import stage_plans
from ov_train.distributed.pipeline_stage_module import MicroBatchChannel, StageModule, merge_parts
from ov_train.errors import TrainingError
from ov_train.optim import named_parameters_by_module

CONFIG = dataclasses.replace(
    PRESETS["tiny"], text=dataclasses.replace(PRESETS["tiny"].text, num_hidden_layers=4)
)
INTERLEAVED = ParallelConfig(pp=2, pp_stages_per_rank=2, pp_schedule="Interleaved1F1B")


def _stages(pp_rank: int) -> tuple[LlavaOV, list[StageModule]]:
    torch.manual_seed(0)
    model = LlavaOV(CONFIG)
    channel = MicroBatchChannel(CONFIG, 16, torch.device("cpu"))
    plans = stage_plans(INTERLEAVED, CONFIG, pp_rank)
    return model, [StageModule(model, plan, channel) for plan in plans]


def test_stages_hold_the_models_own_modules_under_their_full_names():
    model, (first, third) = _stages(0)  # rank 0 of 2 x 2 stages: stages 0 and 2
    whole = dict(model.named_parameters())
    for stage in (first, third):
        for name, parameter in stage.named_parameters():
            assert parameter is whole[name], name  # the same tensor, nothing copied
    assert {n.split(".")[2] for n, _ in third.named_parameters() if ".layers." in n} == {"2"}
    assert first.vision is model.vision
    assert third.vision is None
    assert third.language_model.embed_tokens is None
    assert third.language_model.norm is None  # stage 3 holds it
    # the rank's stages as one module: the model's names and order, less stages 1 and 3's
    elsewhere = (".layers.1.", ".layers.3.", "language_model.norm.", "lm_head.")
    want = [n for n, _ in model.named_parameters() if not any(part in n for part in elsewhere)]
    assert [n for n, _ in merge_parts([first, third]).named_parameters()] == want
    # the optimizer's units: a stage without the ViT has an empty vision unit
    assert named_parameters_by_module(third)["vision"] == []
    other, (second, last) = _stages(1)  # rank 1: stages 1 and 3, the head and the loss
    assert last.language_model.norm is other.language_model.norm
    assert last.lm_head is other.lm_head
    assert second.lm_head is None


def test_selective_checkpointing_picks_the_full_models_layers_on_a_stage():
    _, (_, third) = _stages(0)
    chosen = checkpointed_layers(third.language_model.layers, "selective", 2)
    assert chosen == [third.language_model.layers.get_submodule("2")]
    assert checkpointed_layers(third.language_model.layers, "selective", 3) == []


def test_the_side_channel_refuses_a_row_of_another_length(samples):
    channel = MicroBatchChannel(CONFIG, 16, torch.device("cpu"))
    row = samples.pack([samples.make_sample(0, image=False)]).batch
    with pytest.raises(TrainingError, match=r"step 3, micro-batch 0: \d+ tokens, but pipeline"):
        channel.load([row], step=3)
