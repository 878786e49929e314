"""Region boxes on the patch grid: the input of the encoder's region attention.

A `RegionBoxes` holds R boxes for one `RiceViT.encode` call: region r lies in image
`image_index[r]` of the call (any order, any number of regions per image, images without regions
allowed) and covers the patches `box_rows = [row0, row1)`, `box_cols = [col0, col1)` of that
image's (h, w) patch grid from `grid_thw` (half-open, in PATCH units, after the processor's resize;
the pixel -> patch mapping lives in `rice_vit.pretrain.regions`). The region embeddings the
encoder returns are in the same order as the boxes.

Construction checks what needs no grid (shapes, integer dtype, non-empty boxes, non-negative
coordinates); `check_against_grid` (called by `encode`) checks the image index and that every box
lies inside its image. Errors name the offending region index and its values; nothing is clipped
or dropped here. Keep the boxes on the host (a data loader's CPU tensors): the checks then need no
device read, and `encode` copies them to the model's device itself.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rice_vit.errors import InputError


def _int_tensor(values: torch.Tensor | Sequence, name: str, shape_hint: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"RegionBoxes.{name} must be integers {shape_hint}, got {tensor.dtype}")
    return tensor.to(torch.int64)


@dataclass(frozen=True)
class RegionBoxes:
    """R regions of one encode call: `image_index` (R,) int64 and `boxes` (R, 4) int64
    (row0, col0, row1, col1), half-open, in patch units of the region's image (see the module
    docstring). Validated on construction; `check_against_grid` validates against the images."""

    image_index: torch.Tensor
    """(R,) int64: which image of the encode() call each region is in."""
    boxes: torch.Tensor
    """(R, 4) int64 (row0, col0, row1, col1), half-open, in patch units of that image's grid."""

    def __post_init__(self) -> None:
        image_index = _int_tensor(self.image_index, "image_index", "of shape (R,)")
        boxes = _int_tensor(self.boxes, "boxes", "of shape (R, 4)")
        if boxes.numel() == 0 and image_index.numel() == 0:
            boxes = boxes.reshape(0, 4)
            image_index = image_index.reshape(0)
        if image_index.dim() != 1:
            raise InputError(
                f"RegionBoxes.image_index must have shape (R,), got {tuple(image_index.shape)}"
            )
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != image_index.shape[0]:
            raise InputError(
                f"RegionBoxes.boxes must have shape (R, 4) with R = len(image_index) = "
                f"{image_index.shape[0]}, got {tuple(boxes.shape)}"
            )
        if image_index.device != boxes.device:
            raise InputError(
                f"RegionBoxes tensors must share a device, got image_index on "
                f"{image_index.device} and boxes on {boxes.device}"
            )
        object.__setattr__(self, "image_index", image_index)
        object.__setattr__(self, "boxes", boxes)
        if len(self) == 0:
            return
        host_index, host_boxes = image_index.cpu(), boxes.cpu()
        row0, col0, row1, col1 = host_boxes.unbind(1)
        bad = (host_index < 0) | (row0 < 0) | (col0 < 0) | (row1 <= row0) | (col1 <= col0)
        if bool(bad.any()):
            region = int(bad.nonzero()[0, 0])
            raise InputError(
                f"region {region}: image {int(host_index[region])}, box (row0, col0, row1, col1) "
                f"= {host_boxes[region].tolist()}: need image >= 0, row0, col0 >= 0 and a "
                f"non-empty half-open box (row1 > row0, col1 > col0); {int(bad.sum())} of "
                f"{len(self)} regions are invalid"
            )

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @classmethod
    def from_lists(
        cls, image_index: Sequence[int], boxes: Sequence[Sequence[int]]
    ) -> "RegionBoxes":
        """From Python lists: `image_index[r]` and `boxes[r] = (row0, col0, row1, col1)`."""
        index = torch.tensor(list(image_index), dtype=torch.int64)
        box_tensor = torch.tensor([list(b) for b in boxes], dtype=torch.int64)
        return cls(index, box_tensor.reshape(-1, 4) if box_tensor.numel() == 0 else box_tensor)

    @classmethod
    def from_per_image(cls, boxes_per_image: Sequence[Sequence[Sequence[int]]]) -> "RegionBoxes":
        """From one list of (row0, col0, row1, col1) boxes per image of the call, in order
        (regions are numbered image by image)."""
        index = [image for image, boxes in enumerate(boxes_per_image) for _ in boxes]
        return cls.from_lists(index, [box for boxes in boxes_per_image for box in boxes])

    def to(self, device: torch.device | str) -> "RegionBoxes":
        """The boxes on `device` (itself when they are there already)."""
        device = torch.device(device)
        if self.boxes.device == device:
            return self
        return RegionBoxes(
            self.image_index.to(device, non_blocking=True), self.boxes.to(device, non_blocking=True)
        )

    def areas(self) -> torch.Tensor:
        """(R,) int64 patches inside each box."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def check_against_grid(self, heights: torch.Tensor, widths: torch.Tensor) -> None:
        """Raise `InputError` naming the first bad region unless every region's image exists
        (index < number of images) and its box lies inside that image's (h, w) patch grid.
        `heights`, `widths`: (images,) patches per image side (host tensors avoid a sync)."""
        if len(self) == 0:
            return
        heights, widths = heights.cpu().long(), widths.cpu().long()
        index, boxes = self.image_index.cpu(), self.boxes.cpu()
        images = int(heights.shape[0])
        missing = index >= images
        if bool(missing.any()):
            region = int(missing.nonzero()[0, 0])
            raise InputError(
                f"region {region}: image_index {int(index[region])} but the call has {images} "
                f"images; {int(missing.sum())} of {len(self)} regions name a missing image"
            )
        outside = (boxes[:, 2] > heights[index]) | (boxes[:, 3] > widths[index])
        if bool(outside.any()):
            region = int(outside.nonzero()[0, 0])
            image = int(index[region])
            raise InputError(
                f"region {region}: box (row0, col0, row1, col1) = {boxes[region].tolist()} is "
                f"outside image {image} of {int(heights[image])} x {int(widths[image])} patches; "
                f"{int(outside.sum())} of {len(self)} regions are outside their image"
            )
