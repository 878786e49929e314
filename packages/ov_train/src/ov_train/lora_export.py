"""Export of a LoRA checkpoint: merged into an HF-layout model, or as a PEFT adapter folder.

A LoRA checkpoint holds only the trainable state (adapters and fully trained groups); the
frozen base is the run's `model.path` (or its seeded preset). Both exports rebuild the training
model exactly as the trainer did (`model_loading.build_training_model` on the CPU: the base read
from `model.path` and stored in `train.lora.base_dtype`, the adapters injected), then load the
checkpoint's trainable tensors into it.

- `export_lora_merged` (`ov-train export`'s default): each adapted layer's weight becomes
  `W + (alpha / rank) B A` (peft's `get_delta_weight`), computed in fp32 from the base as
  training stored it (a bf16 base is merged from its bf16 values), every other tensor as
  trained; written with `LlavaOV.save_pretrained` (ov_model / ov-eval load it unchanged) in
  the asked dtype, with the run's processor files. The merged model computes what the adapter
  model computed (tested: the same logits within float rounding).
- `export_lora_adapter` (`--format peft`): `adapter_config.json` (peft's `LoraConfig` with the
  adapted layers' full names as `target_modules`, the fully trained groups as
  `modules_to_save`, `base_model_name_or_path` = `model.path`) and `adapter_model.safetensors`
  with peft's key names (`base_model.model.<layer>.lora_A.weight`, fully trained groups'
  tensors under `base_model.model.<name>`): `peft.PeftModel.from_pretrained(LlavaOV base,
  folder)` rebuilds the adapter model (tested).

Trade-off: unlike the streaming full-model export (`export.py`), these hold the model once in
host memory (its frozen base in `base_dtype`): the adapters must meet their base weights, and a
LoRA run's base is in `model.path`, not in the checkpoint.
"""

from pathlib import Path

import torch
from torch import nn

from ov_model.config import LlavaOVConfig
from ov_model.model import LlavaOV
from ov_train.checkpointing import (
    MODEL_CONFIG,
    RECIPE_FILE,
    copy_processor_files,
    load_model_state,
)
from ov_train.config import Recipe
from ov_train.config_io import load_recipe
from ov_train.errors import CheckpointError
from ov_train.lora import ADAPTER_NAME, is_adapter, lora_of, peft_config
from ov_train.optim import module_roots
from ov_train.parallel import SingleProcess
from rice_vit.safetensors_folder import save_safetensors_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def checkpoint_recipe(source: Path) -> Recipe:
    """The recipe stored in checkpoint folder `source`."""
    return load_recipe(source / RECIPE_FILE)


def adapter_model(source: Path, recipe: Recipe) -> nn.Module:
    """The training model of LoRA checkpoint `source` on the CPU: the base rebuilt as the run
    built it, adapters and fully trained groups loaded from the checkpoint; eval mode."""
    from ov_train.model_loading import build_training_model
    from ov_train.rng import seed_everything

    if recipe.model.path is not None and not Path(recipe.model.path).is_dir():
        raise CheckpointError(
            f"{source}: a LoRA checkpoint holds only the adapters; its base model.path "
            f"{recipe.model.path} is not a folder here"
        )
    seed_everything(recipe.train.seed)  # the trainer's order: a preset base is drawn from it
    model, _ = build_training_model(recipe, SingleProcess())
    load_model_state(source, model)
    return model.eval()


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state (no adapters) of LoRA `model`, fp32: adapted weights merged."""
    from peft.tuners.lora import Linear as LoraLinear

    merged: dict[str, torch.Tensor] = {}
    adapted = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            adapted[f"{name}.base_layer.weight"] = module
    for name, tensor in model.state_dict().items():
        if is_adapter(name):
            continue
        value = tensor.detach().float()
        if name in adapted:
            delta = adapted[name].get_delta_weight(ADAPTER_NAME).detach().float()
            value = value + delta
        merged[name.replace(".base_layer.", ".")] = value
    return merged


def export_lora_merged(
    source: Path, out: Path, *, dtype: torch.dtype, max_shard_size: int | str
) -> Path:
    """Write LoRA checkpoint `source` merged into the HF layout in `out` (see the module
    docstring); returns `out`."""
    recipe = checkpoint_recipe(source)
    state = merged_state(adapter_model(source, recipe))
    config = LlavaOVConfig.from_file(source / MODEL_CONFIG)
    with torch.device("meta"):
        plain = LlavaOV(config)
    plain.load_state_dict({n: t.to(dtype) for n, t in state.items()}, strict=True, assign=True)
    plain.save_pretrained(out, max_shard_size=max_shard_size)
    copy_processor_files(source, out)
    return out


def export_lora_adapter(source: Path, out: Path) -> Path:
    """Write LoRA checkpoint `source` as a PEFT adapter folder in `out` (see the module
    docstring); returns `out`."""
    recipe = checkpoint_recipe(source)
    lora = lora_of(recipe)
    model = adapter_model(source, recipe)
    layers = [
        name.removesuffix(".lora_A")
        for name, module in model.named_modules()
        if name.endswith(".lora_A") and isinstance(module, nn.ModuleDict)
    ]
    roots = module_roots(model)
    full_groups = [g for g in recipe.model.trainable if g not in lora.modules]
    modules_to_save = [prefix for group in full_groups for prefix, _ in roots[group]]
    tensors = {}
    for name, parameter in model.named_parameters():
        if is_adapter(name):
            tensors[PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", ".")] = parameter
        elif parameter.requires_grad:
            tensors[PEFT_PREFIX + name] = parameter
    config = peft_config(
        lora,
        layers,
        modules_to_save=modules_to_save or None,
        base_model_name_or_path=recipe.model.path,
    )
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    plain = {name: t.detach().contiguous() for name, t in sorted(tensors.items())}
    save_safetensors_file(plain, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    copy_processor_files(source, out)
    return out
