"""Cross entropy over a vocabulary-sharded output head, chunked: no rank ever holds full logits.

Under tensor parallelism each of the T ranks of the tp group holds V / T rows of the output head
(rank r: vocabulary ids [r V/T, (r+1) V/T)). The single-device loss (`ov_model.loss`) would need
the whole head on every rank; gathering it costs V x hidden per step and the logits V wide. Here
each rank computes only its V / T columns of the logits, and the softmax is assembled with three
small all-reduces over the tp group per chunk of rows (Megatron's vocabulary-parallel CE):

1. the row maximum of the local logits, all-reduced with MAX (for a stable exp);
2. the local sum of exp(logit - max) and the target's logit (0 on ranks whose shard does not
   hold the target), all-reduced together with SUM;
3. loss = log(sum exp) + max - target logit, the same on every rank.

Backward is local: d loss / d logits = softmax over the global vocabulary restricted to this
rank's columns, minus 1 at the target if this rank holds it. That gives this rank's head shard
its exact gradient; the hidden states' gradient is a partial sum over the shards, so it is
all-reduced over the tp group before it leaves (the transpose of "every rank reads the same
hidden"). Every tp rank returns the same loss and backpropagates it whole (not 1/T of it): the
head shards' gradients are disjoint and the hidden's is summed once.

Chunks: as in `ov_model.loss`, only supervised rows go through the head, `chunk_size` at a time,
each chunk's (chunk, V / T) fp32 logits inside `torch.utils.checkpoint` so backward recomputes
them (its all-reduces run again, in the same order on every tp rank) instead of keeping them.

With sequence parallelism the final norm's output is sharded over tokens (each rank holds T-th of
the row); it is all-gathered first (its backward keeps this rank's rows of the, by then summed,
gradient). A row whose supervised count is zero runs no collective on any tp rank (every rank
holds the same row).
"""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from ov_model.loss import DEFAULT_CHUNK, chunked_sum
from ov_train.errors import TrainingError


class _GatherTokens(torch.autograd.Function):
    """Forward: the tp group's token shards concatenated in rank order. Backward: this rank's
    rows of the gradient (the gradient is already the same on every rank, see `_SumGradient`)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.rows, ctx.rank = local.shape[0], rank
        out = local.new_empty((local.shape[0] * size, *local.shape[1:]))
        dist.all_gather_into_tensor(out, local.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


class _SumGradient(torch.autograd.Function):
    """Forward: identity. Backward: the gradient summed over the tp group (each rank's is the
    part from its vocabulary shard)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Sum over rows of CE(logits, targets) where `logits` are this rank's vocabulary columns
    [vocab_start, vocab_start + logits.shape[1]) of the full logits; see the module docstring."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_start: int, group: dist.ProcessGroup):
        width = logits.shape[1]
        maximum = logits.detach().amax(dim=1)
        dist.all_reduce(maximum, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - maximum[:, None]
        local_targets = targets - vocab_start
        held = (local_targets >= 0) & (local_targets < width)
        local_targets = torch.where(held, local_targets, torch.zeros_like(local_targets))
        target_logit = shifted.gather(1, local_targets[:, None]).squeeze(1) * held
        exp = shifted.exp()
        sums = torch.stack([exp.sum(dim=1), target_logit])
        dist.all_reduce(sums, group=group)
        sum_exp, target_logit = sums[0], sums[1]
        ctx.save_for_backward(exp.div_(sum_exp[:, None]), local_targets, held)
        return (sum_exp.log() - target_logit).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, local_targets, held = ctx.saved_tensors
        grad_logits = softmax.clone()
        rows = torch.arange(grad_logits.shape[0], device=grad_logits.device)
        grad_logits[rows, local_targets] -= held.to(grad_logits.dtype)
        return grad_logits * grad, None, None, None


def _chunk_loss(hidden, weight, targets, vocab_start: int, group) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    return _ShardedCrossEntropy.apply(logits, targets, vocab_start, group)


class VocabParallelCrossEntropy:
    """`ov_model.loss.cross_entropy_sum` over a head sharded by vocabulary rows on `mesh` (the
    1-D tp mesh): the same (hidden, head_weight, rows, targets) -> CE sum, installed as
    `LlavaOV.loss_function` by `apply_tensor_parallel`.

    `head_weight` is a DTensor Shard(0) on `mesh` (inside FSDP2's forward, the gathered tp
    shard); `hidden` is the final norm's output: the whole row on every rank, or with
    `sequence_parallel` this rank's rows of it (rank order), `rows` index the whole row."""

    def __init__(
        self, mesh: DeviceMesh, *, sequence_parallel: bool, chunk_size: int = DEFAULT_CHUNK
    ) -> None:
        if mesh.ndim != 1:
            raise TrainingError(f"the vocabulary-parallel loss needs a 1-D tp mesh, got {mesh}")
        self.mesh = mesh
        self.sequence_parallel = sequence_parallel
        self.chunk_size = chunk_size

    def __call__(
        self,
        hidden: torch.Tensor,
        head_weight: torch.Tensor,
        rows: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """The CE sum of `hidden[rows]` (rows of the whole row) against `targets`, the same
        value on every tp rank; reads nothing back from the device."""
        group = self.mesh.get_group()
        rank = self.mesh.get_local_rank()
        weight = self._local_shard(head_weight)
        vocab_start = rank * weight.shape[0]
        if rows.shape[0] == 0:
            # The same on every tp rank (they hold the same row): no collective anywhere.
            zero = hidden.new_zeros((), dtype=torch.float32)
            return zero + 0.0 * hidden.sum().float() + 0.0 * weight.sum().float()
        if self.sequence_parallel:
            hidden = _GatherTokens.apply(hidden, group)
        selected = _SumGradient.apply(hidden[rows], group)
        return chunked_sum(
            _chunk_loss, selected, weight, targets, self.chunk_size, vocab_start, group
        )

    def _local_shard(self, head_weight: torch.Tensor) -> torch.Tensor:
        if not isinstance(head_weight, DTensor):
            raise TrainingError(
                "the vocabulary-parallel loss needs the head as a DTensor sharded by vocabulary "
                f"rows on the tp mesh (apply_tensor_parallel), got a plain {head_weight.shape} "
                "tensor"
            )
        if tuple(head_weight.placements) != (Shard(0),) or head_weight.device_mesh != self.mesh:
            raise TrainingError(
                f"the vocabulary-parallel loss needs the head sharded by vocabulary rows "
                f"(Shard(0)) on its tp mesh; got {head_weight.placements} on "
                f"{head_weight.device_mesh}"
            )
        vocab = head_weight.shape[0]
        if vocab % self.mesh.size():
            raise TrainingError(
                f"vocabulary of {vocab} is not divisible by tp = {self.mesh.size()}"
            )
        return head_weight.to_local()
