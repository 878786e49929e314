"""Cross entropy over supervised tokens without materialising (tokens x vocab) fp32 logits.

Only rows with a target take part (prompts, images and padding never reach the output head), and
those go through the head in chunks; each chunk's fp32 logits live only inside a checkpointed
function, so the backward pass recomputes them instead of keeping them: peak memory is one chunk
of logits (chunk x vocab x 4 bytes) instead of the whole sequence's. The result is the SUM over
supervised tokens; callers divide by the number of supervised tokens of their (global) batch.
The supervised rows come from the packed row's host metadata (`packed_metadata`), so nothing here
reads a value back from the device.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 4096

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(hidden, head_weight, rows, targets) -> the CE sum of `hidden[rows]` through the head
(`cross_entropy_sum`'s signature): what `LlavaOV` calls for its loss."""


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def cross_entropy_sum(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Sum of CE of `hidden[rows]` through the head against `targets` (one per row), in chunks.
    Reads nothing back from the device: the row count is the tensor's shape."""
    if rows.shape[0] == 0:
        # Keep the graph connected so backward works (gradients are zero).
        return hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum().float()
    return chunked_sum(_chunk_loss, hidden[rows], head_weight, targets, chunk_size)


def chunked_sum(chunk_loss, selected, weight, targets, chunk_size: int, *extra) -> torch.Tensor:
    """The fp32 sum of `chunk_loss(selected[part], weight, targets[part], *extra)` over chunks
    of `chunk_size` rows; with gradients, each chunk is checkpointed, so its logits are
    recomputed in backward instead of kept (the vocabulary-parallel loss shares this loop)."""
    total = selected.new_zeros((), dtype=torch.float32)
    track = torch.is_grad_enabled() and (selected.requires_grad or weight.requires_grad)
    for start in range(0, int(selected.shape[0]), chunk_size):
        part = slice(start, start + chunk_size)
        args = (selected[part], weight, targets[part], *extra)
        if track:
            total = total + checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            total = total + chunk_loss(*args)
    return total
