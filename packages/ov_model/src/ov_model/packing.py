"""Packed sequences: many samples as one row, described by `cu_seqlens`.

The model flattens whatever it is given into one token sequence plus cumulative sample lengths:
a (batch, seq) tensor without `cu_seqlens` is `batch` samples of `seq` tokens; a (1, tokens) row
with `cu_seqlens` is the samples it lists. Positions restart at 0 for every sample, and the
next-token targets never cross a sample boundary.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ov_model.errors import InputError

IGNORE_INDEX = -100


def flatten_batch(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens,) ids and (samples + 1,) int32 cu_seqlens for either input form."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    device = input_ids.device
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, (batch + 1) * seq, seq, device=device, dtype=torch.int32)
        return input_ids.reshape(-1), cu_seqlens
    if batch != 1:
        raise InputError(f"with cu_seqlens, input_ids must be one packed row; got batch {batch}")
    cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise InputError("cu_seqlens must be 1-D with at least two entries")
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != seq or bool((cu_seqlens.diff() < 0).any()):
        raise InputError(
            f"cu_seqlens must rise from 0 to the row length {seq}; got {cu_seqlens.tolist()}"
        )
    return input_ids.reshape(-1), cu_seqlens


def sample_lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Tokens per sample (int64)."""
    return cu_seqlens.diff().to(torch.int64)


def position_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """0, 1, ... restarting at every sample start, for the whole packed sequence."""
    lengths = sample_lengths(cu_seqlens)
    total = int(cu_seqlens[-1])
    starts = torch.repeat_interleave(cu_seqlens[:-1].to(torch.int64), lengths)
    return torch.arange(total, device=cu_seqlens.device) - starts


def shifted_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """targets[t] = labels[t + 1] inside a sample, IGNORE_INDEX at each sample's last token."""
    labels = labels.reshape(-1)
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:-1] = labels[1:]
    ends = cu_seqlens[1:].to(torch.int64) - 1
    targets[ends[ends >= 0]] = IGNORE_INDEX
    return targets


def segment_sums(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per-sample sums of a per-token integer tensor."""
    cumulative = torch.cat([values.new_zeros(1), values.cumsum(0)])
    return cumulative[cu_seqlens[1:].long()] - cumulative[cu_seqlens[:-1].long()]


@dataclass(frozen=True)
class PackedBatch:
    """Several samples as one packed row: what `LlavaOV.forward` takes with `cu_seqlens`."""

    input_ids: torch.Tensor  # (1, tokens) int64
    labels: torch.Tensor  # (1, tokens) int64, IGNORE_INDEX where unsupervised
    cu_seqlens: torch.Tensor  # (samples + 1,) int32
    pixel_values: torch.Tensor | None  # (patches, C*P*P)
    image_grid_thw: torch.Tensor | None  # (images, 3)

    @classmethod
    def from_samples(cls, samples: Sequence) -> "PackedBatch":
        """Concatenate processed samples (objects with `input_ids`, `labels`, `pixel_values`,
        `image_grid_thw`; the last two None without images)."""
        if not samples:
            raise InputError("cannot pack an empty list of samples")
        lengths = [int(s.input_ids.numel()) for s in samples]
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
        grids = [s.image_grid_thw for s in samples if s.image_grid_thw is not None]
        return cls(
            input_ids=torch.cat([s.input_ids.reshape(-1) for s in samples])[None],
            labels=torch.cat([s.labels.reshape(-1) for s in samples])[None],
            cu_seqlens=cu,
            pixel_values=torch.cat(pixels) if pixels else None,
            image_grid_thw=torch.cat([g.reshape(-1, 3) for g in grids]) if grids else None,
        )

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for `LlavaOV.forward`."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "cu_seqlens": self.cu_seqlens,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
        }
