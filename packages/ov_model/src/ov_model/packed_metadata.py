"""Host-side bookkeeping of a packed row, computed once on the CPU and handed to the model.

Why: on a GPU, every value a forward reads back from the device (`.item()`, `.tolist()`,
`int(t)`, `if t.any()`, `nonzero`, boolean indexing, `repeat_interleave` without `output_size`,
`masked_scatter`) stops the CPU until the GPU has drained its queue: nothing can be queued ahead,
and the GPU idles while Python catches up, once per read, per layer where a layer reads. The
bookkeeping of a packed row (sample boundaries and lengths, the longest sample, positions, which
rows have a supervised next-token target, which rows receive image features, the ViT's token
layout) depends only on token ids, labels and image grids, which the data loader holds on the
host anyway. So `PackedMetadata` computes it there (in loader workers, alongside training), and
the model moves a few index tensors to the device with non-blocking copies and reads nothing back.

What is read on the host is kept as Python ints and tuples (`sample_lengths`, `max_seqlen`,
`num_supervised`); what the device needs is kept as CPU tensors (`position_ids`,
`supervised_rows`, `supervised_targets`, `ImagePlacement.rows` and the ViT `TokenLayout`).

The image part depends on the model (its image token id and merge size); `images(...)` computes
it on first use and keeps it, so `PackedBatch.from_samples(..., image_token_id=, merge_size=)` can
compute it in the loader (and reject a sample whose placeholders do not match its images there,
naming it), and a metadata built without them still needs no device read: the model completes it
from the host ids. The model called without metadata builds it itself from host copies of its
inputs: a fixed handful of syncs per forward, whatever the number of layers and samples.
"""

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ov_model.errors import InputError
from rice_vit.token_layout import TokenLayout

IGNORE_INDEX = -100


def sample_lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Tokens per sample (int64)."""
    return cu_seqlens.diff().to(torch.int64)


def position_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """0, 1, ... restarting at every sample start, for the whole packed sequence."""
    lengths = sample_lengths(cu_seqlens)
    total = int(cu_seqlens[-1])
    starts = torch.repeat_interleave(cu_seqlens[:-1].to(torch.int64), lengths, output_size=total)
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
class ImagePlacement:
    """Where the image features of a packed row go, for one image token id and merge size."""

    image_token_id: int
    merge_size: int
    rows: torch.Tensor
    """(image tokens,) int64 CPU: the rows holding `image_token_id`, in order; image i's merged
    features fill the next `tokens_per_image[i]` of them."""
    tokens_per_image: tuple[int, ...]
    layout: TokenLayout | None
    """The ViT's layout of the row's images (host tensors), None without images."""


@dataclass(frozen=True, eq=False)
class PackedMetadata:
    """Host bookkeeping of one packed row (see the module docstring). Build with `build`."""

    input_ids: torch.Tensor
    """(tokens,) int64 CPU."""
    cu_seqlens: torch.Tensor
    """(samples + 1,) int32 CPU."""
    sample_lengths: tuple[int, ...]
    max_seqlen: int
    position_ids: torch.Tensor
    """(tokens,) int64 CPU: 0, 1, ... restarting at every sample."""
    supervised_rows: torch.Tensor | None
    """(supervised,) int64 CPU: rows whose next token, inside the same sample, is supervised;
    None when built without labels."""
    supervised_targets: torch.Tensor | None
    """(supervised,) int64 CPU: that next token for each supervised row."""
    image_grid_thw: torch.Tensor | None
    """(images, 3) int64 CPU."""
    _placements: dict[tuple[int, int], ImagePlacement] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def num_tokens(self) -> int:
        """Tokens in the row."""
        return int(self.input_ids.shape[0])

    @property
    def num_supervised(self) -> int:
        """Supervised next-token targets (what the loss sums over); 0 without labels."""
        return 0 if self.supervised_rows is None else int(self.supervised_rows.shape[0])

    @property
    def num_images(self) -> int:
        """Images of the row."""
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])

    @classmethod
    def build(
        cls,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        cu_seqlens: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
    ) -> "PackedMetadata":
        """Metadata of a packed row from its (tokens,) ids, labels aligned with them (the token
        itself where supervised, IGNORE_INDEX elsewhere, or None), cu_seqlens and image grids.
        Device tensors are copied to the host (a sync each)."""
        ids = input_ids.detach().reshape(-1).to("cpu", torch.int64)
        cu = cu_seqlens.detach().to("cpu", torch.int32)
        if cu.dim() != 1 or cu.numel() < 2:
            raise InputError(f"cu_seqlens must be 1-D with at least two entries, got {cu.tolist()}")
        lengths = tuple(sample_lengths(cu).tolist())
        if int(cu[0]) != 0 or int(cu[-1]) != ids.numel() or any(n < 0 for n in lengths):
            raise InputError(
                f"cu_seqlens must rise from 0 to the row length {ids.numel()}; got {cu.tolist()}"
            )
        rows = targets = None
        if labels is not None:
            flat = labels.detach().reshape(-1).to("cpu", torch.int64)
            if flat.numel() != ids.numel():
                raise InputError(f"labels have {flat.numel()} entries for {ids.numel()} tokens")
            shifted = shifted_targets(flat, cu)
            rows = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
            targets = shifted[rows]
        grid = None
        if image_grid_thw is not None:
            grid = torch.as_tensor(image_grid_thw).detach().to("cpu", torch.int64).reshape(-1, 3)
        return cls(
            input_ids=ids,
            cu_seqlens=cu,
            sample_lengths=lengths,
            max_seqlen=max(lengths, default=0),
            position_ids=position_ids(cu),
            supervised_rows=rows,
            supervised_targets=targets,
            image_grid_thw=grid,
        )

    def pin_memory(self) -> "PackedMetadata":
        """A copy whose tensors the forward moves to the device are page-locked (needs CUDA); the
        image placements computed so far are kept, pinned too."""
        pinned = dataclasses.replace(
            self,
            position_ids=self.position_ids.pin_memory(),
            supervised_rows=_pinned(self.supervised_rows),
            supervised_targets=_pinned(self.supervised_targets),
            _placements={},
        )
        for key, placement in self._placements.items():
            layout = placement.layout
            if layout is not None:
                fields = {name: getattr(layout, name).pin_memory() for name in layout.DEVICE_FIELDS}
                layout = dataclasses.replace(layout, **fields)
            pinned._placements[key] = dataclasses.replace(
                placement, rows=placement.rows.pin_memory(), layout=layout
            )
        return pinned

    def images(self, image_token_id: int, merge_size: int) -> ImagePlacement:
        """Where image features go for a model with this image token id and merge size (computed
        on first use, on the host). Raises InputError naming the first sample whose placeholders
        do not line up with whole images."""
        key = (image_token_id, merge_size)
        if key not in self._placements:
            self._placements[key] = self._place_images(image_token_id, merge_size)
        return self._placements[key]

    def _place_images(self, image_token_id: int, merge_size: int) -> ImagePlacement:
        is_image = self.input_ids == image_token_id
        layout = None
        tokens_per_image: tuple[int, ...] = ()
        if self.image_grid_thw is not None and self.num_images:
            layout = TokenLayout.from_grid_thw(self.image_grid_thw, merge_size)
            t, h, w = self.image_grid_thw.unbind(1)
            tokens_per_image = tuple((t * h * w // (merge_size * merge_size)).tolist())
        per_sample = segment_sums(is_image.to(torch.int64), self.cu_seqlens).tolist()
        check_placeholders(per_sample, tokens_per_image)
        return ImagePlacement(
            image_token_id=image_token_id,
            merge_size=merge_size,
            rows=is_image.nonzero().squeeze(1),
            tokens_per_image=tokens_per_image,
            layout=layout,
        )


def _pinned(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.pin_memory()


def check_placeholders(per_sample: Sequence[int], tokens_per_image: Sequence[int]) -> None:
    """Raise InputError unless each sample's image placeholder count covers whole images (the
    images taken in order) and all images are covered."""
    boundaries = {0, *itertools.accumulate(tokens_per_image)}
    running = sum(tokens_per_image)
    seen = 0
    for sample, count in enumerate(per_sample):
        seen += count
        if seen not in boundaries or (sample == len(per_sample) - 1 and seen != running):
            raise InputError(
                f"sample {sample} has {count} image placeholder tokens, which do not line up "
                f"with whole images: the images given hold {list(tokens_per_image)} tokens "
                f"(placeholders up to this sample: {seen}, image tokens in all: {running})"
            )
