"""Checkpoint folders of safetensors files, the way transformers writes them: one
`model.safetensors`, or shards `model-0000i-of-0000N.safetensors` listed by
`model.safetensors.index.json` (`weight_map`).

Shared by rice_vit's encoder checkpoints and ov_model's full-model checkpoints. Only safetensors
is read (no pickle); tensors keep their stored dtype and bytes, so reading and writing again is
bit-identical. Shards fill greedily in sorted name order up to `max_shard_size` (a tensor larger
than the limit gets a shard of its own).

Weight files follow the process umask like every other file of the folder (0644 under the usual
022): safetensors >= 0.8 writes through a temporary file that is always 0600 and renames it into
place (safetensors issue #782), which would leave checkpoints readable by their owner only, so
`save_safetensors_file` sets the mode a plain `open()` would have given.
"""

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rice_vit.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors$")
_PROC_UMASK = re.compile(r"^Umask:\s*([0-7]+)\s*$", re.MULTILINE)
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


def open_safetensors(file: Path):
    """A safetensors handle; CheckpointError naming the file if it cannot be read."""
    try:
        return safe_open(file, framework="pt")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file}: unreadable safetensors file ({error})") from None


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
        raise CheckpointError(
            f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found (folder has {found})"
        )
    with open_safetensors(single) as handle:
        return dict.fromkeys(handle.keys(), single)


def read_tensors(
    folder: Path,
    names: Iterable[str] | None = None,
    *,
    file_of: dict[str, Path] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The tensors `names` (all when None) of a checkpoint folder, opening only the files that
    hold them. `file_of` (from `weight_files`) saves reading the index again."""
    file_of = weight_files(folder) if file_of is None else file_of
    wanted = list(file_of) if names is None else list(names)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted({file_of[name] for name in wanted}):
        here = [name for name in wanted if file_of[name] == file]
        try:
            with safe_open(file, framework="pt", device=str(device)) as handle:
                stored = set(handle.keys())
                for name in here:
                    if name not in stored:
                        raise CheckpointError(
                            f"{folder}: index puts {name} in {file.name}; it is not there"
                        )
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: cannot read tensors ({error})") from None
    return tensors


def process_umask() -> int:
    """The process umask, read without changing it where Linux shows it (`/proc/self/status`);
    elsewhere set and restored, to 0o077 meanwhile so a file another thread creates in that
    instant is more private, never less."""
    try:
        shown = _PROC_UMASK.search(Path("/proc/self/status").read_text(encoding="ascii"))
    except OSError:  # no procfs (macOS)
        shown = None
    if shown is not None:
        return int(shown[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def save_safetensors_file(
    tensors: dict[str, torch.Tensor], file: Path, *, metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_file` (atomic: a temporary file renamed into place), leaving `file`
    with the mode a new file gets from `open()` under the process umask instead of 0600."""
    save_file(tensors, file, metadata=metadata)
    os.chmod(file, 0o666 & ~process_umask())


def write_tensors(
    folder: Path, tensors: dict[str, torch.Tensor], *, max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write `tensors` as one file or as shards plus an index; returns the files written.
    Weight files of an earlier save in `folder` are removed first."""
    limit = parse_size(max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / SINGLE_FILE, folder / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    for stale in folder.iterdir():
        if SHARD_NAME.match(stale.name):
            stale.unlink()
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous()
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_safetensors_file(shards[0], folder / SINGLE_FILE, metadata=metadata)
        return [folder / SINGLE_FILE]
    written: list[Path] = []
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = folder / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors_file(shard, file, metadata=metadata)
        written.append(file)
        weight_map |= dict.fromkeys(shard, file.name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*written, folder / INDEX_FILE]
