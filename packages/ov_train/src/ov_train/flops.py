"""Training FLOPs of one packed micro-batch of a LLaVA-OV model: the numerator of MFU.

Counted are the matrix products, as is usual for MFU (norms, softmax, RoPE and other
element-wise work are not). A matmul of an (m, k) input with a (k, n) weight costs 2 m k n in
forward; backward costs 2 m k n for the weight gradient when the weight trains and 2 m k n for
the input gradient when anything before it trains (so 6 m k n for a trained layer inside the
graph: the usual "6 x tokens x parameters").

Per module, with D/I the ViT width/MLP size, H/I' the LLM width/MLP size, Q = heads x head_dim,
K = kv_heads x head_dim, P_i the patches of image i (t_i = P_i + 1 with its class token),
s_j the length of packed sample j, S the supervised tokens, V the vocabulary:
- ViT dense: 2 x sum(t_i) x depth x (3D^2 + D^2 + 2 D I) (fused qkv, proj, fc1, fc2), plus the
  patch embedding 2 x sum(P_i) x (3 x 14 x 14) x D, whose input (pixels) needs no gradient:
  it costs 2x its forward in training, not 3x.
- ViT attention, bidirectional per image: QK^T and AV, 4 x D x t_i^2 per block.
- projector: 2 x (sum(P_i) / 4) x (4D x 4D + 4D x H).
- LLM dense: 2 x sum(s_j) x layers x (H Q + 2 H K + Q H + 3 H I').
- LLM attention, causal per sample: 4 x Q x s_j (s_j + 1) / 2 per layer (the pairs j <= i that
  a causal kernel computes; grouped-query attention shares k/v but not the products).
- head: 2 x S x H x V over the supervised rows only: the chunked loss (`ov_model.loss`) sends
  only rows with a target through lm_head; prompt, image and padding rows never reach it.

Training multiplies each forward by 3 for a module that trains, by 2 for a frozen module that
gradients pass through (a trainable module before it: Stage-1's LLM behind the projector), by 1
for a frozen module with nothing trainable before it (Stage-1's ViT). Attention's backward counts
2x its forward (dQ, dK, dV, dP) whenever gradients pass through it. These are model FLOPs:
activation checkpointing's recomputation (and flash attention's recomputation of QK^T in
backward) is extra hardware work that MFU does not credit.

Checked against `torch.utils.flop_counter.FlopCounterMode` on the tiny model (tests/test_flops):
the matmuls agree exactly once the counter's extras are accounted for (the loss head's
checkpointed chunks run forward twice; the counter's SDPA formula takes the full s^2 square for
causal attention and 2.5x forward for backward).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ov_model.config import LlavaOVConfig
from ov_train.config import MODULES
from ov_train.errors import RecipeError


@dataclass(frozen=True)
class StepFlops:
    """Training FLOPs (forward + backward) of one micro-batch, by part."""

    vision_dense: float
    vision_attention: float
    projector: float
    llm_dense: float
    llm_attention: float
    head: float

    @property
    def total(self) -> float:
        return (
            self.vision_dense
            + self.vision_attention
            + self.projector
            + self.llm_dense
            + self.llm_attention
            + self.head
        )


def _multipliers(trainable: set[str]) -> dict[str, int]:
    """Forward multiples per module: 3 trained, 2 gradient passes through, 1 forward only."""
    result, upstream = {}, False
    for module in MODULES:  # vision -> projector -> llm, the order data flows
        trains = module in trainable
        result[module] = 3 if trains else 2 if upstream else 1
        upstream = upstream or trains
    return result


def attention_flops(lengths: Iterable[int], width: int, *, causal: bool) -> float:
    """Forward FLOPs of QK^T and AV over sequences of `lengths`, `width` = heads x head_dim."""
    if causal:
        return float(sum(4 * width * n * (n + 1) // 2 for n in lengths))
    return float(sum(4 * width * n * n for n in lengths))


def training_flops(
    config: LlavaOVConfig,
    *,
    sample_lengths: Sequence[int],
    image_grids: Sequence[tuple[int, int]],
    supervised_tokens: int,
    trainable: Iterable[str] = MODULES,
) -> StepFlops:
    """Model FLOPs of one training micro-batch (see the module docstring).

    `sample_lengths` are the packed samples' token counts, `image_grids` each image's (h, w) in
    patches, `supervised_tokens` the rows with a next-token target."""
    trainable = set(trainable)
    unknown = trainable - set(MODULES)
    if unknown:
        raise RecipeError(f"unknown trainable modules {sorted(unknown)}; modules are {MODULES}")
    times = _multipliers(trainable)
    vision, text = config.vision, config.text
    d, h = vision.hidden_size, text.hidden_size
    patches = [rows * cols for rows, cols in image_grids]
    vit_tokens = [p + 1 for p in patches]

    block = 3 * d * d + d * d + 2 * d * vision.intermediate_size
    vit_dense = 2.0 * sum(vit_tokens) * vision.depth * block
    patch_embed = 2.0 * sum(patches) * vision.patch_dim * d
    vit_attention = vision.depth * attention_flops(vit_tokens, d, causal=False)
    # the patch embedding never computes its input gradient: one multiple less when it trains
    patch_times = times["vision"] - (1 if times["vision"] > 1 else 0)

    merged = sum(patches) // config.merge_size**2
    width = d * config.merge_size**2
    projector = 2.0 * merged * (width * width + width * h)

    q = text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    layer = h * q + 2 * h * kv + q * h + 3 * h * text.intermediate_size
    tokens = sum(sample_lengths)
    llm_dense = 2.0 * tokens * text.num_hidden_layers * layer
    llm_attention = text.num_hidden_layers * attention_flops(sample_lengths, q, causal=True)
    head = 2.0 * supervised_tokens * h * text.vocab_size

    def attention_times(module: str) -> int:  # no weights: backward whenever gradients flow
        return 3 if times[module] > 1 else 1

    return StepFlops(
        vision_dense=vit_dense * times["vision"] + patch_embed * patch_times,
        vision_attention=vit_attention * attention_times("vision"),
        projector=projector * times["projector"],
        llm_dense=llm_dense * times["llm"],
        llm_attention=llm_attention * attention_times("llm"),
        head=head * times["llm"],
    )
