"""The typed configuration of a RICE pretraining run, read from TOML.

A `PretrainConfig` holds five frozen, keyword-only sections: `model` (the encoder to start from
and its region layers), `data` (the labelled manifest, regions per image, batch size, resize
bounds), `loss` (the margin softmax: scale, margin, negative sampling rate), `optim` (AdamW and
its warmup + cosine schedule, gradient clipping) and `train` (steps, seed, dtype, device,
checkpoint interval). Every field has a default; the paper's values are the defaults where the
paper gives one (AdamW lr 1e-3, weight decay 0.2, s = 64, m = 0.3, rho = 0.1, N = 10 regions);
where it does not (warmup, schedule, clipping, batch) the choice is documented on the field.

A TOML file gives one table per section and only the values that differ:

    [model]
    preset = "rice-vit-tiny"
    region_layers = 2

    [data]
    manifest = "labelled/manifest.jsonl"

    [train]
    steps = 300

Reading is strict: an unknown table or key is an error naming it (with the closest valid key),
a value of the wrong type is an error naming the dotted key, and each section checks its ranges
when it is built, so a config built in Python, read from TOML or changed by a `--set
section.key=value` override is held to the same rules. Relative paths in a file are resolved
against the file's folder when it is loaded (`load_config`), so a config can live beside its data.
"""

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rice_vit.errors import ConfigError

MarginKind = Literal["arcface", "cosface"]
TrainDtype = Literal["float32", "bfloat16"]


class _Section:
    """Shared checks of the config sections (dataclasses below)."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            checked = _typed(value, item.type, f"{self._name}.{item.name}")
            object.__setattr__(self, item.name, checked)
        self.check()

    _name = "section"

    def check(self) -> None:
        """Range checks of the section (each section adds its own)."""

    def _require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(f"{self._name}.{name} {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """The encoder that is pretrained."""

    _name = "model"
    preset: str = "rice-vit-tiny"
    """Architecture of a randomly initialised encoder (`RiceViTConfig.from_preset`); ignored when
    `checkpoint` is set."""
    checkpoint: str | None = None
    """A RICE-ViT folder (MLCD or LLaVA-OV layout) to continue pretraining from, instead of a
    random init."""
    region_layers: int = 2
    """The last L blocks also run region attention (the paper does not give L)."""
    hidden_size: int | None = None
    """Width override of the preset (None: the preset's)."""
    depth: int | None = None
    """Block count override of the preset (None: the preset's)."""
    num_heads: int | None = None
    """Head count override of the preset (None: the preset's)."""
    intermediate_size: int | None = None
    """MLP width override of the preset (None: the preset's)."""

    def check(self) -> None:
        """region_layers >= 1; overrides positive."""
        self._require(self.region_layers >= 1, "region_layers", "must be >= 1")
        for name in ("hidden_size", "depth", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            self._require(value is None or value >= 1, name, "must be >= 1 when set")


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Section):
    """The labelled region manifest and how batches are drawn from it."""

    _name = "data"
    manifest: str = "manifest.jsonl"
    """The labelled manifest `rice-vit pretrain labels` writes (JSONL or Parquet); its
    `labels.json` beside it gives the class counts and the OCR labeller (tokenizer or bytes)."""
    image_root: str | None = None
    """Folder the manifest's image paths are relative to (None: the one `labels.json` records,
    the unlabelled manifest's folder)."""
    regions_per_image: int = 10
    """N regions sampled per image and epoch (subsampled or repeated; the paper's best, 10)."""
    batch_images: int = 32
    """Images per optimizer step, over all ranks (each rank takes batch_images / world)."""
    min_pixels: int = 3136
    """Resize floor of the native-resolution processor."""
    max_pixels: int = 200_704
    """Resize ceiling of the processor (448 x 448 by default: pretraining ran at 224-560)."""

    def check(self) -> None:
        """Positive counts, min_pixels <= max_pixels."""
        for name in ("regions_per_image", "batch_images", "min_pixels", "max_pixels"):
            self._require(getattr(self, name) >= 1, name, "must be >= 1")
        self._require(self.min_pixels <= self.max_pixels, "min_pixels", "must be <= max_pixels")


@dataclass(frozen=True, kw_only=True)
class LossConfig(_Section):
    """The region cluster discrimination loss (margin softmax over sampled class centres)."""

    _name = "loss"
    scale: float = 64.0
    """s: logits are s * cosine (the paper's 64)."""
    margin: float = 0.3
    """m on the positive(s) (the paper's 0.3)."""
    margin_kind: MarginKind = "arcface"
    """arcface: cos(theta + m); cosface: cos(theta) - m (the paper does not say which)."""
    sample_rate: float = 0.1
    """rho: floor(rho * K) negative centres sampled per step over all K classes (seeded by the
    step, so every world size samples the same ones), the batch's positives always kept (1.0:
    every centre, no sampling; 0.0: the positives alone)."""

    def check(self) -> None:
        """s > 0, 0 <= m < 2, 0 <= rho <= 1."""
        self._require(self.scale > 0, "scale", "must be > 0")
        self._require(0 <= self.margin < 2, "margin", "must be in [0, 2)")
        self._require(0 <= self.sample_rate <= 1, "sample_rate", "must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class OptimConfig(_Section):
    """AdamW with linear warmup then cosine decay to `min_lr`, and gradient clipping."""

    _name = "optim"
    lr: float = 1e-3
    """Peak learning rate (the paper's 1e-3)."""
    weight_decay: float = 0.2
    """Decoupled weight decay (the paper's 0.2) of matrices and class centres; norms, biases,
    the class token and its rotary angles get none."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    warmup_fraction: float = 0.05
    """Fraction of the steps spent in linear warmup (not given by the paper)."""
    min_lr: float = 0.0
    """Learning rate the cosine reaches at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (encoder and every rank's centres) to this; 0 disables."""

    def check(self) -> None:
        """Positive lr and eps, betas in [0, 1), fractions in [0, 1), clip >= 0."""
        self._require(self.lr > 0, "lr", "must be > 0")
        self._require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        self._require(self.eps > 0, "eps", "must be > 0")
        self._require(0 <= self.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)")
        self._require(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        self._require(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    """Length, precision, placement and checkpointing of the run."""

    _name = "train"
    steps: int = 1000
    """Optimizer steps."""
    seed: int = 0
    """Seeds the random init, the data order, the region sampling and the negative sampling."""
    dtype: TrainDtype = "float32"
    """Compute dtype: bfloat16 runs the encoder under autocast (weights stay float32)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each rank takes its
    LOCAL_RANK's CUDA device."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints are kept."""
    log_every: int = 1
    """Append a line to loss.jsonl every this many steps."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms during the run (slower on CUDA)."""

    def check(self) -> None:
        """Positive step counts, a known device spelling."""
        for name in ("steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            self._require(getattr(self, name) >= 1, name, "must be >= 1")
        self._require(self.seed >= 0, "seed", "must be >= 0")
        device = self.device
        ok = device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit()
        )
        self._require(ok, "device", "must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Everything a `rice-vit pretrain train` run computes (see the module docstring)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}")

    @property
    def warmup_steps(self) -> int:
        """Warmup steps: round(warmup_fraction * steps)."""
        return round(self.optim.warmup_fraction * self.train.steps)

    def replace(self, **sections: Any) -> "PretrainConfig":
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested values (tuples as lists, None left out: TOML has no null)."""
        return {
            name: {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(getattr(self, name)).items()
                if value is not None
            }
            for name in SECTIONS
        }


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}
PATH_FIELDS = {("model", "checkpoint"), ("data", "manifest"), ("data", "image_root")}


# ----------------------------------------------------------------------------- typing of values


def _typed(value: Any, annotation: Any, key: str) -> Any:
    """`value` checked against `annotation` (int, float, str, bool, Literal, X | None,
    tuple[float, float]); an int is accepted for a float (and becomes one), a list for a tuple."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _typed(value, inner[0], key)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        items = typing.get_args(annotation)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ConfigError(f"{key} must be a list of {len(items)} values, got {value!r}")
        return tuple(
            _typed(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True))
        )
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} of {key}")  # a bug here, not input


def _field_names(section: str) -> list[str]:
    return [item.name for item in dataclasses.fields(SECTIONS[section])]


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(valid)}"
    return ConfigError(f"unknown key {key!r} in {where}{hint}")


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> PretrainConfig:
    """Build and validate a config from nested plain values (one dict per section)."""
    sections: dict[str, Any] = {}
    try:
        for name, values in data.items():
            if name not in SECTIONS:
                raise _unknown(name, list(SECTIONS), "the top level")
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
            valid = _field_names(name)
            for key in values:
                if key not in valid:
                    raise _unknown(f"{name}.{key}", valid, f"[{name}]")
            sections[name] = SECTIONS[name](**values)
        return PretrainConfig(**sections)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    """Read a TOML config file, apply `section.key=value` overrides, resolve its relative paths
    against the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    for section, key in PATH_FIELDS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            data[section][key] = str(path.parent / value)
    return apply_overrides(config_from_dict(data, source=str(path)), overrides)


def apply_overrides(config: PretrainConfig, overrides: list[str]) -> PretrainConfig:
    """`section.key=value` overrides; the value is read as TOML (a bare word as a string,
    `none` as None)."""
    data: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for override in overrides:
        key, equals, text = override.partition("=")
        section, dot, name = key.strip().partition(".")
        if not equals or not dot:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        if section not in SECTIONS:
            raise _unknown(section, list(SECTIONS), "the top level")
        if name not in _field_names(section):
            raise _unknown(key, _field_names(section), f"[{section}]")
        data[section][name] = _parse_value(text.strip())
    changed = {
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in data.items()
        if values
    }
    return config.replace(**changed)


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def config_to_toml(config: PretrainConfig) -> str:
    """The config as TOML text (`load_config` reads it back equal)."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
