"""Autograd-aware collectives for the sharded margin loss, written for gloo and NCCL alike.

Why our own: torch 2.15 deprecates `torch.distributed.nn.functional.all_gather`/`all_reduce`
(a FutureWarning on every call, an error under this project's pytest config), and their
replacement (`_functional_collectives.all_gather_tensor_autograd`) is itself deprecated in 2.15
and absent from 2.11. The three functions below are the exact adjoints the loss needs and use
only collectives gloo implements (all_gather_into_tensor, all_reduce):

- `all_gather_rows(x)`: the rows of every rank's `x` concatenated in rank order (ranks may hold
  different row counts: padded to the largest, since gloo has no uneven all_gather). Backward:
  the gradient is summed over ranks (all_reduce) and each rank keeps its own rows, i.e. a
  reduce-scatter.
- `all_reduce_sum(x)`: the sum over ranks; backward sums the gradients over ranks (the adjoint
  of "every rank receives the sum").
- `all_reduce_max(x)`: the element-wise max over ranks, no gradient (used only as a
  numerically-stable shift that cancels out of the loss).

With adjoint collectives, autograd on every rank together computes the gradient of the SUM of
the ranks' returned values: a caller whose value is replicated on every rank back-propagates
1/world of it (see `margin_loss.py`).
"""

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def all_gather_sizes(values: list[int], group: Group, device: torch.device) -> torch.Tensor:
    """(world, len(values)) int64 on CPU: every rank's `values` (e.g. its row counts),
    exchanged on `device` (CUDA under NCCL, which takes no CPU tensors)."""
    world = dist.get_world_size(group)
    local = torch.tensor(values, dtype=torch.int64, device=device)
    out = torch.empty(world * len(values), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(out, local, group=group)
    return out.view(world, len(values)).cpu()


def gather_padded(x: torch.Tensor, rows: list[int], group: Group) -> torch.Tensor:
    """Every rank's `x` (rows[r] rows on rank r) concatenated in rank order, no gradient."""
    world = dist.get_world_size(group)
    longest = max(rows)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = x.new_empty((world * longest, *x.shape[1:]))
    dist.all_gather_into_tensor(out, padded.contiguous(), group=group)
    return torch.cat([out[r * longest : r * longest + rows[r]] for r in range(world)])


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: list[int], group: Group) -> torch.Tensor:
        ctx.rows, ctx.group = rows, group
        return gather_padded(x, rows, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, group = ctx.rows, ctx.group
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=group)
        start = sum(rows[: dist.get_rank(group)])
        own = grad[start : start + rows[dist.get_rank(group)]]
        return own.contiguous(), None, None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_gather_rows(x: torch.Tensor, rows: list[int], group: Group) -> torch.Tensor:
    """Rows of every rank's `x` in rank order (`rows[r]` = rank r's row count, from
    `all_gather_sizes`); differentiable: the backward is a reduce-scatter (sum)."""
    return _AllGatherRows.apply(x, rows, group)


def all_reduce_sum(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Sum of `x` over ranks on every rank; differentiable (backward: gradient summed)."""
    return _AllReduceSum.apply(x, group)


def all_reduce_max(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Element-wise max of `x` over ranks, detached (no gradient)."""
    out = x.detach().contiguous().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` unchanged in the forward; its gradient multiplied by `factor` in the backward."""
    return _ScaleGradient.apply(x, factor)
