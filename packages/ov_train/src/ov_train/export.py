"""Export a training checkpoint to the HF layout that ov_model and the official code load.

A checkpoint holds the model's weights in DCP form next to its `config.json` and a copy of the
run's processor files. Export writes `LlavaOV.save_pretrained`'s layout (config.json +
safetensors, sharded with an index above `max_shard_size`, tensors in sorted HF-name order) plus
the processor files copied byte for byte; the result loads with `LlavaOV.from_pretrained` and
`OVProcessor.from_pretrained`.

It streams, so that host memory stays at about one tensor whatever the model's size (an 8B
model in fp32 is ~34 GB, more than a login node has):
- the tensors' names, shapes and dtypes come from the DCP index (`.metadata`), checked against
  the model the config describes (built on the meta device: no memory);
- the safetensors header of each output file is computed from them up front, then each tensor
  is loaded alone (`dcp.load` of one key: only its bytes are read, the optimizer's never),
  cast to the export dtype, appended to the file and dropped.

It reads the checkpoint in one process whatever number of processes wrote it: the DCP index
holds whole tensors and `dcp.load` assembles each from the saving ranks' shards.

A LoRA checkpoint holds only its adapters and fully trained groups: `lora_export.py` merges
them into the base read from `model.path` (or writes a PEFT adapter folder).
"""

import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ov_model.config import LlavaOVConfig
from ov_model.model import LlavaOV
from ov_model.state_dict_adapter import to_hf
from ov_train.checkpointing import (
    MODEL_CONFIG,
    TENSORS_DIR,
    SafeFileSystemReader,
    copy_processor_files,
    resolve_checkpoint,
    single_process_quiet,
)
from ov_train.errors import CheckpointError
from ov_train.lora import lora_of
from ov_train.lora_export import checkpoint_recipe, export_lora_adapter, export_lora_merged
from rice_vit.safetensors_folder import INDEX_FILE, SINGLE_FILE, parse_size

EXPORT_FORMATS = ("hf", "peft")
"""hf: the HF-layout model (a LoRA run's adapters merged); peft: a LoRA run's adapter folder."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
MODEL_PREFIX = "model."


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    format: str = "hf",
) -> Path:
    """Write the HF-layout model of `checkpoint` (a checkpoint folder, or a run / checkpoints
    folder for its latest) into `out_dir`; `dtype` (fp32, bf16, fp16) casts the weights,
    None keeps fp32. A LoRA checkpoint (`train.lora`) is merged into its base (`format` hf)
    or written as a PEFT adapter folder (`format` peft), see `lora_export`. Returns
    `out_dir`."""
    source = resolve_checkpoint(checkpoint)
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"export dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    if format not in EXPORT_FORMATS:
        raise CheckpointError(f"export format {format!r}: choose one of {list(EXPORT_FORMATS)}")
    target_dtype = DTYPES[dtype or "fp32"]
    limit = parse_size(max_shard_size)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: not empty; export into a new folder")
    if lora_of(checkpoint_recipe(source)) is not None:
        if format == "peft":
            return export_lora_adapter(source, out)
        return export_lora_merged(source, out, dtype=target_dtype, max_shard_size=limit)
    if format == "peft":
        raise CheckpointError(
            f"{source}: --format peft writes the adapters of a LoRA run, and this checkpoint "
            "has no train.lora; export it as hf"
        )
    config = LlavaOVConfig.from_file(source / MODEL_CONFIG)
    shapes = _stored_model_tensors(source, config)
    hf_names = to_hf(dict.fromkeys(shapes, ""))  # hf name -> module name, via the adapter
    by_hf = {hf: module for hf, module in zip(hf_names, shapes, strict=True)}
    out.mkdir(parents=True, exist_ok=True)
    shards = _plan_shards(by_hf, shapes, target_dtype, limit)
    reader_folder = source / TENSORS_DIR
    weight_map: dict[str, str] = {}
    total = 0
    for number, names in enumerate(shards, start=1):
        file = SINGLE_FILE if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}"
        file = file if len(shards) == 1 else f"{file}.safetensors"
        total += _write_streamed(out / file, names, by_hf, shapes, target_dtype, reader_folder)
        weight_map |= dict.fromkeys(names, file)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    dtype_name = str(target_dtype).removeprefix("torch.")
    config.replace(extra={**config.extra, "torch_dtype": dtype_name}).save(out / MODEL_CONFIG)
    copy_processor_files(source, out)
    return out


def _stored_model_tensors(source: Path, config: LlavaOVConfig) -> dict[str, tuple[int, ...]]:
    """Module name -> shape of every model tensor in the checkpoint, checked against the model
    `config` describes."""
    metadata = SafeFileSystemReader(source / TENSORS_DIR).read_metadata()
    stored = {
        key.removeprefix(MODEL_PREFIX): tuple(value.size)
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(value, TensorStorageMetadata)
    }
    with torch.device("meta"):
        expected = {n: tuple(t.shape) for n, t in LlavaOV(config).state_dict().items()}
    if stored != expected:
        missing = sorted(expected.keys() - stored.keys())
        extra = sorted(stored.keys() - expected.keys())
        shaped = sorted(n for n in expected.keys() & stored.keys() if expected[n] != stored[n])
        raise CheckpointError(
            f"{source}: its model tensors do not match its config.json (missing {missing}, "
            f"unexpected {extra}, mis-shaped {shaped})"
        )
    return expected


def _plan_shards(
    by_hf: dict[str, str], shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, limit: int
) -> list[list[str]]:
    """HF names per output file: sorted, filled greedily up to `limit` bytes (a tensor larger
    than the limit gets a file of its own), as `rice_vit.safetensors_folder.write_tensors`."""
    shards: list[list[str]] = [[]]
    size_so_far = 0
    for name in sorted(by_hf):
        size = _nbytes(shapes[by_hf[name]], dtype)
        if shards[-1] and size_so_far + size > limit:
            shards.append([])
            size_so_far = 0
        shards[-1].append(name)
        size_so_far += size
    return shards


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * dtype.itemsize


def _write_streamed(
    file: Path,
    names: list[str],
    by_hf: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    reader_folder: Path,
) -> int:
    """One safetensors file: the header from the shapes, then each tensor loaded, cast and
    written alone. Returns the bytes of tensor data written."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        size = _nbytes(shapes[by_hf[name]], dtype)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shapes[by_hf[name]]),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(file, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in names:
            tensor = _load_one(reader_folder, by_hf[name], shapes[by_hf[name]])
            data = tensor.to(dtype).contiguous().view(torch.uint8).numpy()
            handle.write(data.tobytes() if data.size == 0 else memoryview(data.reshape(-1)))
            del tensor, data
    return offset


def _load_one(folder: Path, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Model tensor `name` of the checkpoint, read alone (fp32, as training keeps it)."""
    state = {MODEL_PREFIX + name: torch.empty(shape, dtype=torch.float32)}
    with single_process_quiet():
        dcp.load(state, storage_reader=SafeFileSystemReader(folder), no_dist=True)
    return state[MODEL_PREFIX + name]
