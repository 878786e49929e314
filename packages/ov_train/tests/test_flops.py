"""The FLOPs formula against torch's FlopCounterMode on a real forward + backward of the tiny
model, for a fully trained model and for Stage-1 (projector only)."""

import pytest
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ov_model.config import PRESETS
from ov_model.model import LlavaOV
from ov_model.packing import IGNORE_INDEX, shifted_targets
from ov_train.errors import RecipeError
from ov_train.flops import attention_flops, training_flops
from ov_train.memory_estimate import parameter_counts

TINY = PRESETS["tiny"]
GRIDS = [(8, 8), (8, 12), (12, 16), (16, 16), (4, 20)]
TEXTS = [37, 120, 15, 300, 64, 9]  # the last sample has no image


def _packed_batch():
    generator = torch.Generator().manual_seed(0)
    ids, labels = [], []
    for index, text in enumerate(TEXTS):
        image = GRIDS[index][0] * GRIDS[index][1] // 4 if index < len(GRIDS) else 0
        sample = torch.cat(
            [
                torch.randint(10, 400, (4,), generator=generator),
                torch.full((image,), TINY.image_token_id),
                torch.randint(10, 400, (text,), generator=generator),
            ]
        )
        label = sample.clone()
        label[: 4 + image] = IGNORE_INDEX
        ids.append(sample)
        labels.append(label)
    lengths = [len(s) for s in ids]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    patches = sum(h * w for h, w in GRIDS)
    inputs = {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "cu_seqlens": cu,
        "pixel_values": torch.randn(patches, TINY.vision.patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[1, h, w] for h, w in GRIDS]),
    }
    supervised = int((shifted_targets(inputs["labels"], cu) != IGNORE_INDEX).sum())
    return inputs, lengths, supervised


def _sdpa_forward(q, k, v, *_, out_shape=None, **__) -> int:
    """QK^T and AV over (batch, heads, tokens, dim) shapes; kv heads may be fewer (GQA)."""
    batch, heads, queries, dim = q
    keys, value_dim = k[-2], v[-1]
    return 2 * batch * heads * queries * keys * (dim + value_dim)


def _sdpa_backward(grad, q, k, v, *_, out_shape=None, **__) -> int:
    """dV, dP, dQ, dK and the recomputed QK^T: 2.5x forward, as torch counts flash backward."""
    batch, heads, queries, dim = q
    keys, value_dim = k[-2], v[-1]
    return 2 * batch * heads * queries * keys * (2 * value_dim + 3 * dim)


def _cpu_attention_formulas() -> dict:
    """torch 2.11's FlopCounterMode has no formula for the CPU flash-attention kernels (and its
    SDPA formula refuses grouped-query shapes); later versions count them. Give the missing ops
    torch's own counting rule (equal to the built-in one where it exists: the tests pass on
    both)."""
    aten = torch.ops.aten
    formulas = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    }
    return {op: f for op, f in formulas.items() if op not in flop_counter.flop_registry}


def _counted(trainable: set[str]) -> dict[str, int]:
    inputs, _, _ = _packed_batch()
    torch.manual_seed(0)
    model = LlavaOV(TINY).train()
    modules = {"vision": model.vision, "projector": model.projector}
    modules["llm"] = torch.nn.ModuleList([model.language_model, model.lm_head])
    for name, module in modules.items():
        module.requires_grad_(name in trainable)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter:
        model(**inputs, return_logits=False).loss.backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    matmuls = sum(v for op, v in counts.items() if op in ("aten.mm", "aten.addmm", "aten.bmm"))
    attention = sum(v for op, v in counts.items() if "attention" in op)
    assert matmuls + attention == counter.get_total_flops()  # nothing else was counted
    return {"matmuls": matmuls, "attention": attention}


def _full_square_attention(lengths) -> float:
    """Attention forward FLOPs as FlopCounterMode counts them: causal or not, the full square."""
    vit = TINY.vision.depth * attention_flops(
        [h * w + 1 for h, w in GRIDS], TINY.vision.hidden_size, causal=False
    )
    width = TINY.text.num_attention_heads * TINY.text.head_dim
    return vit, TINY.text.num_hidden_layers * attention_flops(lengths, width, causal=False)


# What FlopCounterMode counts beyond our model FLOPs, accounted for below:
# - the loss head runs each chunk's forward twice (checkpointed, recomputed in backward);
# - its SDPA formula ignores causality (full s^2) and counts backward as 2.5x forward (flash
#   attention recomputes QK^T), where we count causal pairs and 2x.
# Neither counts element-wise work (norms, softmax, RoPE).


def test_all_modules_trained_matches_flop_counter_exactly():
    _, lengths, supervised = _packed_batch()
    ours = training_flops(
        TINY, sample_lengths=lengths, image_grids=GRIDS, supervised_tokens=supervised
    )
    counted = _counted({"vision", "projector", "llm"})
    head_recompute = ours.head / 3
    expected = ours.vision_dense + ours.projector + ours.llm_dense + ours.head + head_recompute
    assert counted["matmuls"] == pytest.approx(expected, rel=1e-9)
    vit, llm = _full_square_attention(lengths)
    assert counted["attention"] == pytest.approx(3.5 * (vit + llm), rel=1e-9)
    # our causal count is about half of the full square the counter uses
    assert ours.llm_attention / (3 * llm) == pytest.approx(0.5, abs=0.02)
    assert ours.vision_attention == pytest.approx(3 * vit, rel=1e-9)


def test_stage1_counts_vision_forward_only_and_no_llm_weight_gradients():
    _, lengths, supervised = _packed_batch()
    ours = training_flops(
        TINY,
        sample_lengths=lengths,
        image_grids=GRIDS,
        supervised_tokens=supervised,
        trainable=("projector",),
    )
    full = training_flops(
        TINY, sample_lengths=lengths, image_grids=GRIDS, supervised_tokens=supervised
    )
    counted = _counted({"projector"})
    head_recompute = ours.head / 2
    expected = ours.vision_dense + ours.projector + ours.llm_dense + ours.head + head_recompute
    assert counted["matmuls"] == pytest.approx(expected, rel=1e-9)
    vit, llm = _full_square_attention(lengths)
    assert counted["attention"] == pytest.approx(vit + 3.5 * llm, rel=1e-9)
    assert ours.llm_dense == pytest.approx(full.llm_dense * 2 / 3)
    assert ours.projector == full.projector


def test_dense_flops_are_six_times_tokens_times_matmul_parameters_for_4b_and_8b():
    for name in ("4b", "8b"):
        config = PRESETS[name]
        counts = parameter_counts(config)
        text, vision = config.text, config.vision
        flops = training_flops(
            config,
            sample_lengths=[1024] * 8,
            image_grids=[(32, 32)] * 16,  # 4096 image tokens of 8192
            supervised_tokens=4096,
        )
        norms = 2 * text.hidden_size + 2 * text.head_dim  # the layer's non-matmul parameters
        assert flops.llm_dense == 6 * 8192 * text.num_hidden_layers * (counts.decoder_layer - norms)
        block_matmuls = counts.vision_block - 4 * vision.hidden_size  # minus norms
        block_matmuls -= 3 * vision.hidden_size + vision.hidden_size  # and biases
        block_matmuls -= vision.intermediate_size + vision.hidden_size
        patch_embed = 2 * 16 * 32 * 32 * vision.patch_dim * vision.hidden_size
        assert flops.vision_dense == 6 * (16 * (32 * 32 + 1)) * vision.depth * block_matmuls + (
            2 * patch_embed
        )
        assert flops.head == 6 * 4096 * counts.lm_head
        assert flops.total > flops.llm_dense > flops.vision_dense > flops.projector


def test_unknown_module_is_an_error():
    with pytest.raises(RecipeError, match="unknown trainable"):
        training_flops(
            TINY, sample_lengths=[4], image_grids=[], supervised_tokens=1, trainable=("text",)
        )
