"""Region cluster discrimination loss: scaled-cosine margin loss over K class centres, with
partial-FC negative sampling, multi-positive OCR labels and centres sharded across ranks.

The loss (RICE, arXiv 2507.20025, sections 3.3 and 4.1). Region embeddings e_i and class centres
w_c are L2-normalised; c_ic = clamp(<e_i, w_c>, -1, 1). Region i has a positive set P_i (one
cluster id for an object region, the token classes of its text for an OCR region; a class listed
twice counts once) and a set of negatives N_i = S \\ P_i, S the classes sampled this step. Then

    loss_i = log(1 + sum_{c in P_i} exp(-s * phi(c_ic))) + log(1 + sum_{j in N_i} exp(s * c_ij))

with phi(c) = cos(theta + m) (`margin="arcface"`, theta = arccos c) or c - m (`"cosface"`),
s = 64, m = 0.3, and the loss is the mean of loss_i over the GLOBAL batch (every rank's regions).
For one positive this is RICE's object loss; for several, its OCR loss. ArcFace's phi is
computed as c cos m - sqrt(max(1 - c^2, 1e-12)) sin m, which equals cos(arccos c + m) on
[-1, 1] and keeps the gradient finite at c = +-1. (The classic softmax cross-entropy,
-log(e^{s phi_p} / (e^{s phi_p} + sum_j e^{s c_j})), is a different function; RICE uses the
form above, which this module implements for both region kinds.)

Partial FC (negative sampling, as UNICOM). Per step, S = a uniformly random subset of
floor(K * rho) of the K classes, plus every positive class of the global batch (positives are
always kept). The subset is `torch.randperm(K)` of a CPU generator seeded from (seed, step):
it depends only on (K, rho, seed, step), so it is the same on every rank, on every device and for
any world size (a run on 2 ranks samples the negatives a run on 1 process samples). rho = 1 uses
every class (the full, unsampled loss). Cost: O(K) host work per step for the permutation
(about 30 ms at K = 1M on one CPU core). What is deterministic: the sampled set for a given
(seed, step); the loss and gradients up to floating-point reduction order (the cross-rank sums
run in gloo/NCCL's order, so 1 vs 2 ranks agree to ~1e-6, not bit for bit).

Sharding (model-parallel classifier). With `world` ranks, rank r holds the centres of classes
[floor(r K / world), floor((r + 1) K / world)) as its `weight` (K_local, D): shards differ by at
most one row, nothing is padded (K >= world is required). Each forward:
1. all-gathers the (normalised) embeddings and the positives of every rank (ranks may hold
   different numbers of regions);
2. computes the cosines of all global regions against its sampled local centres;
3. reduces each region's two log-sum-exp terms over ranks: the max (a detached stability shift)
   with all_reduce MAX, the shifted sums of exponentials with a differentiable all_reduce SUM.
The returned loss has the global value on every rank. Gradients: each rank's `weight` gets
d loss / d weight for its shard; each rank's `embeddings` get d loss / d embeddings of its own
rows (the all-gather's backward sums the ranks' contributions). Since the value is replicated,
every rank back-propagates 1/world of it (the forward value is still the full loss) and the
adjoint collectives add the ranks' parts up to exactly one gradient of the loss.

With DDP over the encoder, DDP AVERAGES the encoder's gradients over ranks, which would divide
the encoder's true gradient by world; `data_parallel_mean=True` multiplies the embeddings'
gradient by world so the average is exact (as UNICOM's all-gather does); the centres are not
touched by DDP (each rank owns its shard) and keep their exact gradient.

Memory per rank: the logits (B_global, |S_local|) in fp32 (or fp64 for fp64 inputs), plus the
O(K) permutation. Inputs in bf16/fp16 are computed in fp32.
"""

from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rice_vit.errors import ConfigError, InputError
from rice_vit.pretrain.collectives import (
    all_gather_rows,
    all_gather_sizes,
    all_reduce_max,
    all_reduce_sum,
    gather_padded,
    scale_gradient,
)

MarginType = Literal["arcface", "cosface"]
_INIT_BLOCK_ROWS = 4096
_SIN_EPS = 1e-12


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` of `world` holds: floor(r K / world) to
    floor((r + 1) K / world)."""
    return rank * num_classes // world, (rank + 1) * num_classes // world


def _step_seed(seed: int, tag: int, index: int) -> int:
    state = np.random.SeedSequence([seed, tag, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def sampled_classes(num_classes: int, sample_rate: float, seed: int, step: int) -> torch.Tensor:
    """The floor(K * rho) classes sampled as negatives at `step` (int64, CPU, unsorted): the
    first floor(K * rho) entries of a permutation seeded from (seed, step); all K when rho = 1.
    Positives are added on top by the loss."""
    count = int(np.floor(num_classes * sample_rate))
    if count >= num_classes:
        return torch.arange(num_classes)
    generator = torch.Generator().manual_seed(_step_seed(seed, 0, step))
    return torch.randperm(num_classes, generator=generator)[:count]


def init_centres(num_classes: int, dim: int, start: int, end: int, seed: int, std: float):
    """Rows [start, end) of the (K, D) initial centre matrix, N(0, std^2), generated in blocks of
    4096 rows each from its own seed, so a shard equals the same rows of the whole matrix
    whatever the world size (and no rank materialises all K rows)."""
    out = torch.empty(end - start, dim)
    first, last = start // _INIT_BLOCK_ROWS, (end - 1) // _INIT_BLOCK_ROWS if end > start else -1
    for block in range(first, last + 1):
        lo, hi = block * _INIT_BLOCK_ROWS, min((block + 1) * _INIT_BLOCK_ROWS, num_classes)
        generator = torch.Generator().manual_seed(_step_seed(seed, 1, block))
        rows = torch.randn(hi - lo, dim, generator=generator) * std
        a, b = max(lo, start), min(hi, end)
        out[a - start : b - start] = rows[a - lo : b - lo]
    return out


class MarginSoftmaxLoss(nn.Module):
    """Region cluster discrimination loss with this rank's shard of the K class centres.

    Args:
        num_classes: K, all classes over all ranks (object clusters + OCR token classes).
        embedding_dim: D, the region embedding width.
        scale: s (64). margin: m (0.3). margin_type: "arcface" (cos(theta + m)) or "cosface"
            (cos theta - m).
        sample_rate: rho (0.1), the fraction of classes sampled as negatives each step (1 = all).
        seed: seeds the centres' initialisation and the per-step negative sampling.
        process_group: the ranks sharing the centres; None = the default group when
            torch.distributed is initialised, else a single process.
        data_parallel_mean: multiply the embeddings' gradient by the world size, for an encoder
            whose gradients DDP averages over ranks (see the module docstring).
        init_std: standard deviation of the initial centres.

    `weight` (K_local, D) holds classes `class_range = (start, end)`; `load_full_weight(full)`
    copies this rank's rows of a whole (K, D) matrix.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        scale: float = 64.0,
        margin: float = 0.3,
        margin_type: MarginType = "arcface",
        sample_rate: float = 0.1,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        data_parallel_mean: bool = False,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if margin_type not in ("arcface", "cosface"):
            raise ConfigError(f"margin_type must be 'arcface' or 'cosface', not {margin_type!r}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in [0, 1], not {sample_rate}")
        if scale <= 0:
            raise ConfigError(f"scale must be positive, not {scale}")
        self.distributed = dist.is_available() and dist.is_initialized()
        self.group = process_group if self.distributed else None
        self.world = dist.get_world_size(self.group) if self.distributed else 1
        self.rank = dist.get_rank(self.group) if self.distributed else 0
        if num_classes < self.world:
            raise ConfigError(f"num_classes ({num_classes}) must be >= world size ({self.world})")
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.scale, self.margin, self.margin_type = float(scale), float(margin), margin_type
        self.sample_rate, self.seed = float(sample_rate), seed
        self.data_parallel_mean = data_parallel_mean
        self.class_range = shard_range(num_classes, self.rank, self.world)
        start, end = self.class_range
        self.weight = nn.Parameter(
            init_centres(num_classes, embedding_dim, start, end, seed, init_std)
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, classes={self.class_range}, "
            f"embedding_dim={self.embedding_dim}, scale={self.scale}, margin={self.margin}, "
            f"margin_type={self.margin_type}, sample_rate={self.sample_rate}, world={self.world}"
        )

    @torch.no_grad()
    def load_full_weight(self, full: torch.Tensor) -> None:
        """Copy this rank's rows of a whole (K, D) centre matrix into `weight`."""
        if tuple(full.shape) != (self.num_classes, self.embedding_dim):
            raise InputError(
                f"full centre matrix has shape {tuple(full.shape)}, expected "
                f"({self.num_classes}, {self.embedding_dim})"
            )
        start, end = self.class_range
        self.weight.copy_(full[start:end])

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        embeddings: torch.Tensor,
        positives_offsets: torch.Tensor,
        positives_classes: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        """The loss (a 0-d tensor, the global batch's mean; the same value on every rank).

        embeddings: (B, D) this rank's region embeddings (not necessarily normalised).
        positives_offsets: (B + 1,) int64 CSR offsets: region i's positive classes are
            positives_classes[offsets[i]:offsets[i + 1]] (at least one each).
        positives_classes: (nnz,) int64 class ids in [0, K) (global ids, not shard-local).
        step: the training step; selects the sampled negatives (same step, same negatives).
        """
        # Cosines at s = 64 need fp32: a bf16 autocast region around the caller stops here.
        with torch.autocast(self.weight.device.type, enabled=False):
            return self._forward(embeddings, positives_offsets, positives_classes, step)

    def _forward(self, embeddings, positives_offsets, positives_classes, step: int):
        problem = self._check(embeddings, positives_offsets, positives_classes)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        if dtype == torch.float16 or dtype == torch.bfloat16:
            dtype = torch.float32
        device = self.weight.device
        local = F.normalize(embeddings.to(dtype), dim=1)
        offsets = positives_offsets.to(device=device, dtype=torch.int64)
        classes = positives_classes.to(device=device, dtype=torch.int64)
        rows_local = torch.repeat_interleave(
            torch.arange(embeddings.shape[0], device=device), offsets.diff()
        )
        if self.distributed:
            sizes = all_gather_sizes(
                [embeddings.shape[0], classes.numel(), int(problem is not None)],
                self.group,
                device,
            )
            bad = [r for r in range(self.world) if sizes[r, 2]]
            if bad:
                mine = f"; this rank: {problem}" if problem else ""
                raise InputError(f"bad loss inputs on rank(s) {bad}{mine}")
            rows = sizes[:, 0].tolist()
            if self.data_parallel_mean:
                local = scale_gradient(local, float(self.world))
            everyone = all_gather_rows(local, rows, self.group)
            row_start = torch.tensor([0, *np.cumsum(rows)[:-1].tolist()], device=device)
            pairs_local = torch.stack([rows_local + row_start[self.rank], classes], dim=1)
            pairs = gather_padded(pairs_local, sizes[:, 1].tolist(), self.group)
        else:
            if problem is not None:
                raise InputError(problem)
            everyone = local
            pairs = torch.stack([rows_local, classes], dim=1)
        batch = everyone.shape[0]
        if batch == 0:
            raise InputError("the global batch has no region (every rank passed B = 0)")
        pos_rows, pos_logits = self._positive_logits(everyone, pairs)
        neg_logits = self._negative_logits(everyone, pairs, step)
        # log(1 + sum exp(x)) per region over the positives / the negatives of every shard:
        # shift = max(0, max over ranks of x) (detached, it cancels out), then a
        # differentiable cross-rank sum of exp(x - shift).
        pos_max = torch.full((batch,), -torch.inf, dtype=dtype, device=device)
        pos_max = pos_max.scatter_reduce(0, pos_rows, pos_logits.detach(), "amax")
        neg_max = (
            neg_logits.detach().amax(dim=1)
            if neg_logits.shape[1]
            else torch.full((batch,), -torch.inf, dtype=dtype, device=device)
        )
        if self.distributed:
            pos_max = all_reduce_max(pos_max, self.group)
            neg_max = all_reduce_max(neg_max, self.group)
        pos_shift, neg_shift = pos_max.clamp_min(0), neg_max.clamp_min(0)
        pos_sum = torch.zeros(batch, dtype=dtype, device=device).index_add(
            0, pos_rows, torch.exp(pos_logits - pos_shift[pos_rows])
        )
        neg_sum = torch.exp(neg_logits - neg_shift[:, None]).sum(dim=1)
        if self.distributed:
            pos_sum = all_reduce_sum(pos_sum, self.group)
            neg_sum = all_reduce_sum(neg_sum, self.group)
        per_region = (
            pos_shift
            + torch.log(torch.exp(-pos_shift) + pos_sum)
            + neg_shift
            + torch.log(torch.exp(-neg_shift) + neg_sum)
        )
        loss = per_region.mean()
        if self.world > 1:
            # The value is replicated on every rank; back-propagate 1/world of it on each so the
            # adjoint collectives sum the ranks' parts to exactly one gradient of the loss.
            part = loss / self.world
            loss = part + (loss - part).detach()
        return loss

    def _held(self, pairs: torch.Tensor) -> torch.Tensor:
        """The unique (region, class - start) positive pairs whose class this shard holds."""
        start, end = self.class_range
        held = pairs[(pairs[:, 1] >= start) & (pairs[:, 1] < end)]
        held = torch.unique(held, dim=0)
        return torch.stack([held[:, 0], held[:, 1] - start], dim=1)

    def _centres(self, columns: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.normalize(self.weight[columns].to(dtype), dim=1)

    def _positive_logits(self, everyone: torch.Tensor, pairs: torch.Tensor):
        """(rows, -s phi(cos)) of this shard's unique positive (region, class) pairs."""
        held = self._held(pairs)
        rows, columns = held[:, 0], held[:, 1]
        cos = (everyone[rows] * self._centres(columns, everyone.dtype)).sum(dim=1)
        return rows, -self.scale * self._phi(cos.clamp(-1.0, 1.0))

    def _phi(self, cos: torch.Tensor) -> torch.Tensor:
        if self.margin_type == "cosface":
            return cos - self.margin
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(_SIN_EPS))
        return cos * float(np.cos(self.margin)) - sin * float(np.sin(self.margin))

    def _negative_logits(self, everyone: torch.Tensor, pairs: torch.Tensor, step: int):
        """(B_global, |S_local|) s * cos against this shard's sampled classes (sampled
        negatives plus every positive of the batch), -inf where the class is one of the region's
        own positives."""
        start, end = self.class_range
        device = everyone.device
        keep = torch.zeros(end - start, dtype=torch.bool)
        sampled = sampled_classes(self.num_classes, self.sample_rate, self.seed, step)
        keep[sampled[(sampled >= start) & (sampled < end)] - start] = True
        keep = keep.to(device)
        held = self._held(pairs)
        keep[held[:, 1]] = True
        columns = keep.nonzero().squeeze(1)
        position = torch.full((end - start,), -1, dtype=torch.int64, device=device)
        position[columns] = torch.arange(columns.numel(), device=device)
        cos = everyone @ self._centres(columns, everyone.dtype).T
        logits = self.scale * cos.clamp(-1.0, 1.0)
        own = torch.zeros_like(logits, dtype=torch.bool)
        own[held[:, 0], position[held[:, 1]]] = True
        return logits.masked_fill(own, -torch.inf)

    def _check(self, embeddings, offsets, classes) -> str | None:
        """What is wrong with this rank's inputs (None if nothing)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            return f"embeddings must be (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
        b = embeddings.shape[0]
        if offsets.dim() != 1 or offsets.numel() != b + 1:
            return f"positives_offsets must be ({b + 1},), got {tuple(offsets.shape)}"
        if classes.dim() != 1:
            return f"positives_classes must be 1-D, got {tuple(classes.shape)}"
        offsets = offsets.detach().cpu()
        if offsets[0] != 0 or offsets[-1] != classes.numel():
            return (
                f"positives_offsets must start at 0 and end at nnz={classes.numel()}, got "
                f"{offsets[0].item()}..{offsets[-1].item()}"
            )
        counts = offsets.diff()
        if (counts < 0).any():
            return "positives_offsets must be non-decreasing"
        if (counts == 0).any():
            region = int((counts == 0).nonzero()[0])
            return f"region {region} has no positive class (every region needs at least one)"
        if classes.numel():
            low, high = int(classes.min()), int(classes.max())
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                return f"positive class {bad} outside [0, {self.num_classes})"
        return None
