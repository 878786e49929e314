"""Training checkpoints: torch.distributed.checkpoint for tensors, JSON for the rest, atomic.

Layout of one checkpoint (the folder is self-contained: it can be copied elsewhere, resumed from
or exported alone):

    <checkpoint.dir>/step_00000040/
        model_optim/          DCP: .metadata + __<rank>_0.distcp; every model parameter (frozen
                              ones included) under `model.<name>`, AdamW moments and step counts
                              under `optimizer.<name>.{exp_avg,exp_avg_sq,step}`
        trainer_state.json    format, step, world size, LR-scheduler state, the optimizer's
                              parameter groups (lr, betas, ..., parameter names); written last
        rank_00000.json       per rank: RNG states and the data source's state
        recipe.toml           the recipe of the run
        config.json           the model's HF config
        processor/            tokenizer, chat template, preprocessor config (when the run has one)

Tensors go through DCP (`dcp.save`/`dcp.load`, with `get_state_dict`/`set_state_dict` so that
sharded FSDP2/DTensor models save and load the same way later; in one process it runs with
`no_dist`). Everything else is JSON, never pickled: DCP would pickle non-tensor values and load
them with `weights_only=False`. DCP's own `.metadata` file is a pickle of its index classes; we
read it with an unpickler that admits only those classes, torch dtypes/sizes and paths, so a
checkpoint cannot run code when loaded.

Atomicity: a checkpoint is written into `.tmp-step_XXXXXXXX/` and renamed to `step_XXXXXXXX/`
once every file is on disk (DCP syncs its files; our JSON files and the folder are fsynced). A
kill at any point leaves either the complete new folder or a temporary one, which readers ignore
and the next save deletes. Old checkpoints beyond `keep_last` are renamed to `.trash-...` before
being deleted, so a kill while deleting never leaves a half-deleted folder under a step name.
"""

import contextlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ov_model.config import LlavaOVConfig
from ov_train.config import Recipe
from ov_train.config_io import save_recipe
from ov_train.errors import CheckpointError
from ov_train.parallel import World, is_main

FORMAT = 1
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
TENSORS_DIR = "model_optim"
TRAINER_STATE = "trainer_state.json"
RECIPE_FILE = "recipe.toml"
MODEL_CONFIG = "config.json"
PROCESSOR_DIR = "processor"
_STEP_NAME = re.compile(rf"^{STEP_PREFIX}(\d{{8,}})$")

BeforeCommit = Callable[[Path, int], None]
"""Called with the temporary folder and the step once everything is written, before the rename
(tests use it to stop a process in the middle of a save)."""


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` optimizer steps."""
    return f"{STEP_PREFIX}{step:08d}"


def rank_file(rank: int) -> str:
    """The per-rank JSON file name."""
    return f"rank_{rank:05d}.json"


def list_checkpoints(root: str | Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first (temporary folders ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_NAME.match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint, a folder of checkpoints or a run folder (latest)."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise CheckpointError(
        f"{path}: no complete checkpoint here (expected {STEP_PREFIX}<step>/{TRAINER_STATE} in "
        "it, in it directly or under checkpoints/)"
    )


# ------------------------------------------------------------------------------------ saving
def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_state: dict[str, Any],
    rng_state: dict[str, Any],
    recipe: Recipe,
    model_config: LlavaOVConfig,
    processor_dir: Path | None,
    world: World,
    keep_last: int,
    before_commit: BeforeCommit | None = None,
) -> Path:
    """Write the checkpoint after `step` atomically, prune to `keep_last`; returns its folder."""
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if is_main(world):
        if final.exists():
            raise CheckpointError(f"{final}: a checkpoint of step {step} already exists")
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        (tmp / TENSORS_DIR).mkdir(parents=True)
    world.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _single_process_quiet(world):
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state["state"]},
            storage_writer=FileSystemWriter(tmp / TENSORS_DIR),
            no_dist=world.size == 1,
        )
    _write_json(tmp / rank_file(world.rank), {"rng": rng_state, "data": data_state})
    if is_main(world):
        save_recipe(recipe, tmp / RECIPE_FILE)
        model_config.save(tmp / MODEL_CONFIG)
        if processor_dir is not None:
            shutil.copytree(processor_dir, tmp / PROCESSOR_DIR)
        _write_json(
            tmp / TRAINER_STATE,
            {
                "format": FORMAT,
                "step": step,
                "world_size": world.size,
                "scheduler": scheduler.state_dict(),
                "optimizer_param_groups": optimizer_state["param_groups"],
            },
        )
        _fsync_tree(tmp)
    if before_commit is not None:
        before_commit(tmp, step)
    world.barrier()
    if is_main(world):
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep_last]:
            trash = root / f"{TRASH_PREFIX}{old.name}"
            os.rename(old, trash)
            shutil.rmtree(trash)
    world.barrier()
    return final


def _remove_leftovers(root: Path) -> None:
    for child in root.iterdir():
        if child.name.startswith((TMP_PREFIX, TRASH_PREFIX)) and child.is_dir():
            shutil.rmtree(child)


def _write_json(path: Path, data: Any) -> None:
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path.name}: state is not plain JSON ({error}); data sources must return dicts of "
            "str/int/float/bool/None/lists from state_dict()"
        ) from None
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: Path) -> None:
    for folder, _, files in os.walk(path):
        for name in files:
            with open(Path(folder) / name, "rb") as file:
                os.fsync(file.fileno())
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def _single_process_quiet(world: World) -> Iterator[None]:
    """DCP warns on every call without a process group; one process is intended here."""
    with warnings.catch_warnings():
        if world.size == 1:
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled", category=UserWarning
            )
        yield


# ------------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class ResumeState:
    """What a checkpoint restores besides the model, optimizer and scheduler."""

    step: int
    data_state: dict[str, Any]
    rng_state: dict[str, Any]


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, format-checked."""
    file = Path(path) / TRAINER_STATE
    state = _read_json(file)
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: format {state.get('format')!r}, this version reads {FORMAT}"
        )
    return state


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from None


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: World,
) -> ResumeState:
    """Load model, optimizer and scheduler in place; return the step, data and RNG states."""
    path = Path(path)
    trainer_state = read_trainer_state(path)
    if trainer_state["world_size"] != world.size:
        raise CheckpointError(
            f"{path}: saved by {trainer_state['world_size']} processes, resuming with "
            f"{world.size}; resharding the data state is not supported"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    groups = trainer_state["optimizer_param_groups"]
    _check_groups(path, groups, optimizer_state["param_groups"])
    tensors = {"model": model_state, "optimizer": optimizer_state["state"]}
    _dcp_load(path, tensors, world)
    for group in groups:
        group["betas"] = tuple(group["betas"])
    set_state_dict(
        model,
        optimizer,
        model_state_dict=tensors["model"],
        optim_state_dict={"state": tensors["optimizer"], "param_groups": groups},
    )
    scheduler.load_state_dict(trainer_state["scheduler"])
    per_rank = _read_json(path / rank_file(world.rank))
    return ResumeState(trainer_state["step"], per_rank["data"], per_rank["rng"])


def _check_groups(path: Path, saved: list[dict], current: list[dict]) -> None:
    def describe(groups: list[dict]) -> list[tuple[str, int]]:
        return [(g.get("name", "?"), len(g["params"])) for g in groups]

    if [g["params"] for g in saved] != [g["params"] for g in current]:
        raise CheckpointError(
            f"{path}: its optimizer groups {describe(saved)} are not this run's "
            f"{describe(current)}; did model.trainable change? Start a new run from an export "
            "instead of resuming"
        )


def load_model_state(path: str | Path, model: nn.Module) -> None:
    """Load only the model's parameters from a checkpoint into `model` (for export)."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    tensors = {"model": state}
    _dcp_load(Path(path), tensors, None)
    model.load_state_dict(tensors["model"], strict=True)


def _dcp_load(path: Path, tensors: dict[str, Any], world: World | None) -> None:
    single = world is None or world.size == 1
    folder = path / TENSORS_DIR
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no .metadata; not a complete checkpoint")
    SafeFileSystemReader(folder).read_metadata()  # our own error first, never DCP's wrapped one
    try:
        with _single_process_quiet(world or _ONE):
            dcp.load(tensors, storage_reader=SafeFileSystemReader(folder), no_dist=single)
    except (CheckpointException, RuntimeError) as error:
        raise CheckpointError(f"{folder}: cannot be loaded: {error}") from None


class _One:
    rank = 0
    size = 1


_ONE: Any = _One()


# ------------------------------------------------------------------------- safe DCP metadata
_ALLOWED = {("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}
_PATH_CLASSES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's index classes, torch sizes/dtypes/layouts and paths; nothing else."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        found = None
        if module.startswith("torch.distributed.checkpoint."):
            found = super().find_class(module, name)
            if not isinstance(found, type):
                found = None
        elif module == "torch" and name == "Size":
            found = torch.Size
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        elif (module, name) in _ALLOWED or (module == "pathlib" and name in _PATH_CLASSES):
            found = super().find_class(module, name)
        if found is None:
            raise CheckpointError(
                f"{self.source}: refuses to load {module}.{name}, which is not a type of "
                "checkpoint metadata"
            )
        return found


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the `.metadata` pickle read by an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = _MetadataUnpickler(stream, str(path)).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
