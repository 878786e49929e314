"""Gradient-norm clipping that works on plain, sharded (FSDP2) and differently meshed gradients.

`torch.nn.utils.clip_grad_norm_` stacks the per-tensor norms of all gradients: with FSDP2 they
are DTensors, and when gradients live on different meshes (the ViT on the data-parallel mesh,
the LLM on dp x tp in the next version) the stack fails. So: group the gradients by mesh (plain
tensors form their own group), take each group's total norm (a DTensor norm is reduced across
its mesh with `full_tensor`), combine the group norms into the global 2-norm, and scale each
group by the same clip coefficient. With plain tensors only this is exactly what
`clip_grad_norm_` computes (one group: the same norm, the same scaling).

Frozen parameters are not in the optimizer and have no gradient: they take no part. The norm is
returned as a float (one host sync per step, which the trainer logs anyway).
"""

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so their global 2-norm is at most `max_norm` (inf: measure only);
    returns the norm before clipping (NaN or inf when a gradient is not finite)."""
    groups: dict[object, list[nn.Parameter]] = {}
    for parameter in parameters:
        if parameter.grad is not None:
            mesh = parameter.grad.device_mesh if isinstance(parameter.grad, DTensor) else None
            groups.setdefault(mesh, []).append(parameter)
    if not groups:
        return 0.0
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        norms.append(norm)
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if math.isfinite(max_norm):
        for group in groups.values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return float(total)
