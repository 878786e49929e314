"""LoRA fine-tuning: low-rank adapters (peft) on some module groups instead of full training.

`train.lora` (`config.LoraConfig`) names module groups (vision, projector, llm, as
`optim.module_roots` maps them) whose Linear layers matching `targets` get an adapter: the layer
computes `W x + (alpha / rank) * B A dropout(x)` with A (rank x in) and B (out x rank) trained
and W frozen. Every other parameter of an adapted group is frozen too; trainable groups not in
`lora.modules` (typically the projector) train fully as before.

Built on peft's `inject_adapter_in_model`, which works on any `nn.Module` (LlavaOV is not a
transformers model): it replaces each targeted `nn.Linear` by a `peft.tuners.lora.Linear` that
keeps the original as `base_layer`, so parameter names gain a level
(`...q_proj.weight` -> `...q_proj.base_layer.weight`, adapters `...q_proj.lora_A.default.weight`).
We resolve the targets to full layer names ourselves (peft's suffix rule: a name matches a
pattern when it equals it or ends with `.` + pattern) inside the adapted groups only, so a
pattern cannot reach into another group, and a pattern that matches nothing is an error.

- Base weights: with `base_dtype = "bf16"` every frozen parameter of the adapted groups is
  stored in bf16 (half the memory of the frozen base; the adapters and fully trained groups stay
  fp32, and so do AdamW's states). Such a group then computes in bf16 as a bf16 model does,
  also under the fp32 policy on the CPU (the adapters' branch is computed in fp32 by peft and
  added); the loss is taken in fp32 by ov_model.
- Adapter initialisation: peft's (A Kaiming-uniform with a = sqrt(5), B zero, so the adapted
  model starts as the base), but drawn from a generator seeded with `train.seed` per layer in
  name order, in full on the CPU, so it does not depend on the device, on the meta-device build
  of `model.path` runs, or on what else drew from the global generator.
- Parallelism: one process or data parallel (FSDP2, HSDP), with any activation checkpointing.
  The adapters are injected before any wrapper, so an FSDP2 unit (a ViT block, a decoder layer)
  holds frozen base weights and trainable adapters together: FSDP2 all-gathers both and
  reduce-scatters only the adapters' gradients (`distributed.fsdp` lets adapters, and only
  them, sit beside frozen weights in a unit). Tested on 2 gloo processes against one, fp32 and
  bf16 base. Tensor, context and pipeline parallelism are refused: their layer plans name the
  plain Linear layers peft wraps.
- Checkpoints hold the trainable state only (`checkpointing.py`); the frozen base is read from
  `model.path` again on resume and export (`lora_export.py`).

peft is an optional dependency (`ov-train[lora]`): this module imports it only when a recipe
asks for LoRA, and a missing peft is a one-line error saying what to install.
"""

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ov_train.config import LoraConfig, Recipe
from ov_train.errors import RecipeError
from ov_train.optim import module_roots

ADAPTER_NAME = "default"
"""peft's adapter name (one adapter per model here)."""
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_ADAPTER_MARKERS = (".lora_A.", ".lora_B.")
_BASE_LAYER = ".base_layer."
OUTPUT_HEAD = "lm_head"
"""Not adaptable: ov_model multiplies by `lm_head.weight` directly, never calling its forward."""


def lora_of(recipe: Recipe) -> LoraConfig | None:
    """The recipe's `train.lora`, or None (full fine-tuning)."""
    return getattr(recipe.train, "lora", None)


def import_peft() -> Any:
    """The peft module; RecipeError saying to install `ov-train[lora]` when it is missing."""
    try:
        import peft
    except ImportError:
        raise RecipeError(
            "train.lora needs peft, which is not installed: install ov-train[lora] "
            "(pip install 'ov-train[lora]', or uv sync --extra lora in this repository)"
        ) from None
    return peft


def is_adapter(name: str) -> bool:
    """Whether parameter `name` is a LoRA adapter matrix (A or B)."""
    return any(marker in name for marker in _ADAPTER_MARKERS)


def base_name(name: str) -> str:
    """The name `name` has in the model without adapters (`q_proj.base_layer.weight` ->
    `q_proj.weight`); other names unchanged."""
    return name.replace(_BASE_LAYER, ".")


def has_adapters(model: nn.Module) -> bool:
    """Whether `model` carries LoRA adapters."""
    return any(is_adapter(name) for name, _ in model.named_parameters())


def check_lora_supported(recipe: Recipe, world_size: int) -> None:
    """RecipeError unless a LoRA run of `recipe` is supported (see the module docstring: data
    parallelism on any `world_size`, no tensor, context or pipeline parallelism), and when a
    LoRA group is not trainable."""
    lora = lora_of(recipe)
    if lora is None:
        return
    frozen = [m for m in lora.modules if m not in recipe.model.trainable]
    if frozen:
        raise RecipeError(
            f"train.lora.modules names {frozen}, which model.trainable "
            f"{list(recipe.model.trainable)} freezes; add them to model.trainable or drop them "
            "from train.lora.modules"
        )
    parallel = recipe.parallel
    for name in ("tp", "cp", "pp"):
        if getattr(parallel, name) > 1:
            raise RecipeError(
                f"train.lora with parallel.{name} = {getattr(parallel, name)} is not supported "
                f"(LoRA runs in one process or data parallel); set parallel.{name} = 1"
            )


def adapted_layers(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Full names of the Linear layers that get adapters: inside the groups of `lora.modules`,
    matching a pattern of `lora.targets` (peft's suffix rule), in model order. RecipeError
    naming a pattern that matches no layer there."""
    roots = module_roots(model)
    found: list[str] = []
    used = dict.fromkeys(lora.targets, False)
    suffixes: set[str] = set()
    for group in lora.modules:
        for prefix, root in roots[group]:
            for name, module in root.named_modules():
                if not isinstance(module, nn.Linear):
                    continue
                full = ".".join(part for part in (prefix, name) if part)
                suffixes.add(full.rsplit(".", 1)[-1])
                matched = [p for p in lora.targets if full == p or full.endswith("." + p)]
                for pattern in matched:
                    used[pattern] = True
                if matched:
                    found.append(full)
    if OUTPUT_HEAD in found:
        raise RecipeError(
            "train.lora.targets matches lm_head, the output head: ov_model applies it through its "
            "weight (the chunked loss and logits), not its forward, so an adapter there would "
            "never train; drop the pattern (the head then stays frozen with the llm group)"
        )
    unused = [pattern for pattern, hit in used.items() if not hit]
    if unused:
        raise RecipeError(
            f"train.lora.targets: {unused[0]!r} matches no Linear layer of train.lora.modules "
            f"{list(lora.modules)} (their Linear layers end in {', '.join(sorted(suffixes))})"
        )
    return found


def apply_lora(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Inject `lora`'s adapters into `model` in place (any device, meta included), freeze the
    base of the adapted groups and store it in `lora.base_dtype`; returns the adapted layers.
    Call after `optim.freeze` (it keeps the other trainable groups trainable)."""
    peft = import_peft()
    layers = adapted_layers(model, lora)
    trainable_before = {id(p) for p in model.parameters() if p.requires_grad}
    config = peft_config(lora, layers)
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    adapted_groups = _group_parameters(model, lora.modules)
    base_dtype = BASE_DTYPES[lora.base_dtype]
    for name, parameter in model.named_parameters():
        if is_adapter(name):
            parameter.requires_grad_(True)
        elif id(parameter) in adapted_groups:
            parameter.requires_grad_(False)
            if parameter.dtype != base_dtype and parameter.is_floating_point():
                parameter.data = parameter.data.to(base_dtype)
        else:  # peft froze everything else: other groups keep what optim.freeze decided
            parameter.requires_grad_(id(parameter) in trainable_before)
    if base_dtype != torch.float32:
        roots = module_roots(model)
        for group in set(lora.modules) & {"vision", "projector"}:
            for _, root in roots[group]:
                root.register_forward_hook(_output_to_fp32)
    return layers


def _output_to_fp32(module: nn.Module, inputs: Any, output: Any) -> Any:
    """A bf16-stored group hands fp32 features on, as the fp32 modules after it expect (the
    LLM casts what it receives to its embeddings' dtype itself)."""
    if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
        return output.float()
    return output


def peft_config(lora: LoraConfig, layers: Iterable[str], **extra: Any) -> Any:
    """The `peft.LoraConfig` of `lora` with `layers` (full names) as its target modules."""
    peft = import_peft()
    return peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(layers),
        bias="none",
        **extra,
    )


def _group_parameters(model: nn.Module, groups: Iterable[str]) -> set[int]:
    roots = module_roots(model)
    return {id(p) for group in groups for _, root in roots[group] for p in root.parameters()}


@torch.no_grad()
def init_adapters(model: nn.Module, seed: int) -> None:
    """Set every adapter as peft initialises it (A Kaiming-uniform, a = sqrt(5); B zero), drawn
    in full on the CPU from a generator seeded with `seed`, layer by layer in name order."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in sorted(model.named_parameters()):
        if ".lora_A." in name:
            value = torch.empty(parameter.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=generator)
        elif ".lora_B." in name:
            value = torch.zeros(parameter.shape, dtype=torch.float32)
        else:
            continue
        value = value.to(parameter.device, parameter.dtype)
        if isinstance(parameter, DTensor):  # FSDP2: this rank's shard of the whole value
            value = distribute_tensor(
                value, parameter.device_mesh, parameter.placements, src_data_rank=None
            )
        parameter.copy_(value)


def adapter_scale(lora: LoraConfig) -> float:
    """The factor of the adapters' product: alpha / rank (peft's scaling without rsLoRA)."""
    return lora.alpha / lora.rank


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts and bytes: total, trainable, adapters, frozen bytes."""
    total = trainable = adapters = frozen_bytes = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen_bytes += parameter.numel() * parameter.element_size()
        if is_adapter(name):
            adapters += parameter.numel()
    return {
        "parameters": total,
        "trainable": trainable,
        "adapters": adapters,
        "frozen_bytes": frozen_bytes,
    }
