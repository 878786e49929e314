"""The typed recipe of a training run: nested, frozen, keyword-only msgspec structs.

A `Recipe` is everything that decides what a run computes: the model to start from and which of
its modules train, the data, AdamW, the learning-rate schedule, the step structure (steps,
gradient accumulation, micro-batch token budget, clipping, seed, dtype policy, LoRA),
checkpointing and logging. Named recipes live in `recipes.py`; TOML files and `--set key=value`
overrides are read by `config_io.py`. Where the run writes (its folder) and what data folder it
reads on this machine are not part of it beyond `data.path`, so a recipe file can be shared
between machines.

Every section checks itself at construction: msgspec types each value (an int where a float is
declared becomes a float, a list where a tuple is declared a tuple, nothing else is converted),
then `check()` tests ranges, and an error names the dotted key (`optim.lr`). msgspec's messages
are put in the recipe's words by `recipe_error`, in one place, so a recipe built in Python, read
from TOML or changed by an override is held to the same rules and errors.

Trade-off: the sections are frozen, so a change is `msgspec.structs.replace` or an override,
never an assignment; in exchange a recipe can be shared, hashed and compared without defensive
copies.
"""

import difflib
import math
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from ov_train.errors import RecipeError

MODULES = ("vision", "projector", "llm")
"""The trainable units of a LLaVA-OV model: the RICE-ViT encoder, the patch merger, the Qwen
decoder with its output head (`language_model` + `lm_head`)."""

Stage = Literal["1", "1.5", "2"]
STAGES = typing.get_args(Stage)
Dtype = Literal["auto", "bf16", "fp32"]
DTYPES = typing.get_args(Dtype)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Ranges are part of a field's type: msgspec checks them with the type, `recipe_error` words the
# failure (`train.steps must be >= 1, got 0`). Rules that tie fields together stay in `check()`.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]
"""A number in [0, 1)."""
Text = Annotated[str, msgspec.Meta(min_length=1)]
"""A string that is not empty."""


_EXPECTED = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "array": "a list",
    "object": "a table of keys",
}
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def recipe_error(
    error: msgspec.ValidationError, value: Any, key: str = "", kind: Any = None
) -> RecipeError:
    """msgspec's validation `error` about `value` (a section, or the whole recipe when `key` is
    empty) in the recipe's words: the dotted key, the rule and the offending value, and for an
    unknown key the closest valid one (`kind`: the type `value` was converted to)."""
    found = _AT.match(str(error))
    assert found is not None
    message = found["message"]
    for name, index in _STEP.findall(found["path"] or ""):
        if name:
            key, kind = f"{key}.{name}" if key else name, _field_type(kind, name)
            value = value.get(name) if isinstance(value, dict) else None
        else:
            key, value = f"{key}[{index}]", value[int(index)]
            kind = next(iter(typing.get_args(kind)), None)  # tuple[X, ...] -> X
    if match := re.fullmatch(r"Expected `(\w+)(?: \| null)?`, got `\w+`", message):
        return RecipeError(f"{key} must be {_EXPECTED[match[1]]}, got {value!r}")
    if match := re.fullmatch(r"Expected `array` of length (\d+), got (\d+)", message):
        return RecipeError(f"{key} must have {match[1]} entries, got {match[2]}: {value!r}")
    if re.fullmatch(r"Expected `(str|array)` of length >= 1", message):
        return RecipeError(f"{key} must not be empty, got {value!r}")
    if match := re.fullmatch(r"Expected `\w+` ([<>]=? \S+)", message):
        return RecipeError(f"{key} must be {match[1]}, got {value!r}")
    if message.startswith("Invalid enum value"):
        return RecipeError(f"{key} must be one of {list(choices(kind))}, got {value!r}")
    prefix = f"{key}." if key else ""
    if match := re.fullmatch(r"Object missing required field `(\w+)`", message):
        return RecipeError(f"{prefix}{match[1]} is required")
    if match := re.fullmatch(r"Object contains unknown field `(.+)`", message):
        valid = [item.name for item in msgspec.structs.fields(section_type(kind))]
        return RecipeError(f"unknown key {prefix}{match[1]}{suggest_key(match[1], valid, prefix)}")
    return RecipeError(message)  # a check() of ours, which names its key already


def suggest_key(key: str, valid: list[str], prefix: str) -> str:
    """`; did you mean PREFIX.CLOSEST?` for an unknown `key`, else the list of valid keys."""
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f"; valid keys: {', '.join(prefix + v for v in valid)}"


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a `Literal[...]` annotation (also inside `X | None` or Annotated)."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return tuple(v for arg in typing.get_args(annotation) for v in choices(arg))


def _field_type(kind: Any, name: str) -> Any:
    section = section_type(kind)
    fields = {item.name: item.type for item in msgspec.structs.fields(section)} if section else {}
    return fields.get(name)


def typed_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` as the type `annotation` (an int where a float is declared becomes a float, a
    list where a tuple is declared a tuple, nothing else is converted; floats must be finite);
    raises RecipeError naming `key` when it is not one."""
    items = value if isinstance(value, list | tuple) else (value,)
    if any(isinstance(item, float) and not math.isfinite(item) for item in items):
        raise RecipeError(f"{key} must be finite, got {value!r}")
    try:
        return msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as error:
        raise recipe_error(error, value, key, kind=annotation) from None


def section_type(annotation: Any) -> "type[Section] | None":
    """The Section class an annotation holds (`LoraConfig` of `LoraConfig | None`), or None."""
    options = typing.get_args(annotation) or (annotation,)
    for option in options:
        if isinstance(option, type) and issubclass(option, Section):
            return option
    return None


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Shared construction-time behaviour: type every field (`typed_value`), then `check()`.

    msgspec runs `__post_init__` for a struct built in Python, decoded by `msgspec.convert` or
    copied by `msgspec.structs.replace`, so all three are held to the same rules.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for item in msgspec.structs.fields(self):
            value, key = getattr(self, item.name), self.key(item.name)
            section = section_type(item.type)
            if section is None:
                typed = typed_value(value, item.type, key)
                if typed is not value:
                    msgspec.structs.force_setattr(self, item.name, typed)
            elif not isinstance(value, section) and not (
                value is None and item.type is not section
            ):
                raise RecipeError(f"{key} must be a {section.__name__}")
        self.check()

    def key(self, name: str) -> str:
        """The dotted key of one of this section's fields (`optim.lr`)."""
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def check(self) -> None:
        """Range checks after typing (override in sections that have any)."""

    def _require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise RecipeError(f"{self.key(name)} {rule}, got {getattr(self, name)!r}")


class ModelConfig(Section, kw_only=True):
    """The model to start from and which of its modules train."""

    SECTION: ClassVar[str] = "model"
    preset: str = "tiny"
    """An `ov_model.PRESETS` name (tiny, 3b, 4b, 8b): the architecture built (seeded, random)
    when `path` is unset, and the size the recipe was written for."""
    path: Text | None = None
    """An HF-layout model folder (weights, config, tokenizer, processor) to start from: the
    Stage-0 merge of `ov-model init`, or the export of the previous stage."""
    trainable: tuple[str, ...] = MODULES
    """Modules that train (of vision, projector, llm); the others are frozen."""
    attention_backend: str | None = None
    """Force a varlen attention backend (None: ov_model chooses)."""

    def check(self) -> None:
        from ov_model.config import PRESETS

        self._require(self.preset in PRESETS, "preset", f"must be one of {sorted(PRESETS)}")
        self._require(bool(self.trainable), "trainable", "must name at least one module")
        unknown = [m for m in self.trainable if m not in MODULES]
        self._require(not unknown, "trainable", f"must name modules of {list(MODULES)}")
        self._require(
            len(set(self.trainable)) == len(self.trainable), "trainable", "names a module twice"
        )


class DataConfig(Section, kw_only=True):
    """Where the packed training shards are (`ov-train prepare` output) and how they are read."""

    SECTION: ClassVar[str] = "data"
    path: Text | None = None
    """Folder of packed shards; `ov-train run --data DIR` sets it."""
    num_workers: NonNegativeInt = 2
    """Loader worker processes per rank (0: read in the training process). Workers decode
    images and run the processor while the GPU computes; they live for the whole run and
    prefetch two micro-batches each (see `ov_train.data.loader`)."""


class OptimConfig(Section, kw_only=True):
    """AdamW (decoupled weight decay) with a learning rate per module."""

    SECTION: ClassVar[str] = "optim"
    lr: PositiveFloat
    """Peak learning rate of every module without its own below."""
    lr_vision: PositiveFloat | None = None
    lr_projector: PositiveFloat | None = None
    lr_llm: PositiveFloat | None = None
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    eps: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.0
    """Applied to the weights of Linear and Conv layers only (see optim.py)."""

    def lr_for(self, module: str) -> float:
        """The peak learning rate of `module` (one of MODULES)."""
        if module not in MODULES:
            raise RecipeError(f"unknown module {module!r}; modules are {list(MODULES)}")
        specific = getattr(self, f"lr_{module}")
        return self.lr if specific is None else specific


class ScheduleConfig(Section, kw_only=True):
    """Linear warmup, then cosine decay from each module's peak to `min_lr` at the last step."""

    SECTION: ClassVar[str] = "schedule"
    warmup_fraction: Fraction = 0.002
    """Warmup steps as a fraction of `train.steps` (rounded up)."""
    min_lr: NonNegativeFloat = 1e-6


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The decoder's attention and MLP projections: LoRA's usual targets in a Qwen LLM."""
LoraBaseDtype = Literal["fp32", "bf16"]
LORA_BASE_DTYPES = typing.get_args(LoraBaseDtype)


class LoraConfig(Section, kw_only=True):
    """Low-rank adapters (LoRA, via peft) instead of full fine-tuning for some module groups.

    Groups named in `modules` learn only through adapters on the Linear layers whose names match
    `targets`; their base weights are frozen (and may be stored in bf16). Every group in
    `modules` must also be in `model.trainable`; trainable groups not in `modules` (typically
    the projector) train fully as before.
    """

    SECTION: ClassVar[str] = "train.lora"
    rank: PositiveInt = 16
    """Rank r of each adapter (A: r x in, B: out x r)."""
    alpha: PositiveFloat = 32.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    dropout: Fraction = 0.0
    """Dropout on the adapter's input during training."""
    modules: tuple[str, ...] = ("llm",)
    """Module groups (of vision, projector, llm) that get adapters."""
    targets: tuple[str, ...] = LORA_TARGETS
    """Linear layers that get an adapter, matched as peft does: a name matches when it equals
    the pattern or ends with `.` + pattern (`q_proj` matches `...layers.0.self_attn.q_proj`)."""
    base_dtype: LoraBaseDtype = "fp32"
    """Storage dtype of the frozen base weights of the adapted groups (bf16 halves them)."""

    def check(self) -> None:
        self._require(bool(self.modules), "modules", "must name at least one module group")
        unknown = [m for m in self.modules if m not in MODULES]
        self._require(not unknown, "modules", f"must name groups of {list(MODULES)}")
        self._require(bool(self.targets), "targets", "must name at least one layer pattern")
        self._require(all(self.targets), "targets", "must not contain an empty pattern")


class TrainConfig(Section, kw_only=True):
    """The step structure, precision policy and seed."""

    SECTION: ClassVar[str] = "train"
    steps: PositiveInt
    """Optimizer steps of the run."""
    grad_accumulation: PositiveInt = 1
    """Micro-batches per optimizer step over ALL data-parallel ranks (the global batch, in packed
    micro-batches): each of W ranks runs grad_accumulation / W of them, so a recipe trains the
    same way, and resumes the same global batch, at any world size that divides it."""
    micro_batch_tokens: PositiveInt
    """Token budget of one micro-batch: packed bins are concatenated up to it, never padded."""
    clip_grad_norm: NonNegativeFloat = 1.0
    """Clip the global gradient norm to this (0: measure only, never clip)."""
    seed: NonNegativeInt = 0
    dtype: Dtype = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU; bf16: autocast on any device; fp32: none.
    Parameters and optimizer states are always fp32 (master weights)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bitwise reproducible runs and resumes, slower."""
    lora: LoraConfig | None = None
    """Low-rank adapters for some module groups (TOML table `[train.lora]`); None: full
    fine-tuning of every trainable module."""

    def micro_batches_per_rank(self, data_parallel_ranks: int) -> int:
        """Micro-batches each of `data_parallel_ranks` ranks runs per step; RecipeError when
        they do not divide `grad_accumulation`."""
        if self.grad_accumulation % data_parallel_ranks:
            raise RecipeError(
                f"train.grad_accumulation ({self.grad_accumulation} micro-batches per step over "
                f"all ranks) is not divisible by the {data_parallel_ranks} data-parallel ranks; "
                "choose a multiple of the rank count"
            )
        return self.grad_accumulation // data_parallel_ranks

    def check(self) -> None:
        self._require(bool(_DEVICE.match(self.device)), "device", "must be auto, cpu or cuda[:N]")


ActivationCheckpointing = Literal["none", "full", "selective"]
ACTIVATION_CHECKPOINTING = typing.get_args(ActivationCheckpointing)
CpAttention = Literal["allgather", "ring"]
CP_ATTENTION = typing.get_args(CpAttention)
PipelineSchedule = Literal["1F1B", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble"]
PP_SCHEDULES = typing.get_args(PipelineSchedule)
MULTI_STAGE_SCHEDULES = ("Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")


class MeshShape(typing.NamedTuple):
    """Degrees of the device mesh's dims, outermost first (torchtitan's order): pipeline
    stages, replica groups, shard ranks, context ranks, tensor ranks."""

    pp: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int

    @property
    def data_parallel(self) -> int:
        """Ranks that read different micro-batches (dp_replicate x dp_shard)."""
        return self.dp_replicate * self.dp_shard


class ParallelConfig(Section, kw_only=True):
    """How the processes of a run share the work: the device mesh and memory savers.

    The mesh is (pp, dp_replicate, dp_shard, cp, tp), outermost first; the product of the
    degrees is the world size, and `dp_shard = -1` takes whatever the others leave.
    - `dp_shard` ranks shard parameters, gradients and optimizer states with FSDP2 (together
      with the cp ranks: FSDP2 shards over dp_shard x cp); `dp_replicate` groups hold replicas
      (HSDP when both are above 1, plain replication when `dp_shard` is 1). The data-parallel
      ranks (dp_replicate x dp_shard) each read their own micro-batches.
    - `tp` ranks split every decoder layer's heads and MLP width, and the vocabulary of the
      embedding and head (tensor parallel), and with `sequence_parallel` the norms' tokens.
    - `cp` ranks split every packed row's tokens inside the decoder (context parallel).
    - `pp` ranks each hold a stage of the model (pipeline parallel).
    The tp, cp and pp ranks of one data-parallel rank read the same micro-batches.
    """

    SECTION: ClassVar[str] = "parallel"
    dp_replicate: PositiveInt = 1
    """Replica groups (HSDP's outer dimension)."""
    dp_shard: int = -1
    """Ranks that shard each replica with FSDP2 (-1: world size / the other degrees)."""
    tp: PositiveInt = 1
    """Tensor parallel degree: attention heads, KV heads and the vocabulary are split over tp
    ranks (each must be divisible by it)."""
    sequence_parallel: bool = True
    """With tp > 1: the norms and residual stream hold 1/tp of the row's tokens (rows are
    padded to a multiple of tp); false keeps them whole on every tp rank."""
    cp: PositiveInt = 1
    """Context parallel degree: each packed row's decoder tokens are split over cp ranks (rows
    padded to a multiple of 2 x cp, load-balanced zigzag chunks); the ViT runs whole."""
    cp_attention: CpAttention = "allgather"
    """Context parallel attention: allgather (every rank gathers all keys and values: simple,
    memory grows with the row) or ring (key/value blocks travel around the cp ranks)."""
    pp: PositiveInt = 1
    """Pipeline parallel degree: ranks holding consecutive stages of the model."""
    pp_schedule: PipelineSchedule = "1F1B"
    """1F1B, Interleaved1F1B, InterleavedZeroBubble or ZBVZeroBubble (the last three hold
    `pp_stages_per_rank` >= 2 stages per rank)."""
    pp_stages_per_rank: PositiveInt = 1
    """Stages each pipeline rank holds (virtual stages of the interleaved schedules)."""
    pp_layers: tuple[int, ...] = ()
    """Decoder layers of each stage, in order (pp x pp_stages_per_rank numbers summing to the
    model's layers); empty: as even as possible. Stage 0 also runs the ViT, projector and
    embeddings; the last the final norm, head and loss."""
    activation_checkpointing: ActivationCheckpointing = "none"
    """none; full (every ViT block and decoder layer recomputes its forward in backward);
    selective (every `checkpoint_every`-th one does)."""
    checkpoint_every: PositiveInt = 2
    """With selective activation checkpointing: checkpoint layers 0, N, 2N, ... of each stack."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after each layer's forward (gather again for
    backward); false keeps them, trading memory for one all-gather per layer."""
    timeout_s: PositiveFloat = 600.0
    """Process-group timeout: a rank waiting this long on a collective (a peer died) fails
    with an error instead of hanging."""

    def check(self) -> None:
        self._require(self.dp_shard >= 1 or self.dp_shard == -1, "dp_shard", "must be >= 1 or -1")
        multi = self.pp_schedule in MULTI_STAGE_SCHEDULES
        self._require(
            self.pp == 1 or multi == (self.pp_stages_per_rank > 1),
            "pp_stages_per_rank",
            f"must be 1 with pp_schedule {self.pp_schedule}"
            if not multi
            else f"must be >= 2 with pp_schedule {self.pp_schedule}",
        )
        self._require(
            self.pp_schedule != "ZBVZeroBubble" or self.pp_stages_per_rank == 2,
            "pp_stages_per_rank",
            "must be 2 with ZBVZeroBubble (a V: two stages per rank)",
        )
        self._require(
            not self.pp_layers or len(self.pp_layers) == self.pp * self.pp_stages_per_rank,
            "pp_layers",
            f"must give one layer count per stage ({self.pp} x {self.pp_stages_per_rank})",
        )
        self._require(all(n >= 0 for n in self.pp_layers), "pp_layers", "must be >= 0 each")

    @property
    def pipeline_stages(self) -> int:
        """Stages of the whole pipeline (pp x pp_stages_per_rank)."""
        return self.pp * self.pp_stages_per_rank

    def row_multiple(self) -> int:
        """Packed rows are padded to a multiple of this: tp with sequence parallelism (each tp
        rank holds an equal share of the tokens), 2 x cp with context parallelism (zigzag)."""
        tp = self.tp if self.tp > 1 and self.sequence_parallel else 1
        cp = 2 * self.cp if self.cp > 1 else 1
        return math.lcm(tp, cp)

    def static_row_tokens(self, micro_batch_tokens: int) -> int | None:
        """With pp > 1, the one length every row is padded to (the states sent between stages
        have a static shape): the token budget plus the padding image's token, rounded up to
        `row_multiple`; None without pipeline parallelism."""
        if self.pp == 1:
            return None
        multiple = self.row_multiple()
        return -(-(micro_batch_tokens + 1) // multiple) * multiple

    def degrees(self, world_size: int) -> MeshShape:
        """The mesh's degrees for `world_size` processes; RecipeError when they do not multiply
        to it."""
        fixed = self.dp_replicate * self.tp * self.pp * self.cp
        shard = self.dp_shard
        named = f"pp {self.pp} x dp_replicate {self.dp_replicate} x cp {self.cp} x tp {self.tp}"
        if shard == -1:
            if world_size % fixed:
                raise RecipeError(
                    f"parallel: {world_size} processes cannot be split into {named} "
                    f"= {fixed} (dp_shard = -1 takes the rest)"
                )
            shard = world_size // fixed
        if fixed * shard != world_size:
            raise RecipeError(
                f"parallel: {named} x dp_shard {shard} = {fixed * shard} processes, but the "
                f"run has {world_size}"
            )
        return MeshShape(self.pp, self.dp_replicate, shard, self.cp, self.tp)


class CheckpointConfig(Section, kw_only=True):
    """When checkpoints are written and how many are kept."""

    SECTION: ClassVar[str] = "checkpoint"
    dir: Text = "checkpoints"
    """Folder of the checkpoints; a relative path is inside the run folder."""
    every: PositiveInt = 500
    """Save every this many steps (and always after the last step)."""
    keep_last: PositiveInt = 3
    """Complete checkpoints kept; older ones are deleted after a new one is committed."""


class LoggingConfig(Section, kw_only=True):
    """What a run reports besides `metrics.jsonl` (always written)."""

    SECTION: ClassVar[str] = "logging"
    progress_bar: bool = True
    tensorboard: bool = False
    """Write TensorBoard events when `torch.utils.tensorboard` is importable (else a notice)."""
    plot: bool = True
    """Draw `loss.png` in the run folder at the end."""


class Recipe(Section, kw_only=True):
    """A complete, validated training recipe (see the module docstring)."""

    name: str
    stage: Stage
    """1 (alignment), 1.5 (mid-training) or 2 (instruction tuning)."""
    description: str = ""
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    optim: OptimConfig
    schedule: ScheduleConfig = msgspec.field(default_factory=ScheduleConfig)
    train: TrainConfig
    parallel: ParallelConfig = msgspec.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)

    SECTIONS: ClassVar[dict[str, type[Section]]] = {
        "model": ModelConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "schedule": ScheduleConfig,
        "train": TrainConfig,
        "parallel": ParallelConfig,
        "checkpoint": CheckpointConfig,
        "logging": LoggingConfig,
    }

    def check(self) -> None:
        self._require(bool(_NAME.match(self.name)), "name", "must be lower-case [a-z0-9_.-]")
        lora = self.train.lora
        if lora is not None and not set(lora.modules) <= set(self.model.trainable):
            frozen = [m for m in lora.modules if m not in self.model.trainable]
            raise RecipeError(
                f"train.lora.modules names {frozen}, which model.trainable "
                f"{list(self.model.trainable)} freezes; add them to model.trainable or drop "
                "them from train.lora.modules"
            )
        for module in self.model.trainable:
            lr = self.optim.lr_for(module)
            if self.schedule.min_lr > lr:
                raise RecipeError(
                    f"schedule.min_lr ({self.schedule.min_lr}) is above the peak learning rate "
                    f"of the trainable module {module!r} ({lr}); lower schedule.min_lr"
                )

    @property
    def warmup_steps(self) -> int:
        """Warmup steps: `schedule.warmup_fraction` of `train.steps`, rounded up."""
        return math.ceil(self.schedule.warmup_fraction * self.train.steps)
