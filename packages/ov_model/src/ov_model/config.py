"""Typed configuration of a LLaVA-OneVision-1.5 model and its HF `config.json`, field for field.

`LlavaOVConfig` = the vision tower's `RiceViTConfig` (from rice_vit), a `TextConfig` for the Qwen
language model, and the token ids the forward pass reads. Reading keeps every key of the file that
the model does not interpret (`extra`, per level), so `to_hf_dict(from_hf_dict(d)) == d`: a
checkpoint re-saved by ov_model carries the same config the official code wrote.

Facts of the official layout that shape this (see MODEL.md and the fixture README):
- model_type `llavaonevision1_5`; the image placeholder read by forward is the TOP-LEVEL
  `image_token_id`; the top-level `vocab_size` is unused (the text config's counts).
- Tying is decided by `text_config.tie_word_embeddings`, written only when True.
- The merger output width is `vision_config.text_hidden_size` and must equal the text width.
- Qwen3 text models have per-head RMSNorm on q and k and no attention bias; Qwen2 (the 3B
  variant) has q/k/v biases and no QK norm. `qk_norm` follows the text `model_type`: "qwen2"
  means Qwen2, anything else (the release writes "LLaVAOneVision1_5_text") means Qwen3.
"""

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ov_model.errors import ConfigError
from rice_vit import RiceViTConfig
from rice_vit.config import config_from_hf_dict as vision_config_from_hf_dict
from rice_vit.config import config_to_hf_dict as vision_config_to_hf_dict

MODEL_TYPE = "llavaonevision1_5"
TEXT_MODEL_TYPE = "LLaVAOneVision1_5_text"
QWEN2_MODEL_TYPES = ("qwen2",)

# Keys of text_config that TextConfig owns; everything else is kept verbatim in `extra`.
_TEXT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings",
    "attention_bias": "attention_bias",
    "hidden_act": "hidden_act",
    "model_type": "model_type",
}


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """The Qwen3 / Qwen2 decoder. Defaults are the 4B model's."""

    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    model_type: str = TEXT_MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """text_config keys the model does not interpret, kept for a faithful round trip."""

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"text_config.{name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise ConfigError(f"text_config.{name} must be a finite number > 0, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"text_config.num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"text_config.head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise ConfigError(f"text_config.hidden_act {self.hidden_act!r} unsupported; use 'silu'")

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises q and k per head; Qwen2 does not."""
        return self.model_type not in QWEN2_MODEL_TYPES


@dataclass(frozen=True, kw_only=True)
class LlavaOVConfig:
    """A whole LLaVA-OV-1.5 model: vision tower, text decoder, special token ids."""

    vision: RiceViTConfig = field(default_factory=RiceViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int | None = 151652
    vision_end_token_id: int | None = 151653
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Top-level keys the model does not interpret, kept for a faithful round trip."""
    vision_extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("image_token_id", "video_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.image_token_id >= self.text.vocab_size:
            raise ConfigError(
                f"image_token_id {self.image_token_id} is outside the text vocabulary "
                f"({self.text.vocab_size})"
            )

    @property
    def merge_size(self) -> int:
        """Patches merged per side into one LLM token (2: a 2x2 block)."""
        return self.vision.spatial_merge_size

    def replace(self, **changes: Any) -> "LlavaOVConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ config.json
    @classmethod
    def from_hf_dict(
        cls, data: Mapping[str, Any], *, source: str = "config.json"
    ) -> "LlavaOVConfig":
        """Parse a `llavaonevision1_5` config.json dict. `source` names the file in errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object")
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigError(
                f"{source}: model_type {data.get('model_type')!r} is not {MODEL_TYPE!r}"
            )
        for key in ("vision_config", "text_config", "image_token_id"):
            if key not in data:
                raise ConfigError(f"{source}: missing {key!r}")
        text_data = data["text_config"]
        if not isinstance(text_data, Mapping):
            raise ConfigError(f"{source}: text_config must be an object")
        try:
            vision = vision_config_from_hf_dict(
                {"vision_config": data["vision_config"]}, source=source
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error
        text_fields = {ours: text_data[key] for key, ours in _TEXT_KEYS.items() if key in text_data}
        text_fields["tie_word_embeddings"] = bool(text_data.get("tie_word_embeddings", False))
        text_extra = {
            k: copy.deepcopy(v)
            for k, v in text_data.items()
            if k not in _TEXT_KEYS and k != "tie_word_embeddings"
        }
        try:
            text = TextConfig(**text_fields, extra=text_extra)
        except TypeError as error:
            raise ConfigError(f"{source}: text_config: {error}") from error
        vision_data = data["vision_config"]
        text_hidden = vision_data.get("text_hidden_size", text.hidden_size)
        if text_hidden != text.hidden_size:
            raise ConfigError(
                f"{source}: vision_config.text_hidden_size {text_hidden} != "
                f"text_config.hidden_size "
                f"{text.hidden_size} (the merger output must feed the language model)"
            )
        written_vision = vision_config_to_hf_dict(vision, "llava-ov", text_hidden_size=text_hidden)
        vision_extra = {
            k: copy.deepcopy(v)
            for k, v in vision_data.items()
            if k not in written_vision or written_vision[k] != v
        }
        owned = {
            "vision_config",
            "text_config",
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "model_type",
        }
        return cls(
            vision=vision,
            text=text,
            image_token_id=data["image_token_id"],
            video_token_id=data.get("video_token_id", 151656),
            vision_start_token_id=data.get("vision_start_token_id"),
            vision_end_token_id=data.get("vision_end_token_id"),
            extra={k: copy.deepcopy(v) for k, v in data.items() if k not in owned},
            vision_extra=vision_extra,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json dict the official code reads (keys sorted like transformers')."""
        text = dict(self.text.extra)
        for key, ours in _TEXT_KEYS.items():
            text[key] = getattr(self.text, ours)
        if self.text.tie_word_embeddings:
            text["tie_word_embeddings"] = True
        vision = vision_config_to_hf_dict(
            self.vision, "llava-ov", text_hidden_size=self.text.hidden_size
        )
        vision.update(self.vision_extra)
        data = dict(self.extra)
        data.update(
            model_type=MODEL_TYPE,
            vision_config=dict(sorted(vision.items())),
            text_config=dict(sorted(text.items())),
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
        )
        if "tie_word_embeddings" not in data and not self.text.tie_word_embeddings:
            data["tie_word_embeddings"] = False
        for key in ("vision_start_token_id", "vision_end_token_id"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data.setdefault("architectures", ["LLaVAOneVision1_5_ForConditionalGeneration"])
        data.setdefault("vocab_size", self.text.vocab_size)
        return dict(sorted(data.items()))

    @classmethod
    def from_file(cls, path: str | Path) -> "LlavaOVConfig":
        """Read a config.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_hf_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write config.json (2-space indent, sorted keys, as transformers does)."""
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_preset(cls, name: str) -> "LlavaOVConfig":
        """A named preset: `tiny`, `3b` (Qwen2), `4b`, `8b` (Qwen3) — see PRESETS."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]


def _qwen_text(**changes: Any) -> TextConfig:
    return TextConfig(**changes)


PRESETS: dict[str, LlavaOVConfig] = {
    # The architecture of the fixture (random weights): for tests and the CPU quickstart.
    "tiny": LlavaOVConfig(
        # image_size (an MLCD pretraining field) is not part of the LLaVA-OV vision_config: keep
        # the value reading one gives, so the preset survives a config.json round trip.
        vision=RiceViTConfig.from_preset("rice-vit-tiny").replace(image_size=560),
        text=_qwen_text(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rope_theta=1_000_000.0,
            max_position_embeddings=4096,
        ),
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=3,
        vision_end_token_id=4,
    ),
    "4b": LlavaOVConfig(text=_qwen_text()),
    "8b": LlavaOVConfig(
        text=_qwen_text(hidden_size=4096, intermediate_size=12288, rope_theta=1_000_000.0)
    ),
    "3b": LlavaOVConfig(
        text=_qwen_text(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            head_dim=128,
            rope_theta=1_000_000.0,
            attention_bias=True,
            tie_word_embeddings=True,
            model_type="qwen2",
        )
    ),
}
