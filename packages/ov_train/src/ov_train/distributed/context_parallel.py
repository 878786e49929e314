"""Context parallelism: each rank of a cp group runs the decoder on a share of every packed row.

Installed on the model by `apply_context_parallel` as its `sequence_split` (the seam of
`ov_model.sequence_split`); the model then embeds the whole row (the vision tower runs unsplit
on every cp rank, as in the release: images are short next to the rows CP is for, and a split
ViT would need its own attention split over images), keeps this rank's rows of the embeddings
and positions, runs every decoder layer on them with attention over the whole row (this rank's
queries, every rank's keys: `cp_attention`), and sums the loss over the supervised rows it
holds. Positions are those of the whole row (`PackedMetadata.position_ids`, restarting at each
sample) taken locally, so RoPE is exactly the unsplit model's.

Zigzag layout (load balance under a causal mask): a row of L tokens, L a multiple of 2 * cp
(the data path pads rows so, see `ov_model.packing.pad_row`), is cut into 2 * cp equal chunks;
rank r holds chunks r and 2 * cp - 1 - r. A contiguous split would give the last rank the most
work (its queries see the most keys) and the first rank almost none; pairing an early chunk with
a late one gives every rank the same number of visible query-key pairs for a single long sample,
and the block pairs with no visible pair (keys wholly in the future) are skipped.

Gradients: `local` is a differentiable slice, so each rank's backward reaches the embeddings
(and through them the ViT and the projector) only in its own rows; the parameter gradients of
the cp ranks are partial and FSDP2 over dp_shard x cp sums them. Each rank's `loss_sum` is the
partial sum over its supervised rows; the step sums them over cp (`train_step`).

Attention mode (`parallel.cp_attention`): "allgather" (K/V all-gathered per layer, the simple
path and the default) or "ring" (K/V rotated around the cp ranks, the scalable path).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from ov_model.packed_metadata import PackedMetadata
from ov_train.config import CP_ATTENTION
from ov_train.distributed.cp_attention import (
    AttentionPlan,
    RowPieces,
    allgather_attention,
    ring_attention,
)
from ov_train.errors import TrainingError

CPAttention = Literal["allgather", "ring"]
"""`ParallelConfig.cp_attention`'s values (`config.CP_ATTENTION`)."""


def zigzag_pieces(row_length: int, size: int) -> RowPieces:
    """The zigzag layout of a row over `size` ranks (module docstring); TrainingError naming the
    row length when it is not a multiple of 2 * size."""
    if size < 1 or row_length % (2 * size):
        raise TrainingError(
            f"context parallel over {size} ranks needs rows of a multiple of 2 * cp = "
            f"{2 * size} tokens; this row has {row_length} (pad it with ov_model.packing."
            f"pad_row(multiple_of={2 * size}))"
        )
    chunk = row_length // (2 * size)
    return RowPieces(
        row_length,
        tuple(
            (
                (rank * chunk, (rank + 1) * chunk),
                ((2 * size - 1 - rank) * chunk, (2 * size - rank) * chunk),
            )
            for rank in range(size)
        ),
    )


@dataclass
class ZigzagRowSplit:
    """One row as this cp rank holds it (`ov_model.sequence_split.RowSplit`)."""

    plan: AttentionPlan
    group: object
    mode: CPAttention
    supervised_rows: torch.Tensor | None
    """(n,) int64 host: local indices of the supervised rows this rank holds (None without
    labels)."""
    supervised_targets: torch.Tensor | None

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the whole row's (tokens, ...) `x`, as a differentiable copy."""
        pieces = self.plan.pieces
        if x.shape[0] != pieces.row_length:
            raise TrainingError(
                f"context parallel: a tensor of {x.shape[0]} rows given for a row of "
                f"{pieces.row_length} tokens"
            )
        return torch.cat([x[start:end] for start, end in pieces.pieces[self.plan.rank]])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """This rank's queries against the whole row's keys, causal per sample."""
        if self.mode == "ring":
            return ring_attention(q, k, v, self.plan, self.group)
        return allgather_attention(q, k, v, self.plan, self.group)


class ContextParallelSplit:
    """Splits each row over a cp process group in the zigzag layout
    (`ov_model.sequence_split.SequenceSplit`)."""

    def __init__(self, group, rank: int, size: int, mode: CPAttention = "allgather") -> None:
        if mode not in CP_ATTENTION:
            raise TrainingError(
                f"unknown context parallel attention {mode!r}; choose one of {list(CP_ATTENTION)}"
            )
        self.group, self.rank, self.size, self.mode = group, rank, size, mode

    def split(self, metadata: PackedMetadata) -> ZigzagRowSplit:
        """This rank's share of the row `metadata` describes."""
        pieces = zigzag_pieces(metadata.num_tokens, self.size)
        plan = AttentionPlan.build(pieces, self.rank, metadata.cu_seqlens)
        rows = targets = None
        if metadata.supervised_rows is not None and metadata.supervised_targets is not None:
            local_index = torch.full((pieces.row_length,), -1, dtype=torch.int64)
            held = pieces.global_rows(self.rank)
            local_index[held] = torch.arange(held.shape[0])
            mapped = local_index[metadata.supervised_rows]
            kept = mapped >= 0
            rows, targets = mapped[kept], metadata.supervised_targets[kept]
        return ZigzagRowSplit(plan, self.group, self.mode, rows, targets)


def apply_context_parallel(model: nn.Module, cp_mesh: DeviceMesh, mode: CPAttention) -> None:
    """Install the zigzag `ContextParallelSplit` over the 1-D `cp_mesh` on `model` (a LlavaOV)
    as its `sequence_split`; nothing with a cp degree of 1."""
    if cp_mesh.ndim != 1:
        raise TrainingError(f"context parallel needs a 1-D cp mesh, got {cp_mesh.mesh_dim_names}")
    if cp_mesh.size() == 1:
        return
    if not hasattr(model, "sequence_split"):
        raise TrainingError(f"{type(model).__name__} has no sequence_split seam")
    model.sequence_split = ContextParallelSplit(
        cp_mesh.get_group(), cp_mesh.get_local_rank(), cp_mesh.size(), mode
    )
