"""The model a run starts from, built so that no rank ever holds the whole fp32 model.

With `model.path` (an HF-layout folder: the Stage-0 merge of `ov-model init`, or a previous
stage's export), torchtitan's order:

1. build `LlavaOV(config)` on the meta device: shapes only, no memory, no random init;
2. freeze what the recipe freezes, then `parallelize` (FSDP2 shards meta parameters into meta
   DTensors; in one process it is the identity);
3. `to_empty(device)`: each rank allocates only its own shards, uninitialised;
4. fill them tensor by tensor from the safetensors files: a parameter sharded on dim 0 (FSDP2's
   `Shard(0)`, possibly under HSDP's `Replicate()`) reads just its rows with
   `safe_open(...).get_slice`, so a rank reads 1/N of each tensor; any other placement reads the
   whole tensor and keeps its piece (`distribute_tensor(..., src_data_rank=None)`, no
   communication). Host memory at any time: one stored tensor, or a shard of it.

Names go through ov_model's HF adapter (`state_dict_adapter.from_hf`, both HF layouts), and
every missing, unexpected and mis-shaped tensor is listed in one error, as
`LlavaOV.from_pretrained` does. The weights equal `LlavaOV.from_pretrained(path, dtype=fp32)`'s
bitwise (the stored values cast to fp32), whatever the number of ranks.

Under pipeline parallelism (`build_training_pipeline`) the same route builds this rank's stages
(`distributed.pipeline`): each stage's module is parallelized, allocated and filled with only
its own tensors, so a pipeline rank reads just its stages' share of the files.

Without a path, the preset is drawn at random from the current torch seed, in full on the CPU
of every rank, exactly as `LlavaOV(PRESETS[preset])` in one process (bitwise the weights of the
single-process trainer, identical on every rank), then moved and sharded. This is for tests
and small experiments: a large run starts from a folder. A model handed in by the caller takes
the same route as a preset.
"""

from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from ov_model.checkpoint import check_state_matches
from ov_model.config import LlavaOVConfig
from ov_model.errors import CheckpointError
from ov_model.model import LlavaOV
from ov_model.state_dict_adapter import from_hf, hf_name
from ov_train.config import Recipe
from ov_train.distributed.pipeline import Pipeline, build_pipeline
from ov_train.lora import (
    apply_lora,
    base_name,
    check_lora_supported,
    init_adapters,
    is_adapter,
    lora_of,
)
from ov_train.model_folder import check_model_folder
from ov_train.optim import freeze
from ov_train.parallel import World, parallelize
from rice_vit.safetensors_folder import open_safetensors, weight_files

CONFIG_FILE = "config.json"


def build_training_model(
    recipe: Recipe, world: World, *, model: LlavaOV | None = None
) -> tuple[nn.Module, LlavaOVConfig]:
    """The run's model on `world.device`, frozen as the recipe says and parallelized, in train
    mode, with its config (see the module docstring). `model` replaces what `recipe.model`
    would build."""
    check_lora_supported(recipe, world.size)
    model, folder = _starting_model(recipe, world, model)
    model_config = model.config
    wrapped = _prepare(model, recipe, world)
    if folder is not None:
        wrapped.to_empty(device=world.device)
        load_hf_weights(wrapped, folder)
    if lora_of(recipe) is not None:
        init_adapters(wrapped, recipe.train.seed)
    return wrapped.train(), model_config


def build_training_pipeline(
    recipe: Recipe, world: World, *, model: LlavaOV | None = None
) -> tuple[Pipeline, LlavaOVConfig]:
    """`build_training_model` for pipeline parallelism (`parallel.pp > 1`): this rank's stages
    (`distributed.pipeline`), built on the meta device and filled with only their tensors from
    `model.path`'s files (or moved from the preset or `model`), in train mode, with the
    model's config."""
    check_lora_supported(recipe, world.size)
    model, folder = _starting_model(recipe, world, model)
    model_config = model.config
    pipeline = _prepare_pipeline(model, recipe, world)
    if folder is not None:
        for stage in pipeline.stage_modules:  # each FSDP2 root resets its own shards
            stage.to_empty(device=world.device)
        load_hf_weights(pipeline.model, folder, part=True)
    for stage in pipeline.stage_modules:
        stage.train()
    pipeline.model.train()
    return pipeline, model_config


def _starting_model(
    recipe: Recipe, world: World, model: LlavaOV | None
) -> tuple[LlavaOV, Path | None]:
    """The model to freeze and parallelize, and the folder its weights are still to be read
    from: `model.path`'s config built on the meta device (with that folder), else `model` or
    the preset drawn at random, moved to `world.device` (with None)."""
    config = recipe.model
    if model is None and config.path is not None:
        folder = check_model_folder(config.path, tokenizer=False)
        model_config = LlavaOVConfig.from_file(folder / CONFIG_FILE)
        with torch.device("meta"):
            return LlavaOV(model_config), folder
    if model is None:
        from ov_model.config import PRESETS

        model = LlavaOV(PRESETS[config.preset])
    model.to(world.device)
    return model, None


def _prepare_pipeline(model: LlavaOV, recipe: Recipe, world: World) -> Pipeline:
    _set_up(model, recipe)
    return build_pipeline(model, recipe, world)


def _prepare(model: LlavaOV, recipe: Recipe, world: World) -> nn.Module:
    _set_up(model, recipe)
    return parallelize(model, recipe, world)


def _set_up(model: LlavaOV, recipe: Recipe) -> None:
    """The recipe's attention backend, freezing and LoRA adapters, before any wrapper."""
    if recipe.model.attention_backend is not None:
        model.set_attention_backend(recipe.model.attention_backend)
    freeze(model, recipe.model.trainable)
    lora = lora_of(recipe)
    if lora is not None:
        apply_lora(model, lora)


@torch.no_grad()
def load_hf_weights(model: nn.Module, folder: str | Path, *, part: bool = False) -> None:
    """Fill `model`'s parameters and buffers (plain or DTensor shards, already allocated) from
    the HF checkpoint in `folder`, one tensor at a time; CheckpointError listing every
    mismatch. `part`: `model` holds only some of the model's modules (a pipeline rank's stages,
    under their full names): the stored tensors of the other modules are expected, not
    unexpected (what is missing or mis-shaped is still an error)."""
    folder = Path(folder)
    files = weight_files(folder)
    stored, unknown = from_hf({name: name for name in files})  # module name -> stored name
    # a LoRA model's base weights under their plain names; its adapters are not in the files
    targets = {
        base_name(name): tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not is_adapter(name)
    }
    if part:
        stored = {name: stored_name for name, stored_name in stored.items() if name in targets}
    _check_names_and_shapes(folder, targets, stored, unknown, files)
    handles: dict[Path, object] = {}
    try:
        for name, target in targets.items():
            file = files[stored[name]]
            if file not in handles:
                handles[file] = open_safetensors(file).__enter__()
            _fill(target, handles[file], stored[name])
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)


def _check_names_and_shapes(folder, targets, stored, unknown, files) -> None:
    missing = [name for name in targets if name not in stored]
    if "lm_head.weight" in missing:
        raise CheckpointError(
            f"{folder}: lm_head.weight is missing and text_config.tie_word_embeddings is false; "
            "refusing to initialise the output head at random"
        )
    unexpected = unknown + [hf_name(n) for n in stored if n not in targets]
    mis_shaped = []
    opened: dict[Path, object] = {}
    try:
        for name, target in targets.items():
            if name not in stored:
                continue
            file = files[stored[name]]
            if file not in opened:
                opened[file] = open_safetensors(file).__enter__()
            shape = tuple(opened[file].get_slice(stored[name]).get_shape())
            if shape != tuple(target.shape):
                mis_shaped.append(
                    f"{hf_name(name)}: stored {shape}, config needs {tuple(target.shape)}"
                )
    finally:
        for handle in opened.values():
            handle.__exit__(None, None, None)
    check_state_matches(folder, missing, unexpected, mis_shaped)


def _fill(target: torch.Tensor, handle, name: str) -> None:
    """Copy stored tensor `name` (or this rank's piece of it) into `target`."""
    if not isinstance(target, DTensor):
        target.copy_(handle.get_tensor(name))
        return
    local = target.to_local()
    rows = _dim0_rows(target)
    if rows is not None and rows[1] - rows[0] == local.shape[0]:
        if local.numel():
            local.copy_(handle.get_slice(name)[rows[0] : rows[1]])
        return
    whole = handle.get_tensor(name).to(local.dtype)
    mine = distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None)
    local.copy_(mine.to_local())


def _dim0_rows(target: DTensor) -> tuple[int, int] | None:
    """(start, stop) of this rank's rows when `target` is sharded on dim 0 along one mesh dim
    (and replicated along the others), torch.chunk's split as FSDP2 and DTensor use; None for
    any other placement."""
    if not all(type(p) in (Shard, Replicate) for p in target.placements):
        return None  # _StridedShard, Partial, ...
    shard_dims = [i for i, p in enumerate(target.placements) if type(p) is Shard]
    if len(shard_dims) != 1 or target.placements[shard_dims[0]] != Shard(0):
        return None
    mesh_dim = shard_dims[0]
    parts = target.device_mesh.size(mesh_dim)
    index = target.device_mesh.get_local_rank(mesh_dim)
    length = target.shape[0]
    chunk = -(-length // parts)
    start = min(index * chunk, length)
    return start, min(start + chunk, length)
