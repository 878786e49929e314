"""Freezing by recipe and AdamW with one parameter group per (module, weight-decay) pair.

The model is split into the recipe's three trainable units:
- `vision`: the RICE-ViT encoder (`model.vision`);
- `projector`: the patch merger (`model.projector`);
- `llm`: the Qwen decoder and its output head (`model.language_model`, `model.lm_head`).
Every parameter belongs to exactly one; a parameter outside all three (a module ov_model adds
later) is an error here rather than a parameter silently never trained. Frozen modules get
`requires_grad = False` and are left out of the optimizer.

Weight decay rule (minGPT's, and what "decoupled weight decay on the weights" usually means):
only the `weight` of Linear and Conv layers, the matrices that multiply activations, decays.
Norm scales, biases, the token embedding, the ViT class token and its learned RoPE angle never
decay: pulling them to zero changes what the network computes (a norm scale of 0, an embedding
of 0) rather than regularising it. With tied embeddings the output head is the embedding and
does not decay either. The release's Megatron decays everything of 2 or more dimensions,
embeddings included; the Stage-1 (4B) and Stage-2 recipes set weight decay 0, so the two rules
differ only for Stage-1 8B and Stage-1.5, on the embeddings.

The groups are named `<module>.decay` / `<module>.no_decay` (the name is kept in the group), so
the learning-rate schedule, the metrics and the checkpoint can tell them apart.
"""

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ov_train.config import MODULES, Recipe
from ov_train.errors import TrainingError

DECAYING_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def module_roots(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """For each trainable unit, its (attribute name, submodule) parts in the model. A pipeline
    stage's part of the model lacks some (None): they are left out."""
    parts = {
        "vision": [("vision", model.vision)],
        "projector": [("projector", model.projector)],
        "llm": [("language_model", model.language_model)],
    }
    if getattr(model, "lm_head", None) is not None:
        parts["llm"].append(("lm_head", model.lm_head))
    return {
        unit: [(name, module) for name, module in found if module is not None]
        for unit, found in parts.items()
    }


def named_parameters_by_module(
    model: nn.Module,
) -> dict[str, list[tuple[str, nn.Parameter, bool]]]:
    """(qualified name, parameter, decays) of each unit; checks every parameter is in one."""
    found: dict[str, list[tuple[str, nn.Parameter, bool]]] = {m: [] for m in MODULES}
    owner: dict[int, str] = {}
    for unit, parts in module_roots(model).items():
        for prefix, root in parts:
            for name, parameter, decays in _walk(root, prefix):
                if id(parameter) in owner:
                    continue  # a tied parameter, already listed where it was first seen
                owner[id(parameter)] = unit
                found[unit].append((name, parameter, decays))
    stray = [name for name, p in model.named_parameters() if id(p) not in owner]
    if stray:
        raise TrainingError(
            f"parameters outside vision/projector/llm: {', '.join(stray)}; "
            "ov_train.optim.module_roots must place them"
        )
    return found


def _walk(root: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Parameter, bool]]:
    for module_name, module in root.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            qualified = ".".join(part for part in (prefix, module_name, name) if part)
            yield qualified, parameter, isinstance(module, DECAYING_LAYERS) and name == "weight"


def freeze(model: nn.Module, trainable: Iterable[str]) -> None:
    """`requires_grad` True on the parameters of the `trainable` units, False elsewhere."""
    trainable = set(trainable)
    for unit, parameters in named_parameters_by_module(model).items():
        for _, parameter, _ in parameters:
            parameter.requires_grad_(unit in trainable)


def parameter_groups(
    model: nn.Module, recipe: Recipe, *, names: Sequence[str] | None = None
) -> list[dict]:
    """AdamW groups of the trainable units: params, lr, weight_decay, name (empty ones left out,
    except those in `names`: a pipeline stage keeps the whole model's groups, so every rank
    steps, logs and checkpoints the same named groups). Only parameters that require grad: in
    a LoRA group (`lora.py`) the adapters, not the frozen base; an adapter matrix is a Linear
    weight and decays."""
    groups = []
    for unit, parameters in named_parameters_by_module(model).items():
        if unit not in recipe.model.trainable:
            continue
        for decays in (True, False):
            name = f"{unit}.{'decay' if decays else 'no_decay'}"
            params = [p for _, p, d in parameters if d == decays and p.requires_grad]
            if params or (names is not None and name in names):
                groups.append(
                    {
                        "name": name,
                        "params": params,
                        "lr": recipe.optim.lr_for(unit),
                        "weight_decay": recipe.optim.weight_decay if decays else 0.0,
                    }
                )
    return groups


def build_optimizer(
    model: nn.Module, recipe: Recipe, *, group_names: Sequence[str] | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable units with the recipe's betas, eps and per-module lr.
    `group_names`: the groups of the whole model, kept even when `model` (a pipeline rank's
    stages) holds no parameter of one."""
    groups = parameter_groups(model, recipe, names=group_names)
    if not groups:
        raise TrainingError(f"model.trainable {list(recipe.model.trainable)} has no parameters")
    return torch.optim.AdamW(groups, betas=recipe.optim.betas, eps=recipe.optim.eps)


def trainable_parameters(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Every parameter the optimizer updates, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]
