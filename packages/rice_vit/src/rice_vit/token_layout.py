"""Where every image's class token and patches sit in the packed token sequence, and where every
patch sits in its image.

The encoder runs all images of a call as one sequence
`[cls_0, patches_0, cls_1, patches_1, ...]` split by `cu_seqlens`, so attention never crosses
images and every image gets its own class token. Patch rows arrive in 2x2 merge-block order (the
order the LLaVA-OV processor emits and the patch merger consumes): within an image of h x w patches
and merge size m, input row k is block `k // m**2` (blocks in raster order over the
(h/m) x (w/m) block grid), in-block row `(k // m) % m`, in-block column `k % m`.

Everything here is computed with a few vectorised integer ops over all patches at once (no Python
loop over images or patches), on the host, because the grid is host data anyway and the
attention backends need `max_seqlen` (and the `sdpa` backend every image's length) as Python
ints; the index tensors are then moved to the device once per forward, without blocking
(`TokenLayout.to`). A data loader can build the layout ahead of time (ov_model's packed metadata
does), so the forward reads nothing back from the device.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from rice_vit.errors import InputError


def _grid_tensor(grid_thw: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    grid = torch.as_tensor(grid_thw).detach().to("cpu")
    if grid.numel() == 0:
        return grid.reshape(0, 3).long()
    if grid.dim() != 2 or grid.shape[1] != 3 or grid.is_floating_point():
        raise InputError(
            f"grid_thw must be integers of shape (images, 3) = (t, h, w) per image, got shape "
            f"{tuple(grid.shape)} dtype {grid.dtype}"
        )
    return grid.long()


@dataclass(frozen=True)
class TokenLayout:
    """Packed-sequence bookkeeping for a batch of images (see the module docstring)."""

    num_images: int
    num_patches: int
    cu_seqlens: torch.Tensor
    """(images + 1,) int32 token offsets, class tokens included."""
    max_seqlen: int
    """Longest image in tokens (patches + 1)."""
    patch_counts: torch.Tensor
    """(images,) int64 patches per image."""
    class_index: torch.Tensor
    """(images,) int64 token row of each image's class token."""
    patch_index: torch.Tensor
    """(patches,) int64 token row of each input patch row."""
    patch_rows: torch.Tensor
    """(patches,) int64 grid row of each input patch row."""
    patch_cols: torch.Tensor
    """(patches,) int64 grid column of each input patch row."""
    sequence_lengths: tuple[int, ...]
    """Tokens of each image (patches + 1), host integers: cu_seqlens without a device read."""

    DEVICE_FIELDS = (  # the index tensors the forward uses on the model's device
        "cu_seqlens",
        "patch_counts",
        "class_index",
        "patch_index",
        "patch_rows",
        "patch_cols",
    )

    @property
    def num_tokens(self) -> int:
        """Patches plus one class token per image."""
        return self.num_patches + self.num_images

    def to(self, device: torch.device | str) -> "TokenLayout":
        """The layout with its index tensors on `device`, copied without blocking (itself when
        they are there already)."""
        device = torch.device(device)
        if self.cu_seqlens.device == device:
            return self
        moved = {
            name: getattr(self, name).to(device, non_blocking=True) for name in self.DEVICE_FIELDS
        }
        return replace(self, **moved)

    @classmethod
    def from_grid_thw(
        cls,
        grid_thw: torch.Tensor | Sequence[Sequence[int]],
        merge_size: int,
        device: torch.device | str = "cpu",
    ) -> "TokenLayout":
        """Validate `grid_thw` ((t, h, w) per image in patches, t == 1, h and w multiples of
        `merge_size`) and compute the layout on `device`."""
        grid = _grid_tensor(grid_thw)
        t, h, w = grid.unbind(1)
        bad = (t != 1) | (h < 1) | (w < 1) | (h % merge_size != 0) | (w % merge_size != 0)
        if bool(bad.any()):
            image = int(bad.nonzero()[0, 0])
            raise InputError(
                f"grid_thw row {image} = {grid[image].tolist()}: need t == 1 (images only) and "
                f"h, w positive multiples of the merge size {merge_size}"
            )
        counts = h * w
        num_images = int(grid.shape[0])
        num_patches = int(counts.sum())
        image_of_patch = torch.repeat_interleave(
            torch.arange(num_images), counts, output_size=num_patches
        )
        patch_start = torch.cumsum(counts, 0) - counts
        local = torch.arange(num_patches) - patch_start[image_of_patch]
        blocks_per_row = (w // merge_size)[image_of_patch]
        block = local // (merge_size * merge_size)
        rows = (block // blocks_per_row) * merge_size + (local // merge_size) % merge_size
        cols = (block % blocks_per_row) * merge_size + local % merge_size
        cu_seqlens = torch.zeros(num_images + 1, dtype=torch.int32)
        cu_seqlens[1:] = torch.cumsum(counts + 1, 0)
        sequence_lengths = tuple(n + 1 for n in counts.tolist())
        layout = cls(
            num_images=num_images,
            num_patches=num_patches,
            cu_seqlens=cu_seqlens,
            max_seqlen=max(sequence_lengths, default=0),
            patch_counts=counts,
            class_index=patch_start + torch.arange(num_images),
            patch_index=torch.arange(num_patches) + image_of_patch + 1,
            patch_rows=rows,
            patch_cols=cols,
            sequence_lengths=sequence_lengths,
        )
        return layout.to(device)


def merge_block_to_raster_index(height: int, width: int, merge_size: int = 2) -> torch.Tensor:
    """For an image of height x width patches, the raster (row-major) patch index of each row in
    merge-block order: `raster_features[index]` reorders MLCD-style outputs to our order."""
    layout = TokenLayout.from_grid_thw([[1, height, width]], merge_size)
    return layout.patch_rows * width + layout.patch_cols
