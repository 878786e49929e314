"""`PrepareConfig`: what `prepare` reads, how it measures and packs, where it writes.

Kept apart from `prepare.py` so that the command line can build its options from these fields
(`metadata["help"]`, the defaults) without importing torch: `ov-train prepare --help` answers at
once.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ov_train.data.conversations import CAPTION_PROMPT
from ov_train.data.errors import PrepareError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_parquet import ParquetSource
from ov_train.data.ingest_webdataset import WebDatasetSource

InputSource = LlavaSource | WebDatasetSource | ParquetSource
"""One configured input; the three formats' source types."""


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """What to prepare and how. Validated at construction; `metadata["help"]` feeds the CLI."""

    inputs: tuple[InputSource, ...]
    out_dir: Path
    max_length: int = field(
        default=8192, metadata={"help": "Most LLM tokens per sample (longer: too_long)."}
    )
    truncate: bool = field(
        default=False,
        metadata={"help": "Truncate over-long samples to max_length instead of rejecting them."},
    )
    capacity: int | None = field(default=None, metadata={"help": "LLM tokens per packed bin."})
    patch_capacity: int | None = field(
        default=None, metadata={"help": "Most ViT patches per bin (none: no limit)."}
    )
    max_per_bin: int | None = field(
        default=None, metadata={"help": "Most samples per bin (none: no limit)."}
    )
    seed: int = field(default=0, metadata={"help": "Packing seed (the order of the bins)."})
    caption_prompt: str = field(
        default=CAPTION_PROMPT, metadata={"help": "User prompt of caption-only samples."}
    )
    verify_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once to catch corrupt data (else headers only)."},
    )
    allow_absolute_paths: bool = field(
        default=False,
        metadata={
            "help": "Allow absolute image paths in the data (relative paths with '..' are "
            "refused always)."
        },
    )
    unit_rows: int = field(
        default=2048,
        metadata={
            "help": "Rows per measuring work unit (a JSONL/JSON file is cut every that many "
            "rows; a parquet row group is never split; a tar is one unit)."
        },
    )
    workers: int | None = field(
        default=1,
        metadata={
            "help": "Processes measuring units and writing shards (none: all cores; 1: this "
            "process). With --engine ray: most actors (none: as many as the cluster's CPUs).",
            "cli_default": None,
        },
    )
    """1 by default here (library callers choose); `ov-train prepare --workers` defaults to all
    cores."""
    engine: str = field(
        default="local",
        metadata={"help": "Where measuring units run: local (processes) or ray (actors)."},
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to join with --engine ray (none: RAY_ADDRESS if set, else a "
            "local Ray)."
        },
    )
    max_bins_per_shard: int | None = field(
        default=1000, metadata={"help": "Most bins per shard tar (none: no limit)."}
    )
    max_shard_bytes: int | None = field(
        default=None, metadata={"help": "Most bytes per shard tar (none: no limit)."}
    )
    keep_work: bool = field(
        default=False, metadata={"help": "Keep the normalised source tars in OUT/work."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        inputs = tuple(self.inputs)
        if not inputs:
            raise PrepareError("PrepareConfig.inputs is empty: give at least one input")
        for index, source in enumerate(inputs):
            if not isinstance(source, LlavaSource | WebDatasetSource | ParquetSource):
                raise PrepareError(
                    f"PrepareConfig.inputs[{index}] is a {type(source).__name__}; expected a "
                    "LlavaSource, WebDatasetSource or ParquetSource"
                )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("max_length", "capacity", "patch_capacity", "max_per_bin"):
            # bin budgets are int32 in ov_packing's core and plan file
            _check_positive(
                name, getattr(self, name), optional=name != "max_length", limit=2**31 - 1
            )
        _check_positive("workers", self.workers, optional=True)
        _check_positive("unit_rows", self.unit_rows, optional=False)
        if self.engine not in ("local", "ray"):
            raise PrepareError(
                f"PrepareConfig.engine must be 'local' or 'ray', got {self.engine!r}"
            )
        if self.ray_address is not None and self.engine != "ray":
            raise PrepareError("PrepareConfig.ray_address needs engine='ray'")
        for name in ("max_bins_per_shard", "max_shard_bytes"):
            _check_positive(name, getattr(self, name), optional=True)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not (0 <= self.seed < 2**64)
        ):
            raise PrepareError(
                f"PrepareConfig.seed must be an integer in [0, 2**64), got {self.seed!r}"
            )
        if not isinstance(self.caption_prompt, str) or not self.caption_prompt.strip():
            raise PrepareError("PrepareConfig.caption_prompt must be a non-empty string")
        if "<image>" in self.caption_prompt:
            raise PrepareError("PrepareConfig.caption_prompt must not contain <image>")

    @property
    def bin_capacity(self) -> int:
        """LLM tokens per bin: `capacity`, or `max_length` when not given."""
        return self.max_length if self.capacity is None else self.capacity


def _check_positive(name: str, value: Any, *, optional: bool, limit: int | None = None) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer or None" if optional else "a positive integer"
        raise PrepareError(f"PrepareConfig.{name} must be {allowed}, got {value!r}")
    if limit is not None and value > limit:
        raise PrepareError(f"PrepareConfig.{name} must be at most {limit:,}, got {value:,}")


def describe_input(source: InputSource) -> str:
    """One line naming an input and how it is read (the report's `inputs`)."""
    if isinstance(source, LlavaSource):
        return f"llava:{source.path} (images: {source.root})"
    if isinstance(source, WebDatasetSource):
        return f"webdataset:{source.path}"
    return (
        f"parquet:{source.path} (columns: image={source.image_column}, "
        f"conversations={source.conversations_column}, caption={source.caption_column}, "
        f"id={source.id_column})"
    )
