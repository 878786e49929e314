"""Gradient-norm clipping that works on plain, sharded (FSDP2) and differently meshed gradients.

`torch.nn.utils.clip_grad_norm_` stacks the per-tensor norms of all gradients: with FSDP2 they
are DTensors, and when gradients live on different meshes (the ViT on the data-parallel mesh,
the LLM on dp x tp) the stack fails. So: group the gradients by mesh (plain tensors form their
own group), take each group's total norm (a DTensor norm is reduced across its mesh with
`full_tensor`), combine the group norms into the global 2-norm (its square summed over the
pipeline's stages, which hold different parameters), and scale each group by the same clip
coefficient. With plain tensors only this is exactly what `clip_grad_norm_` computes (one
group: the same norm, the same scaling).

Frozen parameters are not in the optimizer and have no gradient: they take no part. The norm is
returned as a float (one host sync per step, which the trainer logs anyway).
"""

import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def clip_gradients(
    parameters: Iterable[nn.Parameter],
    max_norm: float,
    *,
    groups: Sequence[dist.ProcessGroup] = (),
    device: torch.device | None = None,
) -> float:
    """Scale the gradients so their global 2-norm is at most `max_norm` (inf: measure only);
    returns the norm before clipping (NaN or inf when a gradient is not finite).

    `groups`: process groups over which the ranks hold DIFFERENT parameters (the pipeline's
    stages): the squared norm is summed over each, so every rank clips by the norm of the whole
    model. Every rank of such a group must call this, with or without gradients (`device`
    then says where the zero norm lives; default: the gradients' device, else cpu)."""
    by_mesh: dict[object, list[nn.Parameter]] = {}
    for parameter in parameters:
        if parameter.grad is not None:
            mesh = parameter.grad.device_mesh if isinstance(parameter.grad, DTensor) else None
            by_mesh.setdefault(mesh, []).append(parameter)
    if not by_mesh and not groups:
        return 0.0
    norms = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        norms.append(norm.float())
    if not norms:
        norms.append(torch.zeros((), device=device or torch.device("cpu")))
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if groups:
        square = total.pow(2)
        for group in groups:
            dist.all_reduce(square, op=dist.ReduceOp.SUM, group=group)
        total = square.sqrt()
    if math.isfinite(max_norm) and by_mesh:
        for group in by_mesh.values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return float(total)
