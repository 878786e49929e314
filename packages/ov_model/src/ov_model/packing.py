"""Packed sequences: many samples as one row, described by `cu_seqlens`.

The model flattens whatever it is given into one token sequence plus cumulative sample lengths:
a (batch, seq) tensor without `cu_seqlens` is `batch` samples of `seq` tokens; a (1, tokens) row
with `cu_seqlens` is the samples it lists. Positions restart at 0 for every sample, and the
next-token targets never cross a sample boundary.

`PackedBatch` is the packed row as the data loader builds it, with its host bookkeeping
(`packed_metadata.PackedMetadata`), so the forward reads nothing back from the device.
`pad_row` appends a padding sample (no supervised token): a zero image for rows without one, so
every data-parallel rank runs the vision tower and the same collectives, and pad tokens up to a
multiple of N tokens for the parallelisms that split a row evenly.
"""

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ov_model.errors import InputError
from ov_model.packed_metadata import (
    IGNORE_INDEX,
    PackedMetadata,
    position_ids,
    sample_lengths,
    segment_sums,
    shifted_targets,
)

__all__ = [
    "IGNORE_INDEX",
    "PackedBatch",
    "PackedMetadata",
    "flatten_batch",
    "pad_row",
    "position_ids",
    "sample_lengths",
    "segment_sums",
    "shifted_targets",
]


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


@dataclass(frozen=True)
class PackedBatch:
    """Several samples as one packed row: what `LlavaOV.forward` takes with `cu_seqlens`, plus
    its host-side `metadata` (see `packed_metadata`), so the forward reads nothing back from the
    device."""

    input_ids: torch.Tensor  # (1, tokens) int64
    labels: torch.Tensor  # (1, tokens) int64, IGNORE_INDEX where unsupervised
    cu_seqlens: torch.Tensor  # (samples + 1,) int32
    pixel_values: torch.Tensor | None  # (patches, C*P*P)
    image_grid_thw: torch.Tensor | None  # (images, 3)
    metadata: PackedMetadata | None = None
    """Host bookkeeping of the row; None: the model computes it (a few syncs per forward)."""

    @classmethod
    def from_tensors(
        cls,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        cu_seqlens: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        *,
        image_token_id: int | None = None,
        merge_size: int | None = None,
    ) -> "PackedBatch":
        """A batch of host tensors with its metadata; with `image_token_id` and `merge_size` (the
        model's) the image part of the metadata is computed too, and a sample whose image
        placeholders do not match its images is rejected here."""
        metadata = PackedMetadata.build(input_ids, labels, cu_seqlens, image_grid_thw)
        if (image_token_id is None) != (merge_size is None):
            raise InputError("image_token_id and merge_size go together")
        if image_token_id is not None and merge_size is not None:
            metadata.images(image_token_id, merge_size)
        return cls(
            input_ids.reshape(1, -1),
            labels.reshape(1, -1),
            cu_seqlens,
            pixel_values,
            image_grid_thw,
            metadata,
        )

    @classmethod
    def from_samples(
        cls,
        samples: Sequence,
        *,
        image_token_id: int | None = None,
        merge_size: int | None = None,
    ) -> "PackedBatch":
        """Concatenate processed samples (objects with `input_ids`, `labels`, `pixel_values`,
        `image_grid_thw`; the last two None without images) and compute the row's metadata (see
        `from_tensors` for `image_token_id` and `merge_size`)."""
        if not samples:
            raise InputError("cannot pack an empty list of samples")
        lengths = [int(s.input_ids.numel()) for s in samples]
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
        grids = [s.image_grid_thw for s in samples if s.image_grid_thw is not None]
        return cls.from_tensors(
            torch.cat([s.input_ids.reshape(-1) for s in samples]),
            torch.cat([s.labels.reshape(-1) for s in samples]),
            cu,
            torch.cat(pixels) if pixels else None,
            torch.cat([g.reshape(-1, 3) for g in grids]) if grids else None,
            image_token_id=image_token_id,
            merge_size=merge_size,
        )

    @property
    def num_supervised(self) -> int:
        """Supervised next-token targets of the row (what the model's loss sums over)."""
        if self.metadata is not None:
            return self.metadata.num_supervised
        targets = shifted_targets(self.labels, self.cu_seqlens.to(self.labels.device))
        return int((targets != IGNORE_INDEX).sum())

    def pin_memory(self) -> "PackedBatch":
        """The batch with its tensors, and the metadata tensors the forward copies to the device,
        in page-locked memory (needs CUDA), so those copies are truly asynchronous. torch's
        DataLoader calls it with `pin_memory=True` on objects that have it."""
        pinned = {
            name: None if value is None else value.pin_memory()
            for name, value in self.model_inputs().items()
            if isinstance(value, torch.Tensor) or value is None
        }
        metadata = None if self.metadata is None else self.metadata.pin_memory()
        return dataclasses.replace(self, **pinned, metadata=metadata)

    def model_inputs(self) -> dict[str, "torch.Tensor | PackedMetadata | None"]:
        """Keyword arguments for `LlavaOV.forward`: the tensors (to move to the model's device)
        and `metadata`, which stays on the host."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "cu_seqlens": self.cu_seqlens,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
            "metadata": self.metadata,
        }


def pad_row(
    batch: PackedBatch,
    *,
    image_token_id: int,
    pad_token_id: int,
    patch_dim: int,
    merge_size: int,
    ensure_image: bool = True,
    multiple_of: int = 1,
    length: int | None = None,
) -> PackedBatch:
    """`batch` with a padding sample appended when needed, else `batch` itself.

    The padding sample is one more sample at the end of the row (its own `cu_seqlens` entry, so
    no real token attends to it and the real samples' logits and loss are unchanged), with every
    label IGNORE_INDEX (the supervised count is unchanged). It holds:
    - with `ensure_image` and a row without any image: one `image_token_id` placeholder for a
      zero image of (merge_size x merge_size) patches (`patch_dim` values each), so the row runs
      the vision tower: under data parallelism every rank then runs the same FSDP collectives
      in forward and backward (a rank whose row skipped the ViT would hang its peers);
    - `pad_token_id` tokens until the row's length is a multiple of `multiple_of` (sequence and
      context parallelism split the row evenly over tp / cp ranks), or, with `length`, until it
      is exactly `length` tokens (pipeline parallelism sends states of one static shape);
      a row that is already longer is an InputError naming both lengths.

    The result's metadata is computed (image part included, for `image_token_id` and
    `merge_size`), so the model reads nothing back from the device for it either.
    """
    if multiple_of < 1 or merge_size < 1 or patch_dim < 1:
        raise InputError(
            f"pad_row needs multiple_of, merge_size and patch_dim >= 1; got {multiple_of}, "
            f"{merge_size}, {patch_dim}"
        )
    images = 0 if batch.image_grid_thw is None else batch.image_grid_thw.numel() // 3
    needs_image = ensure_image and images == 0
    tokens = int(batch.input_ids.numel())
    image_tokens = 1 if needs_image else 0
    pad_tokens = -(tokens + image_tokens) % multiple_of
    if length is not None:
        if length % multiple_of:
            raise InputError(f"pad_row: length {length} is not a multiple of {multiple_of}")
        if tokens + image_tokens > length:
            raise InputError(
                f"pad_row: the row has {tokens + image_tokens} tokens (padding image included), "
                f"more than the static length {length}"
            )
        pad_tokens = length - tokens - image_tokens
    if not needs_image and pad_tokens == 0:
        return batch
    ids = [image_token_id] * image_tokens + [pad_token_id] * pad_tokens
    padding = torch.tensor(ids, dtype=batch.input_ids.dtype)
    pixel_values, grid = batch.pixel_values, batch.image_grid_thw
    if needs_image:
        dtype = torch.float32 if pixel_values is None else pixel_values.dtype
        zero_image = torch.zeros(merge_size * merge_size, patch_dim, dtype=dtype)
        pixel_values = zero_image if pixel_values is None else torch.cat([pixel_values, zero_image])
        padding_grid = torch.tensor([[1, merge_size, merge_size]], dtype=torch.int64)
        grid = padding_grid if grid is None else torch.cat([grid.to(torch.int64), padding_grid])
    cu = batch.cu_seqlens.to(torch.int32)
    return PackedBatch.from_tensors(
        torch.cat([batch.input_ids.reshape(-1), padding]),
        torch.cat([batch.labels.reshape(-1), torch.full_like(padding, IGNORE_INDEX)]),
        torch.cat([cu, cu.new_tensor([tokens + len(ids)])]),
        pixel_values,
        grid,
        image_token_id=image_token_id,
        merge_size=merge_size,
    )
