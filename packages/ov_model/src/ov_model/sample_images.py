"""The image side of a sample: checking the count, patchifying, grids from sizes alone.

A conversation's `<image>` placeholders and the images given must match one to one. Each image
becomes rice_vit patch rows and a grid (1, h, w) in patches; the LLM sees h * w / merge_size^2
`<|image_pad|>` tokens for it. `grids_from_sizes` computes the same grids from (height, width)
alone (rice_vit's smart_resize), which is how data preparation counts tokens without decoding a
pixel. Errors are `SampleImageError`/`ImageCountError` naming the sample and the image.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ov_model.conversation import Message
from ov_model.processor_errors import (
    ImageCountError,
    ProcessorError,
    SampleImageError,
    describe_sample,
)
from rice_vit import ImageError, ImageProcessor

ImageInput = str | Path | Image.Image
Grid = tuple[int, int, int]


def as_image_list(images: ImageInput | Sequence[ImageInput] | None) -> list[ImageInput]:
    """`images` as a list: None is none, one image or path a list of one."""
    if images is None:
        return []
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if not isinstance(images, Sequence):
        raise ProcessorError(
            f"images must be a PIL image, a path, or a list of them; got {type(images).__name__}"
        )
    return list(images)


def check_image_count(
    messages: Sequence[Message], images: Sequence[Any], sample_id: str | int | None
) -> None:
    """ImageCountError unless there is one image (or image size) per `<image>` placeholder."""
    placeholders = sum(message.num_images for message in messages)
    if placeholders != len(images):
        raise ImageCountError(placeholders=placeholders, images=len(images), sample_id=sample_id)


def image_token_count(image_processor: ImageProcessor, grid: Grid) -> int:
    """`<|image_pad|>` tokens of an image of this grid: one per merged block of patches."""
    return grid[0] * grid[1] * grid[2] // image_processor.merge_size**2


def process_images(
    image_processor: ImageProcessor, images: list[ImageInput], sample_id: str | int | None
) -> tuple[list[np.ndarray], list[Grid]]:
    """Each image's patch rows and grid; SampleImageError naming the sample and the image."""
    rows: list[np.ndarray] = []
    grids: list[Grid] = []
    for index, image in enumerate(images):
        name = f"{describe_sample(sample_id)}, image {index}"
        try:
            patches, grid = image_processor.process_one(image, name=name)
        except ImageError as error:
            message = str(error) if str(error).startswith(name) else f"{name}: {error}"
            raise SampleImageError(message, sample_id=sample_id) from None
        rows.append(patches)
        grids.append(grid)
    return rows, grids


def grids_from_sizes(
    image_processor: ImageProcessor,
    image_sizes: Sequence[tuple[int, int]],
    sample_id: str | int | None,
) -> list[Grid]:
    """The grids `process_images` would give images of these (height, width) in pixels."""
    grids = []
    for index, size in enumerate(image_sizes):
        if len(size) != 2 or not all(isinstance(side, int) for side in size):
            raise SampleImageError(
                f"{describe_sample(sample_id)}, image {index}: a size is (height, width) in "
                f"pixels, got {size!r}",
                sample_id=sample_id,
            )
        try:
            resized_height, resized_width = image_processor.resized_size(*size)
        except ImageError as error:
            raise SampleImageError(
                f"{describe_sample(sample_id)}, image {index}: {error}", sample_id=sample_id
            ) from None
        patch = image_processor.patch_size
        grids.append((1, resized_height // patch, resized_width // patch))
    return grids


def pixel_tensor(rows: list[np.ndarray]) -> torch.Tensor | None:
    """The images' patch rows concatenated, or None without images."""
    return torch.from_numpy(np.concatenate(rows, axis=0)) if rows else None


def grid_tensor(grids: list[Grid]) -> torch.Tensor | None:
    """(images, 3) int64 grids, or None without images."""
    return torch.tensor(grids, dtype=torch.int64) if grids else None
