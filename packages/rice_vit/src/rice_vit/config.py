"""The typed RiceViT configuration, its presets, and the two Hugging Face `config.json` dialects.

One frozen, keyword-only dataclass holds every value the encoder's computation depends on and is
validated when it is built, so a bad value fails where it was written, not deep inside a forward
pass. Released checkpoints describe the same encoder in two dialects:

- **MLCD** (`MLCDVisionConfig`, model_type `mlcd_vision_model`): `num_hidden_layers`,
  `num_attention_heads`, `num_channels`, `image_size`; no merge size.
- **LLaVA-OV-1.5** (`vision_config` of a `llavaonevision1_5` config, model_type `rice_vit`):
  `depth`, `num_heads`, `in_channels`, `spatial_merge_size`, `temporal_patch_size` (must be 1),
  plus `text_hidden_size`/`embed_dim`, which belong to the patch merger (ov_model) and are not read.

Facts that shape the fields:
- LLaVA-OV hard-codes eps 1e-5 in the block LayerNorms (`norm1`, `norm2`) while `pre_layernorm`
  uses `layer_norm_eps`; MLCD uses `layer_norm_eps` everywhere. Hence two eps fields. A value one
  dialect cannot express is an error when writing that dialect, never a silent change.
- Both dialects hard-code RoPE theta 10000 (a constant in `rope.py`, not a field).
- `image_size` is the pretraining resolution MLCD records; native-resolution inputs ignore it and
  LLaVA-OV configs do not record it (it reads back as the default there).
- Whether a post-layernorm exists (MLCD has one, LLaVA-OV not) is decided by the checkpoint's
  tensors, so it is a field here but no key of either dialect.
- Region attention (RICE pretraining, `region_attention`): `region_layers` and `region_query`
  are written to `config.json` in both dialects only when they differ from the defaults (so
  configs of plain encoders stay byte-identical to the released ones) and read with defaults
  0 / "class_token" when absent. Both are extra keys to the official loaders, which keep unknown
  config keys as attributes and ignore them.
"""

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rice_vit.errors import ConfigError

Layout = Literal["mlcd", "llava-ov"]
LAYOUTS: tuple[Layout, ...] = ("mlcd", "llava-ov")
SUPPORTED_ACTIVATIONS = ("gelu",)
RegionQuery = Literal["class_token", "learned"]
REGION_QUERIES: tuple[RegionQuery, ...] = ("class_token", "learned")
LLAVA_OV_BLOCK_NORM_EPS = 1e-5


@dataclass(frozen=True, kw_only=True)
class RiceViTConfig:
    """Architecture of a RICE-ViT encoder. Defaults are RICE-ViT-L/14."""

    hidden_size: int = 1024
    depth: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    in_channels: int = 3
    spatial_merge_size: int = 2
    layer_norm_eps: float = 1e-5
    """eps of pre_layernorm (and of the MLCD post_layernorm)."""
    block_layer_norm_eps: float = 1e-5
    """eps of the per-block norm1/norm2 (hard-coded 1e-5 in LLaVA-OV)."""
    hidden_act: str = "gelu"
    image_size: int = 560
    """Pretraining resolution recorded in MLCD configs; unused by the native-resolution forward."""
    has_post_layernorm: bool = False
    """MLCD checkpoints carry a post_layernorm applied to the class token only (`pool="cls"`)."""
    region_layers: int = 0
    """The last `region_layers` blocks also run region attention when `encode` gets regions
    (0: none; at most `depth`). Adds no parameters with `region_query="class_token"`."""
    region_query: RegionQuery = "class_token"
    """The initial state of each region token at the first region layer: its image's class token
    there ("class_token", no extra parameters, the default: see `rice_vit.region_attention`), or a
    learned vector shared by all regions ("learned": one extra parameter `region_query` that the
    MLCD and LLaVA-OV layouts cannot hold: `save_pretrained` drops it and reports it)."""

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "depth",
            "num_heads",
            "intermediate_size",
            "patch_size",
            "in_channels",
            "spatial_merge_size",
            "image_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RiceViTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("layer_norm_eps", "block_layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"RiceViTConfig.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"RiceViTConfig.{name} must be finite and > 0, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"RiceViTConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"RiceViTConfig head_dim = hidden_size/num_heads = {self.head_dim} must be a "
                "multiple of 4 (2D RoPE gives a quarter of it to each of rows and columns, twice)"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"RiceViTConfig.hidden_act {self.hidden_act!r} is not supported; "
                f"choose one of {list(SUPPORTED_ACTIVATIONS)}"
            )
        layers = self.region_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers <= self.depth:
            raise ConfigError(
                f"RiceViTConfig.region_layers must be an integer in [0, depth = {self.depth}], "
                f"got {layers!r}"
            )
        if self.region_query not in REGION_QUERIES:
            raise ConfigError(
                f"RiceViTConfig.region_query must be one of {list(REGION_QUERIES)}, "
                f"got {self.region_query!r}"
            )
        if not isinstance(self.has_post_layernorm, bool):
            raise ConfigError(
                f"RiceViTConfig.has_post_layernorm must be a bool, got {self.has_post_layernorm!r}"
            )

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch row: in_channels * patch_size**2 (588 for RGB 14x14)."""
        return self.in_channels * self.patch_size * self.patch_size

    def replace(self, **changes: Any) -> "RiceViTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str) -> "RiceViTConfig":
        """The named preset (see `PRESETS`)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, RiceViTConfig] = {
    "rice-vit-large-patch14": RiceViTConfig(),
    # The architecture of the tiny fixtures (random weights): fast CPU tests and benchmarks.
    "rice-vit-tiny": RiceViTConfig(
        hidden_size=64, depth=2, num_heads=4, intermediate_size=128, image_size=56
    ),
}


# ----------------------------------------------------------------------------- config.json IO


_REQUIRED = object()


def _get(data: Mapping[str, Any], key: str, default: Any, source: str) -> Any:
    if key in data:
        return data[key]
    if default is _REQUIRED:
        raise ConfigError(f"{source}: missing key {key!r}")
    return default


def _config(source: str, **fields: Any) -> RiceViTConfig:
    try:
        return RiceViTConfig(**fields)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _region_fields(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "region_layers": _get(data, "region_layers", 0, source),
        "region_query": _get(data, "region_query", "class_token", source),
    }


def _from_mlcd(data: Mapping[str, Any], source: str) -> RiceViTConfig:
    groups = data.get("num_key_value_groups", 1)
    if groups != 1:
        raise ConfigError(f"{source}: num_key_value_groups = {groups!r} is not supported (only 1)")
    dropout = data.get("attention_dropout", 0.0)
    if dropout != 0:
        raise ConfigError(f"{source}: attention_dropout = {dropout!r} is not supported (only 0)")
    eps = _get(data, "layer_norm_eps", 1e-5, source)
    return _config(
        source,
        hidden_size=_get(data, "hidden_size", _REQUIRED, source),
        depth=_get(data, "num_hidden_layers", _REQUIRED, source),
        num_heads=_get(data, "num_attention_heads", _REQUIRED, source),
        intermediate_size=_get(data, "intermediate_size", _REQUIRED, source),
        patch_size=_get(data, "patch_size", 14, source),
        in_channels=_get(data, "num_channels", 3, source),
        image_size=_get(data, "image_size", 336, source),
        hidden_act=_get(data, "hidden_act", "gelu", source),
        layer_norm_eps=eps,
        block_layer_norm_eps=eps,
        **_region_fields(data, source),
    )


def _from_rice(data: Mapping[str, Any], source: str) -> RiceViTConfig:
    temporal = data.get("temporal_patch_size", 1)
    if temporal != 1:
        raise ConfigError(
            f"{source}: temporal_patch_size = {temporal!r} is not supported (images only: 1)"
        )
    return _config(
        source,
        hidden_size=_get(data, "hidden_size", _REQUIRED, source),
        depth=_get(data, "depth", _REQUIRED, source),
        num_heads=_get(data, "num_heads", _REQUIRED, source),
        intermediate_size=_get(data, "intermediate_size", _REQUIRED, source),
        patch_size=_get(data, "patch_size", 14, source),
        in_channels=_get(data, "in_channels", 3, source),
        spatial_merge_size=_get(data, "spatial_merge_size", 2, source),
        hidden_act=_get(data, "hidden_act", "gelu", source),
        layer_norm_eps=_get(data, "layer_norm_eps", 1e-5, source),
        block_layer_norm_eps=LLAVA_OV_BLOCK_NORM_EPS,
        **_region_fields(data, source),
    )


def config_from_hf_dict(data: Mapping[str, Any], *, source: str = "config.json") -> RiceViTConfig:
    """Read either dialect: an MLCD vision config, a full LLaVA-OV-1.5 config (its
    `vision_config`), or a bare `rice_vit` vision config. `source` names the file in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type == "mlcd_vision_model":
        return _from_mlcd(data, source)
    if "vision_config" in data:
        vision = data["vision_config"]
        if not isinstance(vision, Mapping):
            raise ConfigError(f"{source}: vision_config must be an object")
        return _from_rice(vision, f"{source} (vision_config)")
    if model_type == "rice_vit":
        return _from_rice(data, source)
    raise ConfigError(
        f"{source}: model_type {model_type!r} is not a RICE-ViT config; expected "
        "'mlcd_vision_model', 'rice_vit', or a config with a 'vision_config' (llavaonevision1_5)"
    )


def config_to_hf_dict(
    config: RiceViTConfig,
    layout: Layout,
    *,
    torch_dtype: str | None = None,
    text_hidden_size: int | None = None,
) -> dict[str, Any]:
    """The config in the dialect of `layout`: an MLCD `config.json`, or the LLaVA-OV
    `vision_config` (also written alone as a `rice_vit` config.json). `text_hidden_size`, the
    merger width, is written only when given (ov_model knows it; the encoder does not)."""
    if layout == "mlcd":
        if config.block_layer_norm_eps != config.layer_norm_eps:
            raise ConfigError(
                f"MLCD configs have one layer_norm_eps; block_layer_norm_eps "
                f"{config.block_layer_norm_eps} != layer_norm_eps {config.layer_norm_eps}"
            )
        if config.spatial_merge_size != 2:
            raise ConfigError(
                "MLCD configs have no spatial_merge_size (2 is assumed when reading); "
                f"got {config.spatial_merge_size}"
            )
        if text_hidden_size is not None:
            raise ConfigError("text_hidden_size belongs to the LLaVA-OV layout, not MLCD")
        data: dict[str, Any] = {
            "architectures": ["MLCDVisionModel"],
            "model_type": "mlcd_vision_model",
            "attention_dropout": 0.0,
            "hidden_act": config.hidden_act,
            "hidden_size": config.hidden_size,
            "image_size": config.image_size,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": config.intermediate_size,
            "layer_norm_eps": config.layer_norm_eps,
            "num_attention_heads": config.num_heads,
            "num_channels": config.in_channels,
            "num_hidden_layers": config.depth,
            "num_key_value_groups": 1,
            "patch_size": config.patch_size,
        }
    elif layout == "llava-ov":
        if config.block_layer_norm_eps != LLAVA_OV_BLOCK_NORM_EPS:
            raise ConfigError(
                "LLaVA-OV hard-codes eps 1e-5 in the block LayerNorms; "
                f"block_layer_norm_eps is {config.block_layer_norm_eps}"
            )
        data = {
            "model_type": "rice_vit",
            "depth": config.depth,
            "embed_dim": config.hidden_size,
            "hidden_act": config.hidden_act,
            "hidden_size": config.hidden_size,
            "in_channels": config.in_channels,
            "initializer_range": 0.02,
            "intermediate_size": config.intermediate_size,
            "layer_norm_eps": config.layer_norm_eps,
            "num_heads": config.num_heads,
            "patch_size": config.patch_size,
            "spatial_merge_size": config.spatial_merge_size,
            "temporal_patch_size": 1,
        }
        if text_hidden_size is not None:
            data["text_hidden_size"] = text_hidden_size
    else:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    if config.region_layers or config.region_query != "class_token":
        data["region_layers"] = config.region_layers
        data["region_query"] = config.region_query
    if torch_dtype is not None:
        data["torch_dtype"] = torch_dtype
    return data


def read_config_file(path: str | Path) -> RiceViTConfig:
    """Parse a `config.json` of either dialect."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return config_from_hf_dict(data, source=str(path))


def write_config_file(
    path: str | Path, config: RiceViTConfig, layout: Layout, *, torch_dtype: str | None = None
) -> None:
    """Write `config.json` in the dialect of `layout` (sorted keys, like transformers)."""
    data = config_to_hf_dict(config, layout, torch_dtype=torch_dtype)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
