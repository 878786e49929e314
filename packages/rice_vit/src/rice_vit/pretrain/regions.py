"""Regions per image for training: which N regions an image contributes in an epoch, and
where a pixel box lands on the encoder's patch grid.

Sampling (RICE 3.1: N regions per image, N = 10 was best): with more valid regions than N, N of
them are drawn without replacement; with fewer, all of them are repeated cyclically after a
seeded permutation, so every region appears floor(N / n) or ceil(N / n) times (never one region
N times while another is missing). The generator is seeded from (seed, epoch, manifest row), so
the draw of an image does not depend on batch composition, worker count or resume point.

Grid mapping: `rice_vit.processor` resizes an H x W image to H' x W' (smart_resize at native
resolution, multiples of 28) and cuts P x P patches, a grid of H'/P rows by W'/P columns. A
pixel box of the original image maps to patch units by scaling with rows/H and cols/W (the
resize stretches the whole image onto the grid), then flooring the start and ceiling the end
(every patch the box touches is inside the patch box), clamping to the grid and keeping at
least one patch per side. Arithmetic is exact (fractions), so a box edge on a patch border
never slips into the neighbouring patch through rounding.
"""

from collections.abc import Sequence
from fractions import Fraction
from math import ceil, floor

import numpy as np

from rice_vit.errors import InputError
from rice_vit.processor import ImageProcessor

DEFAULT_REGIONS_PER_IMAGE = 10


def region_rng(seed: int, epoch: int, image_row: int) -> np.random.Generator:
    """The generator that samples the regions of manifest row `image_row` in `epoch`."""
    for name, value in (("seed", seed), ("epoch", epoch), ("image_row", image_row)):
        if value < 0:
            raise InputError(f"region_rng: {name} must be >= 0, got {value}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, image_row])))


def sample_regions(
    n_valid: int, n: int | None = DEFAULT_REGIONS_PER_IMAGE, *, rng: np.random.Generator
) -> np.ndarray:
    """Indices (into the image's valid regions) of the `n` regions to train on, int64 (n,):
    `n` distinct ones in increasing order when `n_valid >= n`, else a seeded permutation of all
    `n_valid` repeated cyclically to length `n`. `n=None` takes every region once, in order
    (no randomness). Raises InputError for `n_valid < 1` or `n < 1`."""
    if n_valid < 1:
        raise InputError(f"sample_regions: an image needs at least one valid region, got {n_valid}")
    if n is None:
        return np.arange(n_valid, dtype=np.int64)
    if n < 1:
        raise InputError(f"sample_regions: n must be >= 1 (or None for all), got {n}")
    order = rng.permutation(n_valid).astype(np.int64)
    if n_valid >= n:
        return np.sort(order[:n])
    return np.resize(order, n)


def patch_grid(width: int, height: int, processor: ImageProcessor) -> tuple[int, int]:
    """(rows, cols) of the patch grid the processor gives a `width` x `height` image."""
    resized_height, resized_width = processor.resized_size(height, width)
    return resized_height // processor.patch_size, resized_width // processor.patch_size


def pixel_box_to_patch_box(
    box: Sequence[float], image_size: tuple[int, int], grid: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of an image of `image_size` = (width, height) -> half-open
    patch box (row0, col0, row1, col1) on a `grid` = (rows, cols) grid: scale, floor the start,
    ceil the end, clamp to the grid, at least one patch per side (the format of
    `RegionBoxes.boxes`)."""
    width, height = image_size
    rows, cols = grid
    if width < 1 or height < 1 or rows < 1 or cols < 1:
        raise InputError(f"pixel_box_to_patch_box: bad image size {image_size} or grid {grid}")
    x0, y0, x1, y1 = (Fraction(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"pixel_box_to_patch_box: empty or inverted box {tuple(box)}")
    col0, col1 = _span(x0 * cols / width, x1 * cols / width, cols)
    row0, row1 = _span(y0 * rows / height, y1 * rows / height, rows)
    return row0, col0, row1, col1


def _span(start: Fraction, end: Fraction, size: int) -> tuple[int, int]:
    first = min(max(floor(start), 0), size - 1)
    last = min(max(ceil(end), first + 1), size)
    return first, last
