"""FSDP2 (`fully_shard`) over the LLaVA-OV model: one unit per layer, gradients summed.

Units, innermost first (each all-gathers its parameters just before its forward and backward
and frees them after; each reduce-scatters its gradients as soon as its backward is done):
- every RICE-ViT block;
- the ViT's stem (`model.vision`: patch embedding, class token and its RoPE angle,
  pre-layernorm);
- the projector (`model.projector`);
- every decoder layer;
- the root (`model`): what is left, the token embedding, the final norm and the output head.
The units follow the trainable units of the recipe (vision / projector / llm), so a unit is
either wholly frozen or wholly trained (LoRA adapters aside: with `train.lora` a unit holds
trainable adapters beside its frozen base, and FSDP2 reduces only the adapters' gradients):
Stage-1 trains only the projector, and a frozen unit
all-gathers for forward (and, inside the LLM, for the input gradient) but never reduces.

Gradient reduction: FSDP2 divides gradients by the data-parallel size by default (a mean over
ranks). The loss here is already the CE sum divided by the supervised-token count of the global
batch, so the ranks' gradients must be SUMMED: every unit gets a divide factor of 1 and sum-only
collectives (the divide factor alone would use NCCL's PREMUL_SUM, which gloo refuses).

Mixed precision: with a bf16 run FSDP2 all-gathers bf16 copies of the fp32 master parameters
(`param_dtype`), so the whole forward and backward compute in bf16 without autocast, and reduces
gradients in fp32 (`reduce_dtype`) into fp32 sharded gradients that AdamW steps in fp32. The
root and the ViT stem cast their floating inputs (the pixels) to bf16; the inner units do not
(`cast_forward_inputs=False`), so the RoPE cos/sin the model computes in fp32 reach the
attention as computed.

Gradient accumulation: each micro-batch's backward reduce-scatters within the shard group (the
sharded gradients accumulate, so memory stays sharded), but with replicas (HSDP, or pure
replication) the all-reduce across replica groups, the inter-node traffic on a large run, waits
for the step's last micro-batch (`sync_replicas`): the sum is the same, sent once per step.

The root keeps FSDP2's default `reshard_after_forward` (its parameters stay gathered after
forward: backward needs them at once). torch 2.11's FSDP2 does not look inside the model's
dataclass output, so a root resharded after forward would not be gathered again for backward;
the recipe's `reshard_after_forward` applies to the inner units only.
"""

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ov_train.errors import TrainingError
from ov_train.lora import is_adapter


def fsdp_units(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """(module, receives pixels) of each unit below the root, innermost first. A pipeline
    stage's module lacks some of them (None): those are skipped."""
    units: list[tuple[nn.Module, bool]] = []
    if model.vision is not None:
        units.extend((block, False) for block in model.vision.blocks)
        units.append((model.vision, True))
    if model.projector is not None:
        units.append((model.projector, False))
    units.extend((layer, False) for layer in model.language_model.layers)
    return units


def check_units_uniformly_trained(model: nn.Module) -> None:
    """TrainingError when a unit (or the root's own parameters) mixes frozen and trainable
    parameters: FSDP2 gathers and reduces a unit as one flat group, and a partly frozen unit
    would either reduce gradients of frozen parameters or leave some unreduced."""
    units = [module for module, _ in fsdp_units(model)]
    inside = {id(p) for unit in units for p in unit.parameters()}
    root = [(n, p) for n, p in model.named_parameters() if id(p) not in inside]
    groups = [("the root", root)] + [
        (_name_of(model, unit), list(unit.named_parameters())) for unit in units
    ]
    for name, parameters in groups:
        # LoRA adapters (ov_train.lora) train beside their frozen base by design: FSDP2
        # reduce-scatters only the parameters that have gradients
        parameters = [(n, p) for n, p in parameters if not is_adapter(n)]
        frozen = [n for n, p in parameters if not p.requires_grad]
        if frozen and len(frozen) != len(parameters):
            raise TrainingError(
                f"FSDP unit {name} mixes frozen parameters ({', '.join(frozen[:3])}"
                f"{', ...' if len(frozen) > 3 else ''}) with trainable ones; freeze whole "
                "units (model.trainable names vision / projector / llm)"
            )


def _name_of(model: nn.Module, unit: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is unit)


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None,
    reshard_after_forward: bool,
) -> nn.Module:
    """Apply `fully_shard` to every unit and the root (in place); returns the model."""

    def policy(cast_inputs: bool) -> MixedPrecisionPolicy:
        if param_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=cast_inputs
        )

    check_units_uniformly_trained(model)
    for module, cast_inputs in fsdp_units(model):
        fully_shard(
            module,
            mesh=mesh,
            mp_policy=policy(cast_inputs),
            reshard_after_forward=reshard_after_forward,
        )
    fully_shard(model, mesh=mesh, mp_policy=policy(True))
    for module in model.modules():
        if isinstance(module, FSDPModule):
            sum_gradients(module)
    return model


def sum_gradients(module: FSDPModule) -> None:
    """Make `module` sum its gradients over the data-parallel ranks instead of averaging."""
    module.set_gradient_divide_factor(1.0)
    module.set_force_sum_reduction_for_comms(True)


def sync_replicas(model: nn.Module, last_micro_batch: bool) -> None:
    """Before a micro-batch's backward: all-reduce gradients across replica groups only on the
    step's last micro-batch (nothing for a model FSDP2 did not wrap)."""
    if isinstance(model, FSDPModule):
        model.set_requires_all_reduce(last_micro_batch)
