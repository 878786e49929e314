"""The per-GPU memory estimate: exact parameter counts, activations against a measurement of the
real model's saved tensors, what sharding divides, and the issue's 8B Stage-2 requirement."""

import msgspec
import pytest
import torch

from ov_model.config import PRESETS
from ov_model.model import LlavaOV
from ov_model.packing import IGNORE_INDEX, shifted_targets
from ov_train.config_io import resolve_recipe
from ov_train.distributed.activation_checkpointing import (
    apply_activation_checkpointing,
    checkpointed_layers,
)
from ov_train.distributed.fsdp import fsdp_units
from ov_train.errors import RecipeError
from ov_train.memory_estimate import (
    GIB,
    Layout,
    Workload,
    activation_bytes,
    estimate_memory,
    estimate_recipe_memory,
    parameter_counts,
)

TINY = PRESETS["tiny"]
IMAGE = TINY.image_token_id


@pytest.mark.parametrize("preset", ["tiny", "3b", "4b", "8b"])
def test_parameter_counts_equal_the_real_models(preset):
    config = PRESETS[preset]
    with torch.device("meta"):
        model = LlavaOV(config)
    counts = parameter_counts(config)
    assert counts.total == model.num_parameters()
    assert counts.vision == model.vision.num_parameters()
    assert counts.projector == sum(p.numel() for p in model.projector.parameters())
    assert counts.decoder_layer == sum(
        p.numel() for p in model.language_model.layers[0].parameters()
    )
    assert counts.vision_block == sum(p.numel() for p in model.vision.blocks[0].parameters())
    root = [model.language_model.embed_tokens, model.language_model.norm, model.lm_head]
    assert counts.root == sum(p.numel() for m in root if m is not None for p in m.parameters())


@pytest.mark.parametrize("preset", ["tiny", "8b"])
def test_fsdp_units_are_the_ones_ov_train_shards(preset):
    config = PRESETS[preset]
    with torch.device("meta"):
        model = LlavaOV(config)
    counts = parameter_counts(config)
    # a unit owns its parameters that no inner unit (listed before it) took: FSDP2's grouping
    taken: set[int] = set()
    own = []
    for unit, _ in fsdp_units(model):
        mine = [p for p in unit.parameters() if id(p) not in taken]
        taken.update(id(p) for p in mine)
        own.append(sum(p.numel() for p in mine))
    assert max(own) == counts.largest_unit(("vision", "projector", "llm"))
    assert counts.total - sum(own) == counts.root


@pytest.mark.parametrize("mode", ["none", "full", "selective"])
@pytest.mark.parametrize("layers", [1, 2, 7, 24, 36])
def test_checkpointed_layer_count_is_what_ov_train_checkpoints(mode, layers):
    for every in (1, 2, 3):
        layout = Layout(activation_checkpointing=mode, checkpoint_every=every)
        assert layout.checkpointed(layers) == len(checkpointed_layers(range(layers), mode, every))


def test_release_sizes_match_the_recipes_table():
    # RECIPES.md: total 4.7B (4B) and 8.5B (8B).
    assert round(parameter_counts(PRESETS["4b"]).total / 1e9, 1) == 4.7
    assert round(parameter_counts(PRESETS["8b"]).total / 1e9, 1) == 8.5


# ------------------------------------------------------------------ activations, measured
def _packed_batch(tokens: int):
    """One packed row of exactly `tokens` tokens: 6 samples with images of distinct sizes (distinct
    lengths, so the CPU attention path slices instead of gathering), answers supervised."""
    generator = torch.Generator().manual_seed(0)
    grids = [(8, 8), (8, 12), (12, 16), (16, 16), (16, 20), (16, 32)]
    texts = [40 + 29 * i for i in range(len(grids))]
    image_tokens = sum(h * w // 4 for h, w in grids)
    texts[-1] += tokens - image_tokens - sum(texts)
    ids, labels, pixels = [], [], []
    for (h, w), text in zip(grids, texts, strict=True):
        prompt = torch.randint(10, 400, (6,), generator=generator)
        answer = torch.randint(10, 400, (text - 6,), generator=generator)
        sample = torch.cat([prompt, torch.full((h * w // 4,), IMAGE), answer])
        label = sample.clone()
        label[: 6 + h * w // 4] = IGNORE_INDEX
        ids.append(sample)
        labels.append(label)
        pixels.append(torch.randn(h * w, TINY.vision.patch_dim, generator=generator))
    lengths = torch.tensor([len(s) for s in ids])
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    inputs = {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "cu_seqlens": cu,
        "pixel_values": torch.cat(pixels).to(torch.bfloat16),
        "image_grid_thw": torch.tensor([[1, h, w] for h, w in grids]),
    }
    supervised = int((shifted_targets(inputs["labels"], cu) != IGNORE_INDEX).sum())
    workload = Workload(
        micro_batch_tokens=tokens,
        image_token_fraction=image_tokens / tokens,
        tokens_per_image=image_tokens // len(grids),
        supervised_fraction=supervised / tokens,
    )
    assert workload.image_tokens == image_tokens
    assert workload.supervised_tokens == supervised
    assert workload.images == len(grids)
    return inputs, workload


def _saved_bytes(model: LlavaOV, inputs) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward (parameters
    excluded: they are counted as parameters)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**inputs, return_logits=False)
    output.loss.backward()  # the graph is complete and usable
    return sum(storages.values())


MODES = ("none", "selective", "full")


@pytest.fixture(scope="module")
def measured():
    """Saved bytes of one bf16 forward of the tiny model on a packed micro-batch of the tiny
    recipes' 2048 tokens, per activation-checkpointing mode as ov_train.distributed applies it
    (selective: every 2nd layer, i.e. layer 0 of each 2-layer stack)."""
    tokens = resolve_recipe("stage2-tiny").train.micro_batch_tokens
    inputs, workload = _packed_batch(tokens)
    saved = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = LlavaOV(TINY).to(torch.bfloat16).train()
        apply_activation_checkpointing(model, mode, every=2)
        saved[mode] = _saved_bytes(model, inputs)
    return workload, saved


def _cpu_attention_copies(workload: Workload, layout: Layout) -> int:
    """The estimate models the GPU attention kernels, whose output is what the output projection
    keeps. The CPU `sdpa` path scatters the per-length results into a new tensor, so each
    layer not checkpointed keeps its attention output twice: add that copy to compare."""
    text, vision = TINY.text, TINY.vision
    vit_tokens = workload.image_tokens * TINY.merge_size**2 + workload.images
    layers = text.num_hidden_layers - layout.checkpointed(text.num_hidden_layers)
    blocks = vision.depth - layout.checkpointed(vision.depth)
    llm = layers * workload.micro_batch_tokens * text.num_attention_heads * text.head_dim
    return 2 * (llm + blocks * vit_tokens * vision.hidden_size)


# Tight enough that one missing per-layer tensor of the tiny model, or a factor 2 anywhere
# large, falls outside.
BAND = (0.95, 1.05)


@pytest.mark.parametrize("mode", MODES)
def test_activation_estimate_matches_the_measured_saved_tensors_within_5_percent(measured, mode):
    workload, saved = measured
    layout = Layout(activation_checkpointing=mode, checkpoint_every=2)
    estimate = activation_bytes(TINY, workload, layout).held
    assert BAND[0] <= saved[mode] / (estimate + _cpu_attention_copies(workload, layout)) <= BAND[1]


def test_checkpointing_changes_the_measurement_as_much_as_the_estimate(measured):
    workload, saved = measured
    assert saved["full"] < saved["selective"] < saved["none"]
    assert saved["full"] < saved["none"] / 4  # the comparison above has teeth
    held = {
        mode: activation_bytes(
            TINY, workload, Layout(activation_checkpointing=mode, checkpoint_every=2)
        ).held
        for mode in MODES
    }
    # tiny stacks have 2 layers: selective every 2 checkpoints half of them
    assert held["selective"] - held["full"] == pytest.approx(
        (held["none"] - held["full"]) / 2, rel=1e-6
    )


# ------------------------------------------------------------------ sharding and monotonicity
def _estimate(preset="8b", tokens=8192, **layout):
    return estimate_memory(
        PRESETS[preset], Workload(micro_batch_tokens=tokens), Layout(**layout), dtype="bf16"
    )


def test_sharding_divides_parameters_gradients_and_states_but_not_activations():
    one_shard = _estimate(world_size=2, dp_replicate=2, dp_shard=1)
    for shards in (2, 8, 128):
        sharded = _estimate(world_size=shards, dp_shard=shards)
        for line in ("parameters", "gradients", "optimizer"):
            assert getattr(sharded, line) == pytest.approx(getattr(one_shard, line) / shards, abs=1)
        assert sharded.activations == one_shard.activations
        assert sharded.gathered == one_shard.gathered
    hsdp = _estimate(world_size=16, dp_replicate=4, dp_shard=4)
    fsdp = _estimate(world_size=4, dp_shard=4)
    assert hsdp.model_state == fsdp.model_state  # replicas hold the same shard


def test_state_bytes_per_parameter_are_4_4_8():
    counts = parameter_counts(PRESETS["4b"])
    estimate = _estimate("4b", world_size=1)
    assert estimate.parameters == 4 * counts.total
    assert estimate.gradients == 4 * counts.total
    assert estimate.optimizer == 8 * counts.total
    # a single process under autocast holds bf16 casts of the non-embedding weights
    assert estimate.gathered == 2 * (counts.total - counts.embedding)


def test_frozen_modules_keep_fp32_weights_but_no_gradients_states_or_vision_activations():
    workload = Workload(micro_batch_tokens=8192)
    layout = Layout(world_size=8, dp_shard=8)
    stage1 = estimate_memory(PRESETS["8b"], workload, layout, trainable=("projector",))
    full = estimate_memory(PRESETS["8b"], workload, layout)
    counts = parameter_counts(PRESETS["8b"])
    assert stage1.parameters == full.parameters
    assert stage1.gradients == pytest.approx(4 * counts.projector / 8, abs=1)
    assert stage1.optimizer == pytest.approx(8 * counts.projector / 8, abs=1)
    assert stage1.activations.vision == 0 < full.activations.vision
    assert stage1.activations.projector == full.activations.projector > 0


def test_more_tokens_more_images_and_less_checkpointing_cost_more():
    def held(tokens=8192, fraction=0.5, mode="none"):
        workload = Workload(micro_batch_tokens=tokens, image_token_fraction=fraction)
        layout = Layout(activation_checkpointing=mode, checkpoint_every=2)
        return activation_bytes(PRESETS["4b"], workload, layout).held

    assert held(4096) < held(8192) < held(32768)
    assert held(fraction=0.0) < held(fraction=0.5) < held(fraction=1.0)
    assert held(mode="full") < held(mode="selective") < held(mode="none")
    # linear in tokens: no T^2 term (the attention kernels keep no score matrix)
    assert held(16384) == pytest.approx(2 * held(8192), rel=1e-3)


def test_fp32_policy_costs_more_activations_and_gathers_fp32():
    workload, layout = Workload(micro_batch_tokens=8192), Layout(world_size=8, dp_shard=8)
    bf16 = estimate_memory(PRESETS["4b"], workload, layout, dtype="bf16")
    fp32 = estimate_memory(PRESETS["4b"], workload, layout, dtype="fp32")
    assert fp32.activations.held > 1.5 * bf16.activations.held
    assert fp32.gathered > bf16.gathered


def test_layout_and_workload_errors_name_the_value():
    with pytest.raises(RecipeError, match="world size 8"):
        Layout(world_size=8, dp_shard=4)
    with pytest.raises(RecipeError, match="activation_checkpointing"):
        Layout(activation_checkpointing="some")
    with pytest.raises(RecipeError, match="image_token_fraction"):
        Workload(micro_batch_tokens=8, image_token_fraction=1.5)
    with pytest.raises(RecipeError, match="unknown trainable"):
        estimate_memory(TINY, Workload(micro_batch_tokens=8), Layout(), trainable=("text",))


# ------------------------------------------------------------------ the requirement
def test_8b_stage2_fits_80_gib_on_8_gpus_with_full_checkpointing_and_not_without():
    full = resolve_recipe("stage2-8b")
    assert full.parallel.activation_checkpointing == "full"  # the release recipes' choice
    none = msgspec.structs.replace(
        full, parallel=msgspec.structs.replace(full.parallel, activation_checkpointing="none")
    )
    assert estimate_recipe_memory(full, 8).fits(80)
    assert not estimate_recipe_memory(none, 8).fits(80)
    # also with every token an image token (the ViT-heaviest micro-batch)
    assert estimate_recipe_memory(full, 8, image_token_fraction=1.0).total < 80 * GIB
