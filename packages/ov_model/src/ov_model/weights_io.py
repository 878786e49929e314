"""Safetensors checkpoint folders: one `model.safetensors` or shards listed by
`model.safetensors.index.json` (`weight_map`), as transformers writes them.

Only safetensors is read (no pickle). Tensors keep their stored dtype and bytes, so loading and
saving again is bit-identical. Shards fill greedily in sorted name order up to `max_shard_size`.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ov_model.errors import CheckpointError
from rice_vit.checkpoint import parse_size

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def weight_files(folder: Path) -> dict[str, Path]:
    """Stored tensor name -> file, from the index or the single file's header."""
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
        return files
    single = folder / SINGLE_FILE
    if not single.is_file():
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise CheckpointError(f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} (found {found})")
    try:
        with safe_open(single, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{single}: unreadable safetensors file ({error})") from None


def read_tensors(folder: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, by stored name."""
    folder = Path(folder)
    files = weight_files(folder)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(set(files.values())):
        wanted = [name for name, where in files.items() if where == file]
        try:
            with safe_open(file, framework="pt", device=device) as handle:
                present = set(handle.keys())
                for name in wanted:
                    if name not in present:
                        raise CheckpointError(f"{folder}: index puts {name} in {file.name}; absent")
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: cannot read tensors ({error})") from None
    return tensors


def write_tensors(
    folder: str | Path, tensors: dict[str, torch.Tensor], max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write tensors as one file or shards plus an index; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    for stale in [
        folder / SINGLE_FILE,
        folder / INDEX_FILE,
        *folder.glob("model-*-of-*.safetensors"),
    ]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata=metadata)
        return [folder / SINGLE_FILE]
    written, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        file = folder / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, file, metadata=metadata)
        written.append(file)
        weight_map |= dict.fromkeys(shard, file.name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*written, folder / INDEX_FILE]
