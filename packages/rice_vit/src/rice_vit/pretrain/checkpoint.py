"""Resumable checkpoints of a pretraining run, written atomically, read back exactly.

A checkpoint is a folder `RUN/checkpoints/step_XXXXXXXX/` holding:

- `model.safetensors`: the encoder's parameters (rank 0 writes them; DDP keeps them equal);
- `centres-rankRRRRR.safetensors`: each rank's shard of the class centres;
- `optimizer-rankRRRRR.pt`: each rank's AdamW state (its shard of centres differs per rank),
  written with `torch.save` and read with `torch.load(weights_only=True)`: tensors, numbers and
  lists only, nothing executable;
- `state-rankRRRRR.json`: the step, the data position, every random generator's state (Python,
  NumPy, torch CPU and CUDA, as base64 of their bytes) and the world size;
- `COMPLETE`: written last.

Atomic: every rank writes into `checkpoints/.partial-step_XXXXXXXX/`, the ranks meet at a
barrier, then rank 0 writes `COMPLETE`, renames the folder into place (one `os.replace`), and
points `checkpoints/latest` at it (a file rewritten with `os.replace`). A run killed at any
moment leaves either the previous checkpoint or the new one, never half of one; a leftover
partial folder is removed by the next write. Ranks are assumed to share the run folder (one
machine, or a shared filesystem). A checkpoint is resumed with the world size it was written
with (the centres are sharded by it); another world size is an error naming both.

Exact resume: the model, the centres, the optimizer moments and step counts are stored bit for
bit; the schedule is a pure function of the step; the data order and region sampling are
functions of (seed, epoch, position), the negative sampling of (seed, step); the generators are
restored anyway, so a run killed and resumed reaches bitwise the weights of an uninterrupted run
(tested on a tiny model).
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rice_vit.errors import CheckpointError
from rice_vit.rng_state import capture_rng_state

CHECKPOINTS = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
MODEL_FILE = "model.safetensors"


def step_folder_name(step: int) -> str:
    """`step_00000100` for step 100."""
    return f"step_{step:08d}"


def _rank_file(prefix: str, rank: int, suffix: str) -> str:
    return f"{prefix}-rank{rank:05d}{suffix}"


# ----------------------------------------------------------------------------- writing


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}


def _write_text_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    centres_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    keep: int = 2,
) -> Path:
    """Write step `step`'s checkpoint (every rank calls this; see the module docstring).
    `state` is JSON values (step, data position...), the random states are added here. Keeps the
    `keep` newest checkpoints. Returns the checkpoint's folder."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_folder_name(step)
    partial = root / f".partial-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
    _barrier()
    if rank == 0:
        save_file(_cpu(model_state), partial / MODEL_FILE, metadata={"format": "pt"})
    save_file(_cpu(centres_state), partial / _rank_file("centres", rank, ".safetensors"))
    torch.save(optimizer.state_dict(), partial / _rank_file("optimizer", rank, ".pt"))
    record = {**state, "step": step, "world_size": world_size, "rng": capture_rng_state()}
    (partial / _rank_file("state", rank, ".json")).write_text(json.dumps(record), "utf-8")
    _barrier()
    if rank == 0:
        (partial / COMPLETE).write_text(f"{world_size}\n", "utf-8")
        if final.exists():  # the same step written again (a resumed run's final checkpoint)
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_text_atomically(root / LATEST, final.name + "\n")
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old)
    _barrier()
    return final


# ----------------------------------------------------------------------------- reading


@dataclass
class LoadedCheckpoint:
    """One rank's view of a checkpoint."""

    folder: Path
    step: int
    model_state: dict[str, torch.Tensor]
    centres_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    state: dict[str, Any]
    """What `write_checkpoint` got as `state`, plus `step`, `world_size` and `rng`."""


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text("utf-8").strip()
    if not (folder / COMPLETE).is_file():
        raise CheckpointError(f"{pointer} names {folder}, which is not a complete checkpoint")
    return folder


def read_checkpoint(
    folder: str | Path, *, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Read rank `rank`'s part of a complete checkpoint folder; the world size must be the one
    it was written with."""
    folder = Path(folder)
    if not (folder / COMPLETE).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {COMPLETE} file)")
    written = int((folder / COMPLETE).read_text("utf-8").strip())
    if written != world_size:
        raise CheckpointError(
            f"{folder} was written by {written} ranks and is resumed by {world_size}; the class "
            "centres are sharded by rank, so resume with the same number of processes"
        )
    state = json.loads((folder / _rank_file("state", rank, ".json")).read_text("utf-8"))
    optimizer_state = torch.load(
        folder / _rank_file("optimizer", rank, ".pt"), map_location=device, weights_only=True
    )
    return LoadedCheckpoint(
        folder=folder,
        step=int(state["step"]),
        model_state=load_file(folder / MODEL_FILE, device=str(device)),
        centres_state=load_file(
            folder / _rank_file("centres", rank, ".safetensors"), device=str(device)
        ),
        optimizer_state=optimizer_state,
        state=state,
    )


def read_model_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's parameters of a checkpoint folder (for export)."""
    folder = Path(folder)
    if not (folder / COMPLETE).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {COMPLETE} file)")
    return load_file(folder / MODEL_FILE)
