"""Training checkpoints: torch.distributed.checkpoint for tensors, JSON for the rest, atomic.

Layout of one checkpoint (the folder is self-contained: it can be copied elsewhere, resumed from
or exported alone):

    <checkpoint.dir>/step_00000040/
        model_optim/          DCP: .metadata + __<rank>_0.distcp (one file per saving rank);
                              every model parameter (frozen ones included; with train.lora
                              only the trainable ones, see lora.py) under
                              `model.<name>`, AdamW moments and step counts under
                              `optimizer.<name>.{exp_avg,exp_avg_sq,step}`, as whole (unsharded)
                              tensors in the index whatever the sharding was
        trainer_state.json    format, step, world size, LR-scheduler state, the optimizer's
                              parameter groups (lr, betas, ..., parameter names), the data
                              source's position; written last, by rank 0
        rank_00000.json       per rank: its RNG states
        recipe.toml           the recipe of the run
        config.json           the model's HF config
        processor/            tokenizer, chat template, preprocessor config (when the run has one)

Tensors go through DCP (`dcp.save`/`dcp.load`, with `get_state_dict`/`set_state_dict`, so a
sharded FSDP2/DTensor model saves each rank's shards and loads them back into whatever sharding
the loading run has; in one process it runs with `no_dist`). Everything else is JSON, never
pickled: DCP would pickle non-tensor values and load them with `weights_only=False`. DCP's own
`.metadata` file is a pickle of its index classes; we read it with an unpickler that admits only
those classes, torch dtypes/sizes and paths, so a checkpoint cannot run code when loaded.

Resuming at another world size (N ranks saved, M ranks load), the rule:
- tensors: resharded by DCP, exactly (the index holds global shapes and each shard's offsets);
  under pipeline parallelism each rank saves its stages' tensors under the full model's names
  (`distributed.pipeline_stage_module`) and trainer_state.json lists the whole model's
  optimizer groups, so a checkpoint of any pipeline loads without one, and back;
- data position: the source's state is the position of the whole world in the global
  micro-batch stream (the packed loader's order does not depend on the world size), identical on
  every rank; it is saved once, in trainer_state.json (every rank checks at save time that its
  own state is the same), and every rank of the resumed run loads it: the run continues at the
  same global micro-batch;
- RNG: with the same world size each rank restores its own states (rank_XXXXX.json); with
  another one there is no rank to take them from, so every rank reseeds from (train.seed, step,
  rank) and a warning says the run is no longer bitwise identical to an uninterrupted one (a
  training step draws no random numbers today, so the loss trace still matches).

Atomicity: a checkpoint is written into `.tmp-step_XXXXXXXX/` and renamed to `step_XXXXXXXX/`
once every file of every rank is on disk (DCP syncs its files; our JSON files and the folder are
fsynced; a barrier precedes the rename). A kill at any point leaves either the complete new
folder or a temporary one, which readers ignore and the next save deletes. Old checkpoints beyond
`keep_last` are renamed to `.trash-...` before being deleted, so a kill while deleting never
leaves a half-deleted folder under a step name. What a kill cannot cause, a disk can (a full disk,
a truncated copy, a flipped bit): every rank records the SHA-256 of the tensor files it wrote in
its rank file, and `verify_checkpoint` checks a checkpoint's JSON files, that every DCP shard
file holds the bytes its index points to and has its recorded hash; `resume_point.py` falls back
to the previous checkpoint when the latest fails it. Hashing costs one read of the checkpoint at
save (each rank its own files) and one at resume (the rank that chooses the checkpoint).
"""

import contextlib
import hashlib
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
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from ov_model.config import LlavaOVConfig
from ov_model.model import LlavaOV
from ov_train.config import Recipe
from ov_train.config_io import save_recipe
from ov_train.errors import CheckpointError
from ov_train.lora import has_adapters
from ov_train.optim import parameter_groups
from ov_train.parallel import World, is_main

FORMAT = 2
READABLE_FORMATS = (1, 2)
"""Format 1 (one process only) kept the data state in rank_00000.json."""
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


def copy_processor_files(checkpoint: Path, out: Path) -> None:
    """Copy the processor files a checkpoint carries (tokenizer, preprocessor config, chat
    template) into export folder `out`."""
    processor = checkpoint / PROCESSOR_DIR
    if processor.is_dir():
        for file in sorted(processor.iterdir()):
            if file.is_file():
                shutil.copyfile(file, out / file.name)


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
    _check_same_on_every_rank(data_state, world)
    with _nonempty_groups(optimizer):
        model_state, optimizer_state = get_state_dict(
            model, optimizer, options=_state_options(model)
        )
    param_groups = _whole_model_groups(optimizer_state["param_groups"], recipe, model_config, world)
    with single_process_quiet(world.size == 1):
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state["state"]},
            storage_writer=FileSystemWriter(tmp / TENSORS_DIR),
            no_dist=world.size == 1,
        )
    hashes = _hash_own_files(tmp / TENSORS_DIR, world.rank)
    _write_json(tmp / rank_file(world.rank), {"rng": rng_state, "sha256": hashes})
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
                "optimizer_param_groups": param_groups,
                "data": data_state,
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


def _check_same_on_every_rank(data_state: dict[str, Any], world: World) -> None:
    """The data state is saved once (rank 0's), so every rank's must be the same: a source
    whose state is per rank (not the world's position) would resume wrongly at another size."""
    if world.size == 1:
        return
    text = json.dumps(data_state, sort_keys=True, allow_nan=False, default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")
    mine = torch.tensor([digest], dtype=torch.int64, device=world.device)
    reference = world.sum(mine if world.rank == 0 else torch.zeros_like(mine))
    differing = int(world.sum((mine != reference).to(torch.int64)).item())
    if differing:
        raise CheckpointError(
            f"the data source's state differs on {differing} of {world.size} ranks; a "
            "checkpoint saves it once, so it must be the world's position in the global "
            "micro-batch stream, the same on every rank"
        )


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
def single_process_quiet(enabled: bool = True) -> Iterator[None]:
    """DCP warns on every call without a process group; one process is intended here."""
    with warnings.catch_warnings():
        if enabled:
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
    rng_state: dict[str, Any] | None
    """This rank's RNG states; None when the checkpoint was saved by another number of ranks
    (then the RNG rule of the module docstring reseeds)."""
    saved_world_size: int


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, format-checked."""
    file = Path(path) / TRAINER_STATE
    state = _read_json(file)
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else state
        raise CheckpointError(
            f"{file}: format {found!r}, this version reads {list(READABLE_FORMATS)}"
        )
    missing = [k for k in _TRAINER_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{file}: lacks {', '.join(missing)}; not a complete checkpoint")
    return state


_TRAINER_KEYS = ("step", "world_size", "scheduler", "optimizer_param_groups")


def _hash_own_files(folder: Path, rank: int) -> dict[str, str]:
    """SHA-256 of the tensor files this rank wrote (DCP names them `__RANK_N.distcp`; rank 0
    also writes `.metadata`), by file name. Each rank hashes its own, in parallel."""
    names = [f.name for f in folder.iterdir() if f.name.startswith(f"__{rank}_")]
    if rank == 0 and (folder / ".metadata").is_file():
        names.append(".metadata")
    return {name: _sha256(folder / name) for name in sorted(names)}


def _sha256(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_checkpoint(path: str | Path) -> None:
    """CheckpointError naming what is wrong unless the checkpoint's JSON files parse, every
    DCP shard file holds the bytes its index points to (a truncated or missing `.distcp` is
    caught without reading the tensors), and every tensor file has the SHA-256 its writer
    recorded at save (a flipped byte in a file of the right size; checkpoints written before
    the hashes were recorded skip this check)."""
    path = Path(path)
    state = read_trainer_state(path)
    recorded: dict[str, str] = {}
    for rank in range(int(state["world_size"])):
        rank_state = _read_json(path / rank_file(rank))
        if "rng" not in rank_state:
            raise CheckpointError(f"{path / rank_file(rank)}: no RNG state")
        recorded.update(rank_state.get("sha256", {}))
    folder = path / TENSORS_DIR
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no .metadata; not a complete checkpoint")
    try:
        metadata = SafeFileSystemReader(folder).read_metadata()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as error:
        raise CheckpointError(f"{folder / '.metadata'}: unreadable ({error})") from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        file = folder / name
        size = file.stat().st_size if file.is_file() else None
        if size is None or size < end:
            found = "missing" if size is None else f"{size} bytes"
            raise CheckpointError(f"{file}: {found}, its index needs {end} bytes (truncated?)")
    for name, expected in sorted(recorded.items()):
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (its rank recorded it at save)")
        if _sha256(file) != expected:
            raise CheckpointError(
                f"{file}: SHA-256 differs from the one recorded at save (corrupted on disk)"
            )


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
    saved_size = int(trainer_state["world_size"])
    if trainer_state["format"] == 1:  # one process; the data state in its rank file
        trainer_state["data"] = _read_json(path / rank_file(0))["data"]
    options = _state_options(model)
    with _nonempty_groups(optimizer):
        model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
        groups = trainer_state["optimizer_param_groups"]
        if world.degree("pp") > 1:
            groups = _this_rank_groups(groups, optimizer_state["param_groups"])
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
            options=options,
        )
    scheduler.load_state_dict(trainer_state["scheduler"])
    for group, rate in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        if not group["params"]:  # kept out of the optimizer's state: the schedule's rate
            group["lr"] = rate
    rng = _read_json(path / rank_file(world.rank))["rng"] if saved_size == world.size else None
    return ResumeState(trainer_state["step"], trainer_state["data"], rng, saved_size)


def _state_options(model: nn.Module) -> StateDictOptions:
    """What a checkpoint holds of `model`: every tensor, or for a LoRA model (`lora.py`) only
    the trainable parameters (adapters and fully trained groups); its frozen base is read
    from `model.path` again. DCP still fails on a trainable tensor the checkpoint lacks."""
    if has_adapters(model):
        return StateDictOptions(ignore_frozen_params=True, strict=False)
    return StateDictOptions()


def _whole_model_groups(
    groups: list[dict], recipe: Recipe, config: LlavaOVConfig, world: World
) -> list[dict]:
    """The optimizer's parameter groups with the parameter names of the whole model: under
    pipeline parallelism each rank's optimizer holds its stages' parameters only, so the
    pipeline ranks' groups are joined by name, in the model's group and parameter order (what
    one process lists, so a pipeline checkpoint resumes without a pipeline and back)."""
    if world.degree("pp") == 1:
        return groups
    gathered: list[list[dict] | None] = [None] * world.degree("pp")
    dist.all_gather_object(gathered, groups, group=world.mesh["pp"].get_group())
    with torch.device("meta"):
        whole = LlavaOV(config)
    order = {name: i for i, (name, _) in enumerate(whole.named_parameters())}
    joined = []
    for name in (group["name"] for group in parameter_groups(whole, recipe)):
        found = [g for rank_groups in gathered for g in rank_groups if g["name"] == name]
        if found:
            params = {param for group in found for param in group["params"]}
            joined.append({**found[0], "params": sorted(params, key=order.__getitem__)})
    return joined


def _this_rank_groups(saved: list[dict], current: list[dict]) -> list[dict]:
    """`saved` (the whole model's groups) restricted to the parameters this pipeline rank's
    optimizer holds, groups left empty dropped."""
    mine = {name for group in current for name in group["params"]}
    restricted = [{**group, "params": [n for n in group["params"] if n in mine]} for group in saved]
    return [group for group in restricted if group["params"]]


@contextlib.contextmanager
def _nonempty_groups(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The optimizer without its empty parameter groups for the block (a pipeline rank keeps
    the whole model's groups, some without a parameter of its stages; torch's
    `set_state_dict` accepts at most one empty group), put back in place afterwards."""
    groups = optimizer.param_groups
    empty = {index: group for index, group in enumerate(groups) if not group["params"]}
    if not empty:
        yield
        return
    optimizer.param_groups = [group for group in groups if group["params"]]
    try:
        yield
    finally:
        filled = iter(optimizer.param_groups)  # set_state_dict replaces the group dicts
        optimizer.param_groups = [
            empty[index] if index in empty else next(filled) for index in range(len(groups))
        ]


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
    """Load only the model's parameters from a checkpoint into `model` (for export); of a LoRA
    model only its trainable ones, all a LoRA checkpoint holds."""
    lora = has_adapters(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if not lora or name in trainable
    }
    tensors = {"model": state}
    _dcp_load(Path(path), tensors, None)
    model.load_state_dict(tensors["model"], strict=not lora)


def _dcp_load(path: Path, tensors: dict[str, Any], world: World | None) -> None:
    single = world is None or world.size == 1
    folder = path / TENSORS_DIR
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no .metadata; not a complete checkpoint")
    SafeFileSystemReader(folder).read_metadata()  # our own error first, never DCP's wrapped one
    try:
        with single_process_quiet(single):
            dcp.load(tensors, storage_reader=SafeFileSystemReader(folder), no_dist=single)
    except (CheckpointException, RuntimeError) as error:
        raise CheckpointError(f"{folder}: cannot be loaded: {error}") from None


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
