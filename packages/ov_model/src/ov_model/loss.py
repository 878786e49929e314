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
    count = int(rows.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    if count == 0:
        # Keep the graph connected so backward works (gradients are zero).
        return total + 0.0 * hidden.sum().float()
    selected = hidden[rows]
    for start in range(0, count, chunk_size):
        part = slice(start, start + chunk_size)
        if torch.is_grad_enabled() and (selected.requires_grad or head_weight.requires_grad):
            total = total + checkpoint(
                _chunk_loss, selected[part], head_weight, targets[part], use_reentrant=False
            )
        else:
            total = total + _chunk_loss(selected[part], head_weight, targets[part])
    return total
