"""Reading and writing checkpoint folders: `config.json` plus safetensors weights, a single
`model.safetensors` or shards listed by `model.safetensors.index.json` (`weight_map`), the way
transformers writes them.

Only safetensors is read (no pickle). Reading looks at the file headers first, decides the layout
from the tensor names (`layouts.detect_layout`), and then loads only the encoder's tensors and only
from the shards that hold them, so pointing at a full LLaVA-OV-1.5 checkpoint does not read the
language model. Tensors keep their stored dtype and bytes; a save writes them back unchanged, so a
load/save round trip in the same layout is bit-identical (and so is MLCD -> LLaVA-OV -> MLCD, apart
from the post-layernorm LLaVA-OV cannot hold).

Shards are filled greedily in sorted name order up to `max_shard_size` (a tensor larger than the
limit gets a shard of its own), named `model-00001-of-0000N.safetensors` like transformers'.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rice_vit.config import Layout, RiceViTConfig, read_config_file, write_config_file
from rice_vit.errors import CheckpointError
from rice_vit.layouts import (
    DetectedLayout,
    detect_layout,
    from_module_names,
    to_module_names,
)

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_STORED_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB' (10**9) or '2GiB' (2**30)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(str(size))
        if match is None:
            raise CheckpointError(f"cannot read size {size!r}; use e.g. 5GB, 500MB, 2GiB, 1000")
        value = int(float(match[1]) * _UNITS[(match[2] or "B").upper()])
    if value < 1:
        raise CheckpointError(f"size must be at least one byte, got {size!r}")
    return value


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds, read from its headers only."""

    path: Path
    config: RiceViTConfig
    detected: DetectedLayout
    files: tuple[Path, ...]
    """Every weight file of the checkpoint."""
    file_of: dict[str, Path]
    """Stored encoder tensor name -> the file holding it."""
    shapes: dict[str, tuple[int, ...]]
    """Stored encoder tensor name -> shape."""
    dtypes: dict[str, str]
    """Stored encoder tensor name -> safetensors dtype (F32, BF16, ...)."""

    @property
    def layout(self) -> Layout:
        """'mlcd' or 'llava-ov'."""
        return self.detected.layout

    @property
    def num_parameters(self) -> int:
        """Values in the encoder's tensors."""
        total = 0
        for shape in self.shapes.values():
            count = 1
            for size in shape:
                count *= size
            total += count
        return total


def _weight_map(folder: Path) -> tuple[dict[str, Path], tuple[Path, ...]]:
    """Stored name -> file for every tensor, from the index or the single file's header."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index}: not a valid safetensors index ({error})") from None
        files = {name: folder / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise CheckpointError(f"{index}: lists {file.name}, which does not exist")
        return files, tuple(sorted(set(files.values())))
    single = folder / SINGLE_FILE
    if not single.is_file():
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise CheckpointError(
            f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found (folder has {found})"
        )
    with _open(single) as handle:
        return dict.fromkeys(handle.keys(), single), (single,)


def _open(file: Path):  # safetensors' handle type is private
    try:
        return safe_open(file, framework="pt")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file}: unreadable safetensors file ({error})") from None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Config, layout, files and encoder tensor shapes of a checkpoint folder, without loading
    tensor data."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (config.json + safetensors)")
    config = read_config_file(folder / CONFIG_FILE)
    file_of, files = _weight_map(folder)
    detected = detect_layout(file_of, source=str(folder))
    if detected.has_post_layernorm:
        config = config.replace(has_post_layernorm=True)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for file in files:
        wanted = [n for n in detected.encoder_names if file_of[n] == file]
        if not wanted:
            continue
        with _open(file) as handle:
            stored = set(handle.keys())
            for name in wanted:
                if name not in stored:
                    raise CheckpointError(
                        f"{folder}: index puts {name} in {file.name}; it is not there"
                    )
                tensor_slice = handle.get_slice(name)
                shapes[name] = tuple(tensor_slice.get_shape())
                dtypes[name] = tensor_slice.get_dtype()
    return CheckpointInfo(folder, config, detected, files, file_of, shapes, dtypes)


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[RiceViTConfig, dict[str, torch.Tensor], CheckpointInfo]:
    """The config and the encoder's state_dict (module names, stored dtypes) of a checkpoint
    folder in either layout; raises `CheckpointError` listing missing/unexpected tensors."""
    info = inspect_checkpoint(path)
    tensors: dict[str, torch.Tensor] = {}
    for file in info.files:
        wanted = [n for n in info.detected.encoder_names if info.file_of[n] == file]
        if not wanted:
            continue
        try:
            with safe_open(file, framework="pt", device=str(device)) as handle:
                for name in wanted:
                    tensors[name] = handle.get_tensor(name)
        except SafetensorError as error:
            raise CheckpointError(f"{file}: cannot read tensors ({error})") from None
    state = to_module_names(tensors, info.detected, info.config, source=str(info.path))
    return info.config, state, info


def save_checkpoint(
    path: str | Path,
    config: RiceViTConfig,
    state: dict[str, torch.Tensor],
    layout: Layout,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> tuple[list[Path], list[str]]:
    """Write `config.json` and the weights of `state` (module names) in `layout`. Returns the
    files written and the module tensors the layout could not hold (dropped)."""
    folder = Path(path)
    limit = parse_size(max_shard_size)
    stored, dropped = from_module_names(state, layout)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in stored.values()}
    folder.mkdir(parents=True, exist_ok=True)
    ours = [folder / CONFIG_FILE, folder / SINGLE_FILE, folder / INDEX_FILE]
    ours += [p for p in folder.iterdir() if _SHARD_NAME.match(p.name)]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"{folder}: already holds {sorted(p.name for p in existing)}; pass overwrite=True "
            "(CLI: --overwrite) to replace them"
        )
    for file in existing:
        file.unlink()

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name in sorted(stored):
        size = stored[name].numel() * stored[name].element_size()
        if shards[-1] and shard_bytes + size > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = stored[name]
        shard_bytes += size
    metadata = {"format": "pt"}
    written: list[Path] = []
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata=metadata)
        written.append(folder / SINGLE_FILE)
    else:
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            file = folder / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, file, metadata=metadata)
            written.append(file)
            weight_map |= dict.fromkeys(shard, file.name)
        total = sum(t.numel() * t.element_size() for t in stored.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        written.append(folder / INDEX_FILE)
    torch_dtype = dtypes.pop() if len(dtypes) == 1 else None
    write_config_file(folder / CONFIG_FILE, config, layout, torch_dtype=torch_dtype)
    written.append(folder / CONFIG_FILE)
    return written, dropped


def stored_dtype_name(code: str) -> str:
    """torch dtype name of a safetensors dtype code (F32 -> float32); unknown codes unchanged."""
    return _STORED_DTYPES.get(code, code)
