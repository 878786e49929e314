"""Tensor names of the two released checkpoint layouts, mapped to and from the module's own
`state_dict` (one adapter, both directions, so a round trip is exact by construction).

The module's names are the LLaVA-OV names without prefix: `patch_embed.proj.weight`,
`class_embedding`, `class_pos_emb`, `pre_layernorm.*`, `blocks.{i}.{norm1,norm2}.*`,
`blocks.{i}.attn.{qkv,proj}.*`, `blocks.{i}.mlp.{fc1,fc2}.*`, and `post_layernorm.*` (MLCD only).

- **llava-ov**: the vision tower of a full LLaVA-OV-1.5 checkpoint, `visual.` + the module names
  (transformers >= 4.52 saves; `model.visual.` in older saves and in memory, and no prefix in a
  bare RiceTransformer save are accepted when reading). `visual.merger.*` belongs to ov_model's
  patch merger and every tensor outside the prefix to the language model: both are left alone.
  There is no post-layernorm in this layout; writing a model that has one drops it (reported).
- **mlcd**: `MLCDVisionModel` names under `vision_model.`; the fused `qkv` is split into
  `q_proj`/`k_proj`/`v_proj` (in that order, along the output dimension) and concatenated back on
  reading, both exact copies. `pre_layrnorm` (sic) is the MLCD spelling.

Reading checks the names and shapes against the config and lists every missing, unexpected and
mis-shaped tensor in one error.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from rice_vit.config import Layout, RiceViTConfig
from rice_vit.errors import CheckpointError

LLAVA_OV_PREFIXES = ("visual.", "model.visual.", "")
LLAVA_OV_WRITE_PREFIX = "visual."
LLAVA_OV_NOT_ENCODER = "merger."
MLCD_PREFIX = "vision_model."

_MLCD_FIXED = {
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.class_embedding": "class_embedding",
    "class_pos_emb": "class_pos_emb",
    "pre_layrnorm.weight": "pre_layernorm.weight",
    "pre_layrnorm.bias": "pre_layernorm.bias",
    "post_layernorm.weight": "post_layernorm.weight",
    "post_layernorm.bias": "post_layernorm.bias",
}
_MLCD_BLOCK = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_MLCD_QKV = ("q_proj", "k_proj", "v_proj")
_MLCD_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def expected_shapes(config: RiceViTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of the module's state_dict for `config`."""
    d, c, p, i = config.hidden_size, config.in_channels, config.patch_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, c, p, p),
        "class_embedding": (d,),
        "class_pos_emb": (1, config.head_dim // 2),
        "pre_layernorm.weight": (d,),
        "pre_layernorm.bias": (d,),
    }
    for block in range(config.depth):
        name = f"blocks.{block}."
        shapes |= {
            name + "norm1.weight": (d,),
            name + "norm1.bias": (d,),
            name + "attn.qkv.weight": (3 * d, d),
            name + "attn.qkv.bias": (3 * d,),
            name + "attn.proj.weight": (d, d),
            name + "attn.proj.bias": (d,),
            name + "norm2.weight": (d,),
            name + "norm2.bias": (d,),
            name + "mlp.fc1.weight": (i, d),
            name + "mlp.fc1.bias": (i,),
            name + "mlp.fc2.weight": (d, i),
            name + "mlp.fc2.bias": (d,),
        }
    if config.has_post_layernorm:
        shapes |= {"post_layernorm.weight": (d,), "post_layernorm.bias": (d,)}
    return shapes


@dataclass(frozen=True)
class DetectedLayout:
    """Which layout a checkpoint's tensor names follow and which of them are the encoder's."""

    layout: Layout
    prefix: str
    encoder_names: tuple[str, ...]
    """Names (as stored) of the tensors that belong to the encoder."""
    other_names: tuple[str, ...]
    """Stored tensors that belong to something else (merger, language model), left alone."""
    has_post_layernorm: bool


def detect_layout(names: Iterable[str], *, source: str) -> DetectedLayout:
    """Decide the layout from the stored tensor names (`source` names the checkpoint)."""
    names = sorted(names)
    present = set(names)
    if MLCD_PREFIX + "embeddings.patch_embedding.weight" in present:
        return DetectedLayout(
            layout="mlcd",
            prefix=MLCD_PREFIX,
            encoder_names=tuple(names),
            other_names=(),
            has_post_layernorm=any(n.startswith(MLCD_PREFIX + "post_layernorm.") for n in names),
        )
    for prefix in LLAVA_OV_PREFIXES:
        if prefix + "patch_embed.proj.weight" in present:
            encoder, other = [], []
            for name in names:
                inside = name.startswith(prefix) and not name.startswith(
                    prefix + LLAVA_OV_NOT_ENCODER
                )
                if inside and prefix == "" and name.startswith(("model.", "lm_head.")):
                    inside = False
                (encoder if inside else other).append(name)
            return DetectedLayout("llava-ov", prefix, tuple(encoder), tuple(other), False)
    sample = names[:5]
    raise CheckpointError(
        f"{source}: no RICE-ViT encoder found: expected "
        f"'{MLCD_PREFIX}embeddings.patch_embedding.weight' (MLCD) or "
        f"'visual.patch_embed.proj.weight' (LLaVA-OV); first tensors are {sample}"
    )


def to_module_names(
    tensors: Mapping[str, torch.Tensor],
    detected: DetectedLayout,
    config: RiceViTConfig,
    *,
    source: str,
) -> dict[str, torch.Tensor]:
    """The module's state_dict from stored encoder tensors; raises `CheckpointError` listing every
    missing, unexpected and mis-shaped tensor by its stored name."""
    expected = expected_shapes(config)
    state: dict[str, torch.Tensor] = {}
    stored_names: dict[str, list[str]] = {}  # module name -> the stored names it came from
    unexpected: list[str] = []
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        mapped = _stored_to_module_name(name, detected)
        if mapped is None:
            unexpected.append(name)
            continue
        module_name, qkv_part = mapped
        stored_names.setdefault(module_name, []).append(name)
        if qkv_part is None:
            state[module_name] = tensor
        else:
            qkv_parts.setdefault(module_name, {})[qkv_part] = tensor
    missing: list[str] = []
    mis_shaped: list[str] = []
    for module_name, parts in qkv_parts.items():
        if module_name not in expected:
            unexpected += stored_names[module_name]
        elif len(parts) < len(_MLCD_QKV):
            names = _stored_names(module_name, detected)
            missing += [n for n, p in zip(names, _MLCD_QKV, strict=True) if p not in parts]
        elif len({tuple(t.shape) for t in parts.values()}) > 1:
            shapes = ", ".join(f"{p} {tuple(parts[p].shape)}" for p in _MLCD_QKV)
            mis_shaped.append(f"{'+'.join(stored_names[module_name])}: unequal parts {shapes}")
        else:
            state[module_name] = torch.cat([parts[p] for p in _MLCD_QKV], dim=0)
    unexpected += [s for n in state if n not in expected for s in stored_names[n]]
    missing += [
        stored
        for n in expected
        if n not in state and n not in qkv_parts
        for stored in _stored_names(n, detected)
    ]
    mis_shaped += [
        f"{'+'.join(stored_names[n])}: stored {tuple(state[n].shape)}, config needs {expected[n]}"
        for n in expected
        if n in state and tuple(state[n].shape) != expected[n]
    ]
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing tensors ({len(missing)}): {', '.join(sorted(missing))}")
        if unexpected:
            problems.append(
                f"unexpected tensors ({len(unexpected)}): {', '.join(sorted(unexpected))}"
            )
        if mis_shaped:
            problems.append(f"mis-shaped tensors ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
        raise CheckpointError(
            f"{source} ({detected.layout} layout) does not match its config: " + "; ".join(problems)
        )
    return {n: state[n] for n in expected}


def _stored_to_module_name(name: str, detected: DetectedLayout) -> tuple[str, str | None] | None:
    """(module name, q/k/v part or None) of a stored encoder tensor, None if unknown."""
    if not name.startswith(detected.prefix):
        return None
    inner = name.removeprefix(detected.prefix)
    if detected.layout == "llava-ov":
        return inner, None
    if inner in _MLCD_FIXED:
        return _MLCD_FIXED[inner], None
    match = _MLCD_LAYER.match(inner)
    if match is None:
        return None
    block, sub, kind = match[1], match[2], match[3]
    if sub in _MLCD_BLOCK:
        return f"blocks.{block}.{_MLCD_BLOCK[sub]}.{kind}", None
    part = sub.removeprefix("self_attn.")
    if sub.startswith("self_attn.") and part in _MLCD_QKV:
        return f"blocks.{block}.attn.qkv.{kind}", part
    return None


def _stored_names(module_name: str, detected_or_layout: DetectedLayout | Layout) -> list[str]:
    """Stored name(s) of a module tensor (the fused qkv is three MLCD tensors)."""
    if isinstance(detected_or_layout, DetectedLayout):
        layout, prefix = detected_or_layout.layout, detected_or_layout.prefix
    else:
        layout = detected_or_layout
        prefix = MLCD_PREFIX if layout == "mlcd" else LLAVA_OV_WRITE_PREFIX
    if layout == "llava-ov":
        return [prefix + module_name]
    for stored, fixed in _MLCD_FIXED.items():
        if fixed == module_name:
            return [prefix + stored]
    block, inner = module_name.removeprefix("blocks.").split(".", 1)
    inner, kind = inner.rsplit(".", 1)
    layer = f"{prefix}encoder.layers.{block}."
    if inner == "attn.qkv":
        return [f"{layer}self_attn.{part}.{kind}" for part in _MLCD_QKV]
    (stored_inner,) = [stored for stored, mine in _MLCD_BLOCK.items() if mine == inner]
    return [f"{layer}{stored_inner}.{kind}"]


def from_module_names(
    state: Mapping[str, torch.Tensor], layout: Layout
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Stored tensors of `layout` from the module's state_dict, plus the module names the layout
    cannot hold (the post-layernorm in llava-ov). Returned tensors are contiguous and own their
    memory (safetensors refuses shared storage)."""
    stored: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for name, tensor in state.items():
        tensor = tensor.detach()
        if layout == "llava-ov" and name.startswith("post_layernorm."):
            dropped.append(name)
            continue
        names = _stored_names(name, layout)
        if len(names) == 1:
            stored[names[0]] = tensor.contiguous()
        else:
            for stored_name, part in zip(names, tensor.chunk(3, dim=0), strict=True):
                stored[stored_name] = part.clone(memory_format=torch.contiguous_format)
    return stored, dropped
