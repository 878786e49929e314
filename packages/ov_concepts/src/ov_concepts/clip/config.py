"""Typed CLIP architecture configs, read from open_clip's JSON model configs.

Two JSON layouts are accepted: open_clip's `model_configs/<name>.json` ({"embed_dim", "vision_cfg",
"text_cfg", "quick_gelu"}) and the Hub's `open_clip_config.json` ({"model_cfg": ...,
"preprocess_cfg": ...}). A few configs are built in by name (the QuickGELU ViT CLIPs MetaCLIP
released, B-32 to bigG-14, plus B-16); any other architecture is passed as a JSON file. Keys this
implementation does not support are refused by name rather than ignored, because an ignored
architecture switch produces wrong embeddings that look fine.
"""

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ov_concepts.errors import CheckpointError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """open_clip's `vision_cfg` for a ViT image tower pooled at the class token."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _positive(self, "image_size", "patch_size", "width", "layers", "head_width")
        if self.width % self.head_width:
            raise CheckpointError(
                f"vision width {self.width} is not a multiple of {self.head_width}"
            )
        if self.image_size % self.patch_size:
            raise CheckpointError(
                f"image_size {self.image_size} not a multiple of {self.patch_size}"
            )

    @property
    def heads(self) -> int:
        """Attention heads: width / head_width, as open_clip computes them."""
        return self.width // self.head_width


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """open_clip's `text_cfg` for the standard causal text tower pooled at end-of-text."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _positive(self, "context_length", "vocab_size", "width", "heads", "layers")
        if self.width % self.heads:
            raise CheckpointError(
                f"text width {self.width} is not a multiple of {self.heads} heads"
            )


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """open_clip's inference preprocessing (its `PreprocessCfg`): resize, centre crop, normalise.

    `size` defaults to the image tower's size; `fill_color` only matters to open_clip's "longest"
    resize mode, which is not supported, and is accepted so Hub configs load.
    """

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    size: int | None = None
    mode: str = "RGB"
    fill_color: int = 0

    def __post_init__(self) -> None:
        if self.mode != "RGB":
            raise CheckpointError(f"preprocess mode {self.mode!r} is not supported (RGB)")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise CheckpointError(f"interpolation {self.interpolation!r} is not supported")
        if self.resize_mode not in ("shortest", "squash"):
            raise CheckpointError(f"resize_mode {self.resize_mode!r} is not supported")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise CheckpointError(f"bad normalisation mean {self.mean} / std {self.std}")


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """A whole CLIP: both towers, the shared embedding size and the activation."""

    name: str
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    quick_gelu: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str) -> "ClipConfig":
        """Build from open_clip's JSON dict (either layout)."""
        preprocess = PreprocessConfig()
        if "model_cfg" in raw:
            preprocess = _build(PreprocessConfig, raw.get("preprocess_cfg", {}), "preprocess_cfg")
            raw = raw["model_cfg"]
        unknown = set(raw) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text"}
        if unknown:
            raise CheckpointError(f"{name}: unsupported model config keys {sorted(unknown)}")
        if "embed_dim" not in raw or "vision_cfg" not in raw or "text_cfg" not in raw:
            raise CheckpointError(f"{name}: a model config needs embed_dim, vision_cfg, text_cfg")
        vision = dict(raw["vision_cfg"])
        if isinstance(vision.get("layers"), list):
            raise CheckpointError(f"{name}: ResNet image towers are not supported")
        vision.pop("patch_dropout", None)  # training-time only
        vision_config = _build(VisionConfig, vision, "vision_cfg")
        if preprocess.size not in (None, vision_config.image_size):
            raise CheckpointError(
                f"{name}: preprocess size {preprocess.size} differs from image_size "
                f"{vision_config.image_size}"
            )
        return cls(
            name=name,
            embed_dim=int(raw["embed_dim"]),
            vision=vision_config,
            text=_build(TextConfig, raw["text_cfg"], "text_cfg"),
            quick_gelu=bool(raw.get("quick_gelu", False)),
            preprocess=preprocess,
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ClipConfig":
        """A built-in config by name, or an open_clip JSON config file."""
        if str(name_or_path) in BUILTIN:
            return cls.from_dict(BUILTIN[str(name_or_path)], str(name_or_path))
        path = Path(name_or_path)
        if not path.is_file():
            raise CheckpointError(
                f"{name_or_path}: neither a built-in model ({', '.join(sorted(BUILTIN))}) "
                "nor an open_clip model config file"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: unreadable model config ({error})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: a model config must be a JSON object")
        return cls.from_dict(raw, path.stem)


def _positive(config: object, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise CheckpointError(f"{name} must be >= 1, got {getattr(config, name)}")


def _build(kind: type, raw: dict[str, Any], section: str):
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{section}: unsupported keys {unknown} (supported: {sorted(known)})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return kind(**values)
    except TypeError as error:
        raise CheckpointError(f"{section}: {error}") from None


def _vit(embed, image, patch, width, layers, head_width, text_width, text_heads, text_layers):
    return {
        "embed_dim": embed,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image,
            "patch_size": patch,
            "width": width,
            "layers": layers,
            "head_width": head_width,
        },
        "text_cfg": {"width": text_width, "heads": text_heads, "layers": text_layers},
    }


# open_clip's model_configs for the ViT CLIPs MetaCLIP (and OpenAI) released, QuickGELU variants.
BUILTIN: dict[str, dict[str, Any]] = {
    "ViT-B-32-quickgelu": _vit(512, 224, 32, 768, 12, 64, 512, 8, 12),
    "ViT-B-16-quickgelu": _vit(512, 224, 16, 768, 12, 64, 512, 8, 12),
    "ViT-L-14-quickgelu": _vit(768, 224, 14, 1024, 24, 64, 768, 12, 12),
    "ViT-H-14-quickgelu": _vit(1024, 224, 14, 1280, 32, 80, 1024, 16, 24),
}
BUILTIN["ViT-bigG-14-quickgelu"] = _vit(1280, 224, 14, 1664, 48, 104, 1280, 20, 32)
BUILTIN["ViT-bigG-14-quickgelu"]["vision_cfg"]["mlp_ratio"] = 4.9231
