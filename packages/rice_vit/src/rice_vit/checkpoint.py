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

from dataclasses import dataclass
from pathlib import Path

import torch

from rice_vit.config import Layout, RiceViTConfig, read_config_file, write_config_file
from rice_vit.errors import CheckpointError
from rice_vit.layouts import (
    DetectedLayout,
    detect_layout,
    from_module_names,
    to_module_names,
)
from rice_vit.safetensors_folder import (
    INDEX_FILE,
    SHARD_NAME,
    SINGLE_FILE,
    open_safetensors,
    parse_size,
    read_tensors,
    weight_files,
    write_tensors,
)

CONFIG_FILE = "config.json"
_STORED_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
}


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


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Config, layout, files and encoder tensor shapes of a checkpoint folder, without loading
    tensor data."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (config.json + safetensors)")
    config = read_config_file(folder / CONFIG_FILE)
    file_of = weight_files(folder)
    files = tuple(sorted(set(file_of.values())))
    detected = detect_layout(file_of, source=str(folder))
    if detected.has_post_layernorm:
        config = config.replace(has_post_layernorm=True)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for file in files:
        wanted = [n for n in detected.encoder_names if file_of[n] == file]
        if not wanted:
            continue
        with open_safetensors(file) as handle:
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
    tensors = read_tensors(
        info.path, info.detected.encoder_names, file_of=info.file_of, device=device
    )
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
    parse_size(max_shard_size)  # a bad size fails before anything is touched
    stored, dropped = from_module_names(state, layout)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in stored.values()}
    folder.mkdir(parents=True, exist_ok=True)
    ours = [folder / CONFIG_FILE, folder / SINGLE_FILE, folder / INDEX_FILE]
    ours += [p for p in folder.iterdir() if SHARD_NAME.match(p.name)]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"{folder}: already holds {sorted(p.name for p in existing)}; pass overwrite=True "
            "(CLI: --overwrite) to replace them"
        )
    for file in existing:
        file.unlink()
    written = write_tensors(folder, stored, max_shard_size=max_shard_size)
    torch_dtype = dtypes.pop() if len(dtypes) == 1 else None
    write_config_file(folder / CONFIG_FILE, config, layout, torch_dtype=torch_dtype)
    written.append(folder / CONFIG_FILE)
    return written, dropped


def stored_dtype_name(code: str) -> str:
    """torch dtype name of a safetensors dtype code (F32 -> float32); unknown codes unchanged."""
    return _STORED_DTYPES.get(code, code)
