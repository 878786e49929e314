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
  backward pass (2 bytes x the non-embedding parameters).

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

Not modelled: the attention kernels' own workspace (flash attention keeps none of size T^2),
int64 index tensors (< 0.1%), and the single-process autocast path's fp32 residual stream (the
activations are counted as bf16 there too: an underestimate for a world of 1).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ov_model.config import LlavaOVConfig, TextConfig
from ov_model.loss import DEFAULT_CHUNK
from ov_train.config import ACTIVATION_CHECKPOINTING, MODULES, ParallelConfig, Recipe
from ov_train.errors import RecipeError
from rice_vit import RiceViTConfig

GIB = 2**30
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
        if module == "vision":
            return self.vision
        if module == "projector":
            return self.projector
        if module == "llm":
            return self.language_model + self.lm_head
        raise RecipeError(f"unknown module {module!r}; modules are {list(MODULES)}")

    def largest_unit(self, modules: Iterable[str]) -> int:
        """The largest FSDP unit below the root among those of `modules`."""
        units = {
            "vision": (self.vision_block, self.vision_stem),
            "projector": (self.projector,),
            "llm": (self.decoder_layer,),
        }
        return max((size for m in modules for size in units[m]), default=0)


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


# ------------------------------------------------------------------------------ activations
@dataclass(frozen=True)
class SavedTensor:
    """A tensor the forward keeps for backward: `per_token` values per token, in fp32 or in the
    activation dtype."""

    name: str
    per_token: int
    fp32: bool = False

    def bytes_per_token(self, activation_bytes: int) -> int:
        return self.per_token * (4 if self.fp32 else activation_bytes)


def _rms_norm(name: str, width: int, rows: int = 1, *, output: bool) -> list[SavedTensor]:
    # ov_model.language_model.RMSNorm: x.to(fp32) and rsqrt(mean(x^2)) are saved by the
    # multiply, the cast-back x_hat by the weight multiply; the output itself only when the
    # next op keeps it (a Linear does for its weight gradient; RoPE does not).
    saved = [
        SavedTensor(f"{name} fp32 input", width, fp32=True),
        SavedTensor(f"{name} rstd", rows, fp32=True),
        SavedTensor(f"{name} normalised input", width),
    ]
    if output:
        saved.append(SavedTensor(f"{name} output", width))
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
        saved += _rms_norm("q_norm", q, text.num_attention_heads, output=False)
        saved += _rms_norm("k_norm", kv, text.num_key_value_heads, output=False)
    saved += [
        SavedTensor("attention q (after RoPE)", q),
        SavedTensor("attention k (after RoPE)", kv),
        SavedTensor("attention v", kv),
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
    """How the run is spread: world size, mesh degrees, activation checkpointing."""

    world_size: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    activation_checkpointing: str = "none"
    checkpoint_every: int = 2
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.dp_replicate * self.dp_shard != self.world_size:
            raise RecipeError(
                f"dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} must equal the "
                f"world size {self.world_size}"
            )
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise RecipeError(
                f"activation_checkpointing must be one of {list(ACTIVATION_CHECKPOINTING)}, got "
                f"{self.activation_checkpointing!r}"
            )
        if self.checkpoint_every < 1:
            raise RecipeError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    @classmethod
    def from_parallel(cls, parallel: ParallelConfig, world_size: int) -> "Layout":
        """The layout a recipe's `parallel` section gives on `world_size` processes."""
        replicate, shard = parallel.degrees(world_size)
        return cls(
            world_size=world_size,
            dp_replicate=replicate,
            dp_shard=shard,
            activation_checkpointing=parallel.activation_checkpointing,
            checkpoint_every=parallel.checkpoint_every,
            reshard_after_forward=parallel.reshard_after_forward,
        )

    def checkpointed(self, layers: int) -> int:
        """How many of a stack's `layers` layers recompute their forward in backward."""
        if self.activation_checkpointing == "full":
            return layers
        if self.activation_checkpointing == "selective":
            return math.ceil(layers / self.checkpoint_every)
        return 0


@dataclass(frozen=True, kw_only=True)
class ActivationBytes:
    """Activation memory of one micro-batch, held at the end of forward, by part."""

    vision: int
    projector: int
    language_model: int
    head: int
    transient: int
    """The largest transient of backward (the loss chunk or one layer), on top of `held`."""

    @property
    def held(self) -> int:
        return self.vision + self.projector + self.language_model + self.head


def activation_bytes(
    config: LlavaOVConfig,
    workload: Workload,
    layout: Layout,
    *,
    trainable: Iterable[str] = MODULES,
    element_bytes: int = 2,
) -> ActivationBytes:
    """Activation memory of one micro-batch (see the module docstring for every term);
    `element_bytes` is the activation dtype's size (2: bf16, 4: fp32)."""
    trainable = set(trainable)
    act = element_bytes
    text, vision = config.text, config.vision
    tokens = workload.micro_batch_tokens
    vision_keeps = "vision" in trainable
    projector_keeps = vision_keeps or "projector" in trainable

    layer_bytes = tokens * saved_bytes_per_token(decoder_layer_saved(text), act)
    layers = text.num_hidden_layers
    checkpointed = layout.checkpointed(layers)
    llm = (layers - checkpointed) * layer_bytes + checkpointed * tokens * text.hidden_size * act
    llm += tokens * 2 * text.head_dim * 4  # cos, sin (fp32)
    llm += tokens * saved_bytes_per_token(_rms_norm("norm", text.hidden_size, output=False), act)
    supervised = workload.supervised_tokens
    head = supervised * text.hidden_size * act
    chunk_rows = min(workload.loss_chunk, supervised)
    transients = [
        chunk_rows * text.vocab_size * HEAD_BYTES_PER_LOGIT,
        round(layer_bytes * (RECOMPUTED_LAYER if checkpointed else KEPT_LAYER)),
    ]

    patches = workload.image_tokens * config.merge_size**2
    vit_tokens = patches + workload.images
    vit = projector = 0
    if vision_keeps and patches:
        block_bytes = vit_tokens * saved_bytes_per_token(vit_block_saved(vision), act)
        blocks = vision.depth
        vit_checkpointed = layout.checkpointed(blocks)
        vit = (blocks - vit_checkpointed) * block_bytes
        vit += vit_checkpointed * vit_tokens * vision.hidden_size * act
        vit += patches * vision.patch_dim * act  # pixel rows kept by the patch embedding
        vit += vit_tokens * (vision.hidden_size * act + 8)  # pre_layernorm input, mean, rstd
        vit += vit_tokens * vision.head_dim * 3 * 4  # angles, cos, sin (fp32)
        transients.append(
            round(block_bytes * (RECOMPUTED_LAYER if vit_checkpointed else KEPT_LAYER))
        )
    if projector_keeps and patches:
        projector = patches * (4 * vision.hidden_size * act + 8)
    return ActivationBytes(
        vision=vit,
        projector=projector,
        language_model=llm,
        head=head,
        transient=max(transients),
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
) -> MemoryEstimate:
    """Per-GPU memory of training `config` with `trainable` modules on `layout`.

    `dtype` is the recipe's `train.dtype` on a GPU: auto and bf16 compute in bf16, fp32 in fp32.
    """
    if dtype not in ("auto", "bf16", "fp32"):
        raise RecipeError(f"dtype must be auto, bf16 or fp32, got {dtype!r}")
    trainable = tuple(trainable)
    unknown = [m for m in trainable if m not in MODULES]
    if unknown:
        raise RecipeError(f"unknown trainable modules {unknown}; modules are {list(MODULES)}")
    act = 4 if dtype == "fp32" else 2
    counts = parameter_counts(config)
    total = counts.total
    trained = sum(counts.of_module(m) for m in trainable)
    if layout.world_size == 1:
        shard = 1
        gathered = 0 if act == 4 else 2 * (total - counts.embedding)
    else:
        shard = layout.dp_shard
        root_trained = counts.root if "llm" in trainable else 0
        gathered = act * counts.root + act * root_trained
        if layout.reshard_after_forward:
            gathered += 2 * act * counts.largest_unit(MODULES)
        else:
            gathered += act * (total - counts.root)
        gathered += 2 * (act + 4) * counts.largest_unit(trainable)
    activations = activation_bytes(config, workload, layout, trainable=trainable, element_bytes=act)
    return MemoryEstimate(
        parameters=math.ceil(4 * total / shard),
        gradients=math.ceil(4 * trained / shard),
        optimizer=math.ceil(8 * trained / shard),
        gathered=gathered,
        activations=activations,
        layout=layout,
        workload=workload,
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
) -> MemoryEstimate:
    """`estimate_memory` of a recipe on `world_size` GPUs: its model (the config.json of
    `model.path` when there is one, else its preset), trainable modules, micro-batch, dtype and
    `parallel` section."""
    config = recipe_model_config(recipe)
    workload = Workload(
        micro_batch_tokens=recipe.train.micro_batch_tokens,
        image_token_fraction=image_token_fraction,
        tokens_per_image=tokens_per_image,
        supervised_fraction=supervised_fraction,
    )
    return estimate_memory(
        config,
        workload,
        Layout.from_parallel(recipe.parallel, world_size),
        trainable=recipe.model.trainable,
        dtype=recipe.train.dtype,
    )
