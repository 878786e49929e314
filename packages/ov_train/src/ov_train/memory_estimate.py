"""Per-GPU memory of a training run, estimated from the model, the recipe and the layout.

What a GPU holds at the peak of a training step (the start of backward, or one layer's
recomputation inside it) is the sum of the lines below; the `ov-train estimate-memory` command
prints them. N is every parameter, N_t the trainable ones (`model.trainable`), s = dp_shard:

    total = 4 N/s + 4 N_t/s + 8 N_t/s + gathered + activations held + max(transients)
            + 2 GiB + 10% of all of it before the 2 GiB

Model state (FSDP2, world > 1: fp32 master weights sharded over the dp_shard ranks of a replica;
HSDP replicas hold the same shard):
- parameters: 4 N / s bytes (frozen modules are sharded fp32 too).
- gradients: 4 N_t / s (fp32, reduce-scattered after every micro-batch into the shard).
- optimizer: 8 N_t / s (AdamW exp_avg and exp_avg_sq, fp32).
- gathered: the bf16 copies MixedPrecisionPolicy(param_dtype=bf16) all-gathers (units as in
  `ov_train.distributed.fsdp`). The root unit (token embedding, final norm, lm_head) is not
  resharded after forward, so it stays gathered for the whole step: 2 bytes x its parameters,
  plus its unsharded bf16 gradients (2 bytes x its parameters when the LLM trains) held from
  the head's backward until the root's reduce-scatter at the end. Of the other units (ViT
  blocks, ViT stem, projector, decoder layers) two are gathered at a time (the running one and
  the prefetched next): 2 x 2 bytes x the largest unit, plus 2 x (2 bytes bf16 gradient + 4
  bytes fp32 reduce-scatter copy) x the largest trainable unit; with
  `reshard_after_forward = false` every unit stays gathered (2 bytes x all of them).
- A world of 1 keeps the plain single-device path (no wrappers): fp32 parameters, gradients and
  states unsharded, and under bf16 autocast a bf16 cast of every Linear weight held for the
  backward pass (2 bytes x the non-embedding parameters). So does a pipeline without data
  parallelism (`Layout.wrapped`).

Activations of one micro-batch of `micro_batch_tokens` packed tokens T, bf16 ("act", 2 bytes;
4 under the fp32 policy), counted from the saved tensors of the real code (see the catalogs
`decoder_layer_saved` and `vit_block_saved`, which name them; a test holds them to the saved
tensors of the tiny model measured with `saved_tensors_hooks`, within 5%):
- per decoder layer and token: the two RMSNorms' fp32 input, rstd, bf16 normalised input and
  output (the output is the q/k/v_proj and gate/up_proj input); Qwen3's q/k RMSNorms per head
  (fp32 input, rstd, normalised input); the attention kernel's q, k (after RoPE), v, output and
  fp32 log-sum-exp per head; the SwiGLU gate, up, silu(gate) and their product
  (4 x intermediate). RoPE keeps nothing per layer in the LLM: its cos/sin are constants, so
  autograd saves only them (once, shared by all layers). The 4B layer keeps about 166 KiB per
  token, the 8B one about 210 KiB.
- per ViT block and token (patches + one class token per image): LayerNorm inputs, mean, rstd
  and outputs, the fused qkv output (v keeps the whole buffer alive), RoPE's fp32 copy of q and
  k and their fp32 rotate_half (the ViT's cos/sin require grad: the class token's angles are
  the learned `class_pos_emb`), attention q, k, output, log-sum-exp, fc1 output and GELU
  output: about 52 KiB per token for RICE-ViT-L.
- outside the stacks: cos/sin (fp32), the final norm, the patch rows (pixels), pre_layernorm, the
  projector (LayerNorm in/out, fc1 out, GELU out: 4 values per patch), and the supervised rows of
  the final hidden state that the chunked loss keeps for its recomputation.
- activation checkpointing keeps only each checkpointed layer's input (T x hidden): `full`
  checkpoints every ViT block and decoder layer, `selective` every `checkpoint_every`-th
  (layers 0, N, 2N, ...), as `parallel.activation_checkpointing` does.
- a module keeps activations only when it or a module upstream of it trains (vision ->
  projector -> llm). A frozen LLM under a trainable projector (Stage-1) is counted in full, an
  upper bound: its Linear layers need not keep their inputs.

Assumptions about the data (the `Workload`, all printed by the command): a fraction
`image_token_fraction` of the T tokens are image tokens (default 0.5), each of merge^2 = 4 ViT
patches; images average `tokens_per_image` LLM tokens (default 1024, about a 900 x 900 image);
a fraction `supervised_fraction` of the tokens are supervised targets (default: all text tokens,
1 - image_token_fraction, an upper bound).

Transients on top of what is held (the largest one counts, they do not overlap):
- the loss head: one chunk of `ov_model.loss.DEFAULT_CHUNK` supervised rows x vocab, recomputed
  in backward: fp32 logits, fp32 log-softmax and the fp32 gradient live together (the bf16
  logits are freed once cast): 12 bytes per logit.
- one layer in backward: when checkpointed, its recomputed saved tensors plus the gradients
  flowing through them, 1.5 x a layer's saved bytes; otherwise only those gradients,
  0.5 x (its own saved tensors are already counted as held).
Both were calibrated on the tiny model on CPU with torch.profiler's memory timeline (peak minus
what is held; a deprecated API, so a measurement recorded here rather than a CI test): the head
took 11.9-12.0 bytes per logit in bf16 and fp32; with the head taken out (no supervised rows)
a recomputed layer took 1.13 x its saved bytes and a kept one 0.37 x. The factors above round
those up. Whole-step peaks measured there (pixels and parameter gradients included): 36.0 MB
without checkpointing and 15.3 MB with full, against 35.7 and 15.9 MB from this formula (the CPU
attention path keeps 0.9 MB of extra output copies that a GPU kernel does not).

Allowance: 2 GiB fixed (CUDA context, NCCL and cuBLAS workspaces) + 10% of everything above for
allocator fragmentation. A run "fits" when the total is at most the GPU memory in GiB
(an A800/A100 80GB has 80 GiB).

Tensor, sequence, context and pipeline parallelism (`Layout`: pp, dp_replicate, dp_shard, cp,
tp; every quantity above is then per rank of pipeline rank `pp_rank`, `RankParameters`):
- parameters: a rank holds its pipeline stages' modules (stage 0: ViT, projector, token
  embedding; the last stage: final norm and lm_head; decoder layers as `stage_layers` splits
  them); tensor parallel splits each decoder projection and the vocabulary (embedding, head)
  over tp, the norms stay whole, the ViT and projector are replicated over tp; FSDP2 then
  shards all of it over dp_shard x cp (`fsdp_shards`).
- activations, per decoder layer: a rank holds T / cp of the row's tokens; of each saved tensor
  (`SavedTensor.split`) the per-head and MLP-column ones are divided by tp, the norms' own ones
  by tp under sequence parallelism, a column-parallel Linear's all-gathered input is the whole
  T / cp on every tp rank; context parallelism's all-gather path keeps the whole row's k and v
  (ring: only the local block). A checkpointed layer keeps its sequence-sharded input. The ViT
  and projector run whole on every cp and tp rank of stage 0 (the release runs the ViT at
  cp = 1). The head keeps T / cp supervised rows (gathered over tp) and its chunk transient has
  vocab / tp columns.
- pipelining: a rank holds the activations of several micro-batches at its peak, per stage
  it holds (`in_flight_stages`): 1F1B min(pp - r, m) on pipeline rank r (pp on rank 0); the
  interleaved schedules are played through in Megatron's (and torch's) order (a warm-up of
  2 (pp - r - 1) + (v - 1) pp forwards taken round by round, pp micro-batches through a chunk
  then the next chunk, then one forward and one backward in turn) and the heaviest moment is
  kept: stage 0's chunk is heavier (the ViT), so the peak comes after the warm-up, when the
  forwards of chunk 0 have outrun its backwards (with equal chunks rank 0 holds
  pp (1 + (pp - 1) / (pp v)) micro-batches of all its chunks, Korthikanti et al. 2022). Measured on
  the tiny model through the real schedules (1F1B, Interleaved1F1B, pp 2): within 4% on each
  rank. The zero-bubble schedules (InterleavedZeroBubble, ZBVZeroBubble) split backward into
  an input-gradient pass and a weight-gradient pass deferred into the bubbles, and torch keeps
  a micro-batch's whole graph until the second: measured, they hold 2-3x what 1F1B does (pp 2,
  4 micro-batches). They are given an upper bound, min(m, 2 pp) micro-batches on every stage
  of the rank, held above the measurement by a test, not fitted to it.

Not modelled: the attention kernels' own workspace (flash attention keeps none of size T^2),
int64 index tensors (< 0.1%), and the single-process autocast path's fp32 residual stream (the
activations are counted as bf16 there too: an underestimate for a world of 1).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ov_model.config import LlavaOVConfig, TextConfig
from ov_model.loss import DEFAULT_CHUNK
from ov_train.config import (
    ACTIVATION_CHECKPOINTING,
    CP_ATTENTION,
    MODULES,
    PP_SCHEDULES,
    ParallelConfig,
    Recipe,
)
from ov_train.errors import RecipeError
from rice_vit import RiceViTConfig

GIB = 2**30
ZERO_BUBBLE_SCHEDULES = ("InterleavedZeroBubble", "ZBVZeroBubble")
FIXED_ALLOWANCE = 2 * GIB
FRAGMENTATION = 0.10
HEAD_BYTES_PER_LOGIT = 12
RECOMPUTED_LAYER = 1.5
"""Backward transient of a checkpointed layer, in units of its saved bytes."""
KEPT_LAYER = 0.5
"""Backward transient of a layer that kept its activations (the gradients through it)."""


# ------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ParameterCounts:
    """Parameter values of a LLaVA-OV model by module and by FSDP unit."""

    vision: int
    projector: int
    language_model: int
    """embed_tokens, decoder layers, final norm."""
    lm_head: int
    """0 when tied to the embeddings."""
    vision_block: int
    decoder_layer: int
    embedding: int
    vision_depth: int
    text_layers: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.language_model + self.lm_head

    @property
    def root(self) -> int:
        """The root FSDP unit: token embedding, final norm, lm_head (`distributed.fsdp`)."""
        return self.language_model + self.lm_head - self.text_layers * self.decoder_layer

    @property
    def vision_stem(self) -> int:
        """The ViT outside its blocks (patch embedding, class token, pre-layernorm): a unit."""
        return self.vision - self.vision_depth * self.vision_block

    def of_module(self, module: str) -> int:
        """Parameters of one trainable unit of `ov_train.config.MODULES`."""
        llm = self.language_model + self.lm_head
        return _unit_parameters(module, vision=self.vision, projector=self.projector, llm=llm)

    def largest_unit(self, modules: Iterable[str]) -> int:
        """The largest FSDP unit below the root among those of `modules`."""
        units = {
            "vision": (self.vision_block, self.vision_stem),
            "projector": (self.projector,),
            "llm": (self.decoder_layer,),
        }
        return max((size for m in modules for size in units[m]), default=0)


def _unit_parameters(module: str, *, vision: int, projector: int, llm: int) -> int:
    """The parameters of trainable unit `module` of `ov_train.config.MODULES`, given each
    unit's; RecipeError for a name that is not one of them."""
    if module == "vision":
        return vision
    if module == "projector":
        return projector
    if module == "llm":
        return llm
    raise RecipeError(f"unknown module {module!r}; modules are {list(MODULES)}")


def _vision_block_parameters(vision: RiceViTConfig) -> int:
    d, inner = vision.hidden_size, vision.intermediate_size
    norms = 2 * 2 * d
    attention = d * 3 * d + 3 * d + d * d + d
    mlp = d * inner + inner + inner * d + d
    return norms + attention + mlp


def _decoder_layer_parameters(text: TextConfig) -> int:
    h, q = text.hidden_size, text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    attention = h * q + 2 * h * kv + q * h
    if text.attention_bias:
        attention += q + 2 * kv
    if text.qk_norm:
        attention += 2 * text.head_dim
    mlp = 3 * h * text.intermediate_size
    return 2 * h + attention + mlp


def parameter_counts(config: LlavaOVConfig) -> ParameterCounts:
    """Parameter counts of `LlavaOV(config)`, from the config alone (no tensors)."""
    vision, text = config.vision, config.text
    d = vision.hidden_size
    patch = vision.in_channels * vision.patch_size**2 * d
    vision_rest = patch + d + vision.head_dim // 2 + 2 * d
    if vision.has_post_layernorm:
        vision_rest += 2 * d
    vision_block = _vision_block_parameters(vision)
    width = d * config.merge_size**2
    projector = 2 * d + width * width + width + width * text.hidden_size + text.hidden_size
    layer = _decoder_layer_parameters(text)
    embedding = text.vocab_size * text.hidden_size
    language_model = embedding + text.num_hidden_layers * layer + text.hidden_size
    return ParameterCounts(
        vision=vision_rest + vision.depth * vision_block,
        projector=projector,
        language_model=language_model,
        lm_head=0 if text.tie_word_embeddings else embedding,
        vision_block=vision_block,
        decoder_layer=layer,
        embedding=embedding,
        vision_depth=vision.depth,
        text_layers=text.num_hidden_layers,
    )


def _tensor_parallel_layer(text: TextConfig, tp: int) -> int:
    """One decoder layer's parameters on a TP rank: the projections' weights and biases are
    split over tp (q/k/v/gate/up by output column, o/down by input row); the norms, Qwen3's
    per-head q/k norms included, are whole on every rank."""
    h, q = text.hidden_size, text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    split = h * q + 2 * h * kv + q * h + 3 * h * text.intermediate_size
    if text.attention_bias:
        split += q + 2 * kv
    whole = 2 * h + (2 * text.head_dim if text.qk_norm else 0)
    return split // tp + whole


@dataclass(frozen=True)
class RankParameters:
    """Parameter values one rank computes with, before FSDP2 shards them over dp_shard x cp: its
    pipeline stages' modules, decoder layers split over tp; by FSDP unit."""

    vision: int
    """The whole ViT (0 off the first stage): replicated over tp and cp."""
    vision_block: int
    projector: int
    decoder_layer: int
    """One decoder layer's TP-local parameters."""
    layers: int
    """Decoder layers on this rank."""
    root: int
    """The root unit's own parameters: the token embedding (first stage), final norm and
    lm_head (last stage), the vocabulary split over tp."""
    vision_stem: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.layers * self.decoder_layer + self.root

    def of_module(self, module: str) -> int:
        """This rank's parameters of one trainable unit of `ov_train.config.MODULES`."""
        llm = self.layers * self.decoder_layer + self.root
        return _unit_parameters(module, vision=self.vision, projector=self.projector, llm=llm)

    def largest_unit(self, modules: Iterable[str]) -> int:
        """The largest FSDP unit below the root among those of `modules` on this rank."""
        units = {
            "vision": (self.vision_block, self.vision_stem) if self.vision else (),
            "projector": (self.projector,),
            "llm": (self.decoder_layer,) if self.layers else (),
        }
        return max((size for m in modules for size in units[m]), default=0)


def rank_parameters(config: LlavaOVConfig, layout: "Layout", pp_rank: int = 0) -> RankParameters:
    """The parameters pipeline rank `pp_rank` of `layout` holds (see `RankParameters`).

    Tensor parallel splits every decoder projection and the vocabulary of the embedding and the
    head (vocabulary-parallel) over tp; the ViT and the projector stay whole (replicated over
    tp, sharded by FSDP2 only)."""
    counts = parameter_counts(config)
    text, tp = config.text, layout.tp
    stages = layout.rank_stages(pp_rank)
    per_stage = layout.stage_layers(text.num_hidden_layers)
    first, last = 0 in stages, layout.virtual_stages - 1 in stages
    vocabulary = counts.embedding // tp
    root = (vocabulary if first else 0) + (
        text.hidden_size + (counts.lm_head // tp if counts.lm_head else 0) if last else 0
    )
    return RankParameters(
        vision=counts.vision if first else 0,
        vision_block=counts.vision_block,
        projector=counts.projector if first else 0,
        decoder_layer=_tensor_parallel_layer(text, tp),
        layers=sum(per_stage[stage] for stage in stages),
        root=root,
        vision_stem=counts.vision_stem if first else 0,
    )


# ------------------------------------------------------------------------------ activations
@dataclass(frozen=True)
class SavedTensor:
    """A tensor the forward keeps for backward: `per_token` values per token, in fp32 or in the
    activation dtype."""

    name: str
    per_token: int
    fp32: bool = False
    split: str = "tensor"
    """How tensor + sequence parallelism divides it (`SPLITS`): "sequence" (outside the TP
    region: divided by tp under sequence parallelism), "gathered" (a column-parallel Linear's
    input: the whole sequence on every TP rank), "tensor" (per head or MLP column: divided by
    tp), "kv" (a "tensor" one that context parallelism's all-gather path keeps whole)."""

    def bytes_per_token(self, activation_bytes: int) -> int:
        return self.per_token * (4 if self.fp32 else activation_bytes)


SPLITS = ("sequence", "gathered", "tensor", "kv")


def _rms_norm(
    name: str, width: int, rows: int = 1, *, output: bool, per_head: bool = False
) -> list[SavedTensor]:
    # ov_model.language_model.RMSNorm: x.to(fp32) and rsqrt(mean(x^2)) are saved by the
    # multiply, the cast-back x_hat by the weight multiply; the output itself only when the
    # next op keeps it (a Linear does for its weight gradient; RoPE does not).
    # Under TP the decoder's two norms run on the sequence-sharded stream ("sequence") and their
    # output is all-gathered for the column-parallel projections ("gathered"); q/k norms act on
    # this rank's heads ("tensor").
    split = "tensor" if per_head else "sequence"
    saved = [
        SavedTensor(f"{name} fp32 input", width, fp32=True, split=split),
        SavedTensor(f"{name} rstd", rows, fp32=True, split=split),
        SavedTensor(f"{name} normalised input", width, split=split),
    ]
    if output:
        saved.append(SavedTensor(f"{name} output", width, split="gathered"))
    return saved


def _vit_rope(name: str, width: int) -> list[SavedTensor]:
    # x32 * cos + rotate_half(x32) * sin: cos/sin require grad in the ViT (the class token's
    # angles are the learned `class_pos_emb`), so both fp32 factors are kept. In the LLM cos/sin
    # are constants and RoPE keeps nothing per layer.
    return [
        SavedTensor(f"{name} fp32 copy (RoPE)", width, fp32=True),
        SavedTensor(f"{name} rotate_half (RoPE)", width, fp32=True),
    ]


def decoder_layer_saved(text: TextConfig) -> tuple[SavedTensor, ...]:
    """The tensors one Qwen decoder layer keeps for backward, per token."""
    q = text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    inner = text.intermediate_size
    saved = _rms_norm("input_layernorm", text.hidden_size, output=True)  # q/k/v_proj input
    if text.qk_norm:
        saved += _rms_norm("q_norm", q, text.num_attention_heads, output=False, per_head=True)
        saved += _rms_norm("k_norm", kv, text.num_key_value_heads, output=False, per_head=True)
    saved += [
        SavedTensor("attention q (after RoPE)", q),
        SavedTensor("attention k (after RoPE)", kv, split="kv"),
        SavedTensor("attention v", kv, split="kv"),
        SavedTensor("attention output (o_proj input)", q),
        SavedTensor("attention log-sum-exp", text.num_attention_heads, fp32=True),
    ]
    saved += _rms_norm("post_attention_layernorm", text.hidden_size, output=True)
    saved += [
        SavedTensor("gate_proj output", inner),
        SavedTensor("up_proj output", inner),
        SavedTensor("silu(gate)", inner),
        SavedTensor("silu(gate) * up (down_proj input)", inner),
    ]
    return tuple(saved)


def vit_block_saved(vision: RiceViTConfig) -> tuple[SavedTensor, ...]:
    """The tensors one RICE-ViT block keeps for backward, per token (patch or class token)."""
    d = vision.hidden_size
    return (
        SavedTensor("norm1 input", d),
        SavedTensor("norm1 mean, rstd", 2, fp32=True),
        SavedTensor("norm1 output (qkv input)", d),
        SavedTensor("qkv output (v is a view of it)", 3 * d),
        *_vit_rope("q", d),
        *_vit_rope("k", d),
        SavedTensor("attention q", d),
        SavedTensor("attention k", d),
        SavedTensor("attention output (proj input)", d),
        SavedTensor("attention log-sum-exp", vision.num_heads, fp32=True),
        SavedTensor("norm2 input", d),
        SavedTensor("norm2 mean, rstd", 2, fp32=True),
        SavedTensor("norm2 output (fc1 input)", d),
        SavedTensor("fc1 output", vision.intermediate_size),
        SavedTensor("gelu output (fc2 input)", vision.intermediate_size),
    )


def saved_bytes_per_token(saved: Iterable[SavedTensor], activation_bytes: int) -> int:
    """Bytes per token of a catalog of saved tensors."""
    return sum(item.bytes_per_token(activation_bytes) for item in saved)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What one micro-batch holds (the data assumptions of the estimate)."""

    micro_batch_tokens: int
    image_token_fraction: float = 0.5
    """Share of the packed tokens that are image tokens (each = merge^2 ViT patches)."""
    tokens_per_image: int = 1024
    """Mean LLM tokens per image (sets the number of ViT class tokens)."""
    supervised_fraction: float | None = None
    """Share of tokens with a supervised target (None: every text token)."""
    loss_chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.micro_batch_tokens < 1:
            raise RecipeError(f"micro_batch_tokens must be >= 1, got {self.micro_batch_tokens}")
        if not 0 <= self.image_token_fraction <= 1:
            raise RecipeError(
                f"image_token_fraction must lie in [0, 1], got {self.image_token_fraction}"
            )
        if self.supervised_fraction is not None and not 0 <= self.supervised_fraction <= 1:
            raise RecipeError(
                f"supervised_fraction must lie in [0, 1], got {self.supervised_fraction}"
            )
        if self.tokens_per_image < 1 or self.loss_chunk < 1:
            raise RecipeError("tokens_per_image and loss_chunk must be >= 1")

    @property
    def image_tokens(self) -> int:
        return round(self.micro_batch_tokens * self.image_token_fraction)

    @property
    def images(self) -> int:
        return math.ceil(self.image_tokens / self.tokens_per_image)

    @property
    def supervised_tokens(self) -> int:
        fraction = self.supervised_fraction
        if fraction is None:
            fraction = 1 - self.image_token_fraction
        return round(self.micro_batch_tokens * fraction)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How the run is spread: world size, mesh degrees (pp, dp_replicate, dp_shard, cp, tp),
    activation checkpointing and the pipeline's shape."""

    world_size: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    sequence_parallel: bool = True
    """With tp > 1: the norms and the residual stream are sharded over the tokens."""
    cp_attention: str = "allgather"
    pp_schedule: str = "1F1B"
    pp_stages_per_rank: int = 1
    pp_layers: tuple[int, ...] = ()
    """Decoder layers per virtual stage, in order (empty: an even split, see `stage_layers`)."""
    micro_batches: int = 1
    """Micro-batches one pipeline runs per step (caps the ones in flight)."""
    activation_checkpointing: str = "none"
    checkpoint_every: int = 2
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        degrees = self.dp_replicate * self.dp_shard * self.tp * self.pp * self.cp
        if min(self.dp_replicate, self.dp_shard, self.tp, self.pp, self.cp) < 1 or (
            self.world_size < 1 or degrees != self.world_size
        ):
            raise RecipeError(
                f"pp {self.pp} x dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} x "
                f"cp {self.cp} x tp {self.tp} = {degrees} must equal the world size "
                f"{self.world_size}"
            )
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise RecipeError(
                f"activation_checkpointing must be one of {list(ACTIVATION_CHECKPOINTING)}, got "
                f"{self.activation_checkpointing!r}"
            )
        if self.checkpoint_every < 1:
            raise RecipeError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.pp_schedule not in PP_SCHEDULES:
            raise RecipeError(
                f"pp_schedule must be one of {list(PP_SCHEDULES)}, got {self.pp_schedule!r}"
            )
        if self.cp_attention not in CP_ATTENTION:
            raise RecipeError(
                f"cp_attention must be one of {list(CP_ATTENTION)}, got {self.cp_attention!r}"
            )
        if self.pp_stages_per_rank < 1 or self.micro_batches < 1:
            raise RecipeError("pp_stages_per_rank and micro_batches must be >= 1")
        if self.pp_schedule == "ZBVZeroBubble" and self.pp_stages_per_rank != 2:
            raise RecipeError("pp_schedule ZBVZeroBubble runs 2 stages per rank (V shape)")

    @classmethod
    def from_parallel(
        cls, parallel: ParallelConfig, world_size: int, *, micro_batches: int = 1
    ) -> "Layout":
        """The layout a recipe's `parallel` section gives on `world_size` processes."""
        shape = parallel.degrees(world_size)
        return cls(
            world_size=world_size,
            dp_replicate=shape.dp_replicate,
            dp_shard=shape.dp_shard,
            tp=shape.tp,
            pp=shape.pp,
            cp=shape.cp,
            sequence_parallel=parallel.sequence_parallel,
            cp_attention=parallel.cp_attention,
            pp_schedule=parallel.pp_schedule,
            pp_stages_per_rank=parallel.pp_stages_per_rank,
            pp_layers=parallel.pp_layers,
            micro_batches=micro_batches,
            activation_checkpointing=parallel.activation_checkpointing,
            checkpoint_every=parallel.checkpoint_every,
            reshard_after_forward=parallel.reshard_after_forward,
        )

    @property
    def fsdp_shards(self) -> int:
        """Ranks FSDP2 shards each parameter over: dp_shard x cp."""
        return self.dp_shard * self.cp

    @property
    def wrapped(self) -> bool:
        """Whether FSDP2 wraps the model: with several processes, except a pipeline without
        data parallelism (`distributed.pipeline` leaves FSDP2 out there: bf16 runs under
        autocast, as in one process)."""
        if self.world_size == 1:
            return False
        return not (self.pp > 1 and self.dp_replicate * self.fsdp_shards == 1)

    @property
    def sequence_sharded(self) -> bool:
        """Whether sequence parallelism splits the norms' tokens over the TP ranks."""
        return self.tp > 1 and self.sequence_parallel

    @property
    def virtual_stages(self) -> int:
        return self.pp * self.pp_stages_per_rank

    def stage_layers(self, layers: int) -> tuple[int, ...]:
        """Decoder layers of each virtual stage: `pp_layers`, or `layers` split evenly with the
        remainder going to the stages after the first (stage 0 also runs the ViT), as
        `distributed.pipeline_plan` splits them; RecipeError when they do not add up."""
        stages = self.virtual_stages
        if self.pp_layers:
            if len(self.pp_layers) != stages or sum(self.pp_layers) != layers:
                raise RecipeError(
                    f"pp_layers {list(self.pp_layers)} must list {stages} stages "
                    f"(pp {self.pp} x pp_stages_per_rank {self.pp_stages_per_rank}) adding up "
                    f"to the model's {layers} decoder layers"
                )
            return self.pp_layers
        if layers < stages:
            raise RecipeError(
                f"{layers} decoder layers cannot fill {stages} pipeline stages (pp {self.pp} x "
                f"pp_stages_per_rank {self.pp_stages_per_rank})"
            )
        base, extra = divmod(layers, stages)
        return tuple(base + (0 < index <= extra) for index in range(stages))

    def rank_stages(self, pp_rank: int) -> tuple[int, ...]:
        """The virtual stages pipeline rank `pp_rank` runs: r, r + pp, ... (looped), or r and
        2 pp - 1 - r for the V schedule."""
        if not 0 <= pp_rank < self.pp:
            raise RecipeError(f"pipeline rank {pp_rank} is outside 0..{self.pp - 1}")
        if self.pp_schedule == "ZBVZeroBubble":
            return (pp_rank, 2 * self.pp - 1 - pp_rank)
        return tuple(pp_rank + self.pp * chunk for chunk in range(self.pp_stages_per_rank))

    def in_flight_stages(
        self, pp_rank: int, stage_bytes: dict[int, float] | None = None
    ) -> dict[int, int]:
        """Micro-batches in flight per virtual stage of pipeline rank `pp_rank` at the moment
        its held activations peak, `stage_bytes` being one micro-batch's activations of each
        stage (default: equal); see the module docstring."""
        stages = self.rank_stages(pp_rank)
        steps = self.micro_batches
        if self.pp == 1:
            return {stage: 1 for stage in stages}
        if self.pp_schedule == "1F1B":
            return {stages[0]: min(self.pp - pp_rank, steps)}
        if self.pp_schedule in ZERO_BUBBLE_SCHEDULES:
            # a micro-batch's whole graph stays from its input-gradient pass to its deferred
            # weight-gradient pass: an upper bound, not a fit (see the module docstring)
            return dict.fromkeys(stages, min(steps, 2 * self.pp))
        return self._interleaved_peak(pp_rank, stage_bytes or dict.fromkeys(stages, 1.0))

    def _interleaved_peak(self, pp_rank: int, stage_bytes: dict[int, float]) -> dict[int, int]:
        # Megatron's (and torch's) interleaved 1F1B on one rank: forwards run round by round
        # (pp micro-batches through a chunk, then the next chunk), backwards the same with the
        # chunks reversed; a warm-up of (v - 1) pp + 2 (pp - r - 1) forwards, then one forward
        # and one backward in turn, then the remaining backwards.
        stages, pp = self.rank_stages(pp_rank), self.pp
        chunks, total = len(stages), self.micro_batches * len(stages)
        forward = [stages[(k // pp) % chunks] for k in range(total)]
        backward = [stages[chunks - 1 - (k // pp) % chunks] for k in range(total)]
        warm = min((chunks - 1) * pp + 2 * (pp - pp_rank - 1), total)
        order = [("F", k) for k in range(warm)]
        for k in range(total - warm):
            order += [("F", warm + k), ("B", k)]
        order += [("B", k) for k in range(total - warm, total)]
        held = dict.fromkeys(stages, 0)
        peak, best = -1.0, dict(held)
        for kind, k in order:
            if kind == "F":
                held[forward[k]] += 1
                size = sum(stage_bytes[stage] * count for stage, count in held.items())
                if size > peak:
                    peak, best = size, dict(held)
            else:
                held[backward[k]] -= 1
        return best

    def in_flight(self, pp_rank: int) -> float:
        """Micro-batches in flight at pipeline rank `pp_rank`'s peak, in units of one
        micro-batch through all of its stages."""
        return sum(self.in_flight_stages(pp_rank).values()) / len(self.rank_stages(pp_rank))

    def checkpointed(self, layers: int) -> int:
        """How many of a stack's `layers` layers recompute their forward in backward."""
        if self.activation_checkpointing == "full":
            return layers
        if self.activation_checkpointing == "selective":
            return math.ceil(layers / self.checkpoint_every)
        return 0


@dataclass(frozen=True, kw_only=True)
class ActivationBytes:
    """Activation memory of one rank at its peak, by part: one micro-batch's held at the end of
    its forward, times the micro-batches a pipeline rank holds in flight (`in_flight`)."""

    vision: int
    projector: int
    language_model: int
    head: int
    transient: int
    """The largest transient of backward (the loss chunk or one layer), on top of `held`."""
    in_flight: float = 1.0
    """Micro-batches held at the peak, in units of one through all of the rank's stages."""
    stages_in_flight: dict[int, int] = field(default_factory=dict)
    """Micro-batches held at the peak per virtual stage of the rank."""

    @property
    def held(self) -> int:
        return self.vision + self.projector + self.language_model + self.head


def layer_bytes_per_token(saved: Iterable[SavedTensor], act: int, layout: Layout) -> float:
    """Bytes one decoder layer keeps per token of the packed row on one rank of `layout`:
    context parallelism gives a rank 1/cp of the tokens (its all-gather path keeps the whole
    row's k and v), tensor parallelism 1/tp of the heads and MLP columns, sequence parallelism
    1/tp of the tokens outside the TP region (see `SavedTensor.split`)."""
    total = 0.0
    whole_kv = layout.cp_attention == "allgather"
    for item in saved:
        size = item.bytes_per_token(act) / layout.cp
        if item.split == "sequence" and layout.sequence_sharded:
            size /= layout.tp
        elif item.split in ("tensor", "kv"):
            size /= layout.tp
            if item.split == "kv" and whole_kv:
                size *= layout.cp
        total += size
    return total


def activation_bytes(
    config: LlavaOVConfig,
    workload: Workload,
    layout: Layout,
    *,
    trainable: Iterable[str] = MODULES,
    element_bytes: int = 2,
    pp_rank: int = 0,
) -> ActivationBytes:
    """Activation memory of pipeline rank `pp_rank` (see the module docstring for every term);
    `element_bytes` is the activation dtype's size (2: bf16, 4: fp32)."""
    trainable = set(trainable)
    act = element_bytes
    text, vision = config.text, config.vision
    tokens = workload.micro_batch_tokens
    local = tokens / layout.cp  # the LLM's tokens on this rank (the ViT runs at cp = 1)
    stream = local / layout.tp if layout.sequence_sharded else local
    stages = layout.rank_stages(pp_rank)
    first = 0 in stages
    per_stage = layout.stage_layers(text.num_hidden_layers)
    vision_keeps = "vision" in trainable and first
    projector_keeps = (vision_keeps or "projector" in trainable) and first

    layer_bytes = tokens * layer_bytes_per_token(decoder_layer_saved(text), act, layout)
    patches = workload.image_tokens * config.merge_size**2
    vit_tokens = patches + workload.images
    vit = projector = 0.0
    transients = []
    if vision_keeps and patches:
        block_bytes = vit_tokens * saved_bytes_per_token(vit_block_saved(vision), act)
        blocks = vision.depth
        vit_checkpointed = layout.checkpointed(blocks)
        vit = (blocks - vit_checkpointed) * block_bytes
        vit += vit_checkpointed * vit_tokens * vision.hidden_size * act
        vit += patches * vision.patch_dim * act  # pixel rows kept by the patch embedding
        vit += vit_tokens * (vision.hidden_size * act + 8)  # pre_layernorm input, mean, rstd
        vit += vit_tokens * vision.head_dim * 3 * 4  # angles, cos, sin (fp32)
        transients.append(block_bytes * (RECOMPUTED_LAYER if vit_checkpointed else KEPT_LAYER))
    if projector_keeps and patches:
        projector = patches * (4 * vision.hidden_size * act + 8)

    # one micro-batch's decoder activations per stage of this rank, then the peak's counts
    stage_llm, stage_head = {}, {}
    for stage in stages:
        layers = per_stage[stage]
        checkpointed = layout.checkpointed(layers)
        held = (layers - checkpointed) * layer_bytes
        held += checkpointed * stream * text.hidden_size * act
        held += local * 2 * text.head_dim * 4  # cos, sin (fp32)
        if layers:
            transients.append(layer_bytes * (RECOMPUTED_LAYER if checkpointed else KEPT_LAYER))
        stage_head[stage] = 0.0
        if stage == layout.virtual_stages - 1:
            norm = _rms_norm("norm", text.hidden_size, output=False)
            held += stream * saved_bytes_per_token(norm, act)
            supervised = workload.supervised_tokens / layout.cp
            stage_head[stage] = supervised * text.hidden_size * act
            chunk_rows = min(workload.loss_chunk, supervised)
            transients.append(chunk_rows * text.vocab_size / layout.tp * HEAD_BYTES_PER_LOGIT)
        stage_llm[stage] = held
    first_stage = vit + projector
    sizes = {
        stage: stage_llm[stage] + stage_head[stage] + (first_stage if stage == 0 else 0.0)
        for stage in stages
    }
    flights = layout.in_flight_stages(pp_rank, sizes)
    first_count = flights.get(0, 0)
    return ActivationBytes(
        vision=round(first_count * vit),
        projector=round(first_count * projector),
        language_model=round(sum(n * stage_llm[s] for s, n in flights.items())),
        head=round(sum(n * stage_head[s] for s, n in flights.items())),
        transient=round(max(transients, default=0)),
        in_flight=sum(flights.values()) / len(stages),
        stages_in_flight=flights,
    )


# ------------------------------------------------------------------------------ the estimate
@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Per-GPU bytes of a training run, by line of the module docstring."""

    parameters: int
    gradients: int
    optimizer: int
    gathered: int
    """bf16 all-gathered parameters and unsharded gradient buffers (FSDP2), or the autocast
    weight casts of a single process."""
    activations: ActivationBytes
    layout: Layout
    workload: Workload
    pp_rank: int = 0
    rank_parameters: RankParameters | None = None
    """What the rank computes with before FSDP2 shards it (tensor- and pipeline-split)."""

    @property
    def model_state(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.gathered

    @property
    def before_allowance(self) -> int:
        return self.model_state + self.activations.held + self.activations.transient

    @property
    def allowance(self) -> int:
        return FIXED_ALLOWANCE + round(FRAGMENTATION * self.before_allowance)

    @property
    def total(self) -> int:
        return self.before_allowance + self.allowance

    def fits(self, gpu_memory_gib: float) -> bool:
        """Whether the total is at most `gpu_memory_gib` GiB."""
        return self.total <= gpu_memory_gib * GIB


def estimate_memory(
    config: LlavaOVConfig,
    workload: Workload,
    layout: Layout,
    *,
    trainable: Iterable[str] = MODULES,
    dtype: str = "bf16",
    pp_rank: int = 0,
) -> MemoryEstimate:
    """Memory of pipeline rank `pp_rank` (any of its dp / cp / tp ranks: they hold the same
    amounts) when training `config` with `trainable` modules on `layout`.

    `dtype` is the recipe's `train.dtype` on a GPU: auto and bf16 compute in bf16, fp32 in fp32.
    """
    if dtype not in ("auto", "bf16", "fp32"):
        raise RecipeError(f"dtype must be auto, bf16 or fp32, got {dtype!r}")
    trainable = tuple(trainable)
    unknown = [m for m in trainable if m not in MODULES]
    if unknown:
        raise RecipeError(f"unknown trainable modules {unknown}; modules are {list(MODULES)}")
    act = 4 if dtype == "fp32" else 2
    rank = rank_parameters(config, layout, pp_rank)
    total = rank.total
    trained = sum(rank.of_module(m) for m in trainable)
    if not layout.wrapped:
        shard = 1
        embedding = parameter_counts(config).embedding // layout.tp if rank.vision else 0
        gathered = 0 if act == 4 else 2 * (total - embedding)
    else:
        shard = layout.fsdp_shards
        root_trained = rank.root if "llm" in trainable else 0
        gathered = act * rank.root + act * root_trained
        if layout.reshard_after_forward:
            gathered += 2 * act * rank.largest_unit(MODULES)
        else:
            gathered += act * (total - rank.root)
        gathered += 2 * (act + 4) * rank.largest_unit(trainable)
    activations = activation_bytes(
        config, workload, layout, trainable=trainable, element_bytes=act, pp_rank=pp_rank
    )
    return MemoryEstimate(
        parameters=math.ceil(4 * total / shard),
        gradients=math.ceil(4 * trained / shard),
        optimizer=math.ceil(8 * trained / shard),
        gathered=gathered,
        activations=activations,
        layout=layout,
        workload=workload,
        pp_rank=pp_rank,
        rank_parameters=rank,
    )


def recipe_model_config(recipe: Recipe) -> LlavaOVConfig:
    """The architecture a recipe trains: `model.path`'s config.json when there is one, else the
    `model.preset`."""
    if recipe.model.path is not None:
        path = Path(recipe.model.path) / "config.json"
        if path.is_file():
            return LlavaOVConfig.from_file(path)
    return LlavaOVConfig.from_preset(recipe.model.preset)


def estimate_recipe_memory(
    recipe: Recipe,
    world_size: int,
    *,
    image_token_fraction: float = 0.5,
    tokens_per_image: int = 1024,
    supervised_fraction: float | None = None,
    pp_rank: int = 0,
) -> MemoryEstimate:
    """`estimate_memory` of a recipe on `world_size` GPUs (pipeline rank `pp_rank`): its model
    (the config.json of `model.path` when there is one, else its preset), trainable modules,
    micro-batch, dtype and `parallel` section; a pipeline runs the recipe's global batch divided
    by the data-parallel ranks per step (at least one micro-batch)."""
    config = recipe_model_config(recipe)
    workload = Workload(
        micro_batch_tokens=recipe.train.micro_batch_tokens,
        image_token_fraction=image_token_fraction,
        tokens_per_image=tokens_per_image,
        supervised_fraction=supervised_fraction,
    )
    shape = recipe.parallel.degrees(world_size)
    micro_batches = max(1, recipe.train.grad_accumulation // shape.data_parallel)
    return estimate_memory(
        config,
        workload,
        Layout.from_parallel(recipe.parallel, world_size, micro_batches=micro_batches),
        trainable=recipe.model.trainable,
        dtype=recipe.train.dtype,
        pp_rank=pp_rank,
    )
