"""Region sampling and the pixel box -> patch box mapping."""

import numpy as np
import pytest
from PIL import Image

from rice_vit.errors import InputError
from rice_vit.pretrain.regions import (
    patch_grid,
    pixel_box_to_patch_box,
    region_rng,
    sample_regions,
)
from rice_vit.processor import ImageProcessor


def test_more_regions_than_n_are_subsampled_without_replacement():
    picked = sample_regions(25, 10, rng=region_rng(0, 0, 3))
    assert picked.dtype == np.int64
    assert len(picked) == 10
    assert len(set(picked.tolist())) == 10
    assert picked.tolist() == sorted(picked.tolist())
    assert picked.min() >= 0
    assert picked.max() < 25


def test_fewer_regions_than_n_are_repeated_evenly():
    picked = sample_regions(3, 10, rng=region_rng(0, 0, 3))
    counts = np.bincount(picked, minlength=3)
    assert sorted(counts.tolist()) == [3, 3, 4]
    # cyclic: the first 3 are a permutation, then the same permutation again
    assert sorted(picked[:3].tolist()) == [0, 1, 2]
    assert picked[3:6].tolist() == picked[:3].tolist()


def test_sampling_is_deterministic_per_seed_epoch_and_image():
    draws = {
        key: sample_regions(40, 10, rng=region_rng(*key)).tolist()
        for key in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    }
    assert draws[(0, 0, 0)] == sample_regions(40, 10, rng=region_rng(0, 0, 0)).tolist()
    assert len({tuple(v) for v in draws.values()}) == 4
    assert sample_regions(4, None, rng=region_rng(0, 0, 0)).tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="at least one valid region"):
        sample_regions(0, 10, rng=region_rng(0, 0, 0))


def test_exact_patch_boxes_on_small_grids():
    # 280 x 140 image on a 20 x 10 (cols x rows) grid: 14 pixels a patch, no resize
    size, grid = (280, 140), (10, 20)
    assert pixel_box_to_patch_box((0, 0, 14, 14), size, grid) == (0, 0, 1, 1)
    assert pixel_box_to_patch_box((14, 28, 28, 42), size, grid) == (2, 1, 3, 2)
    assert pixel_box_to_patch_box((13, 0, 15, 1), size, grid) == (0, 0, 1, 2)  # straddles
    assert pixel_box_to_patch_box((0, 0, 280, 140), size, grid) == (0, 0, 10, 20)
    # a sliver on the last column stays inside the grid, one patch wide
    assert pixel_box_to_patch_box((279.5, 139.9, 280, 140), size, grid) == (9, 19, 10, 20)
    # scaled: 100 x 50 image -> 3 x 6 grid; x 33.4 * 6 / 100 = 2.004 -> floor 2
    assert pixel_box_to_patch_box((33.4, 0, 50, 25), (100, 50), (3, 6)) == (0, 2, 2, 3)
    # an edge exactly on a border (y1 25 of 75 on 3 rows = 1.0) does not spill over
    assert pixel_box_to_patch_box((0, 25, 10, 50), (100, 75), (3, 6)) == (1, 0, 2, 1)
    with pytest.raises(InputError, match="empty or inverted"):
        pixel_box_to_patch_box((5, 5, 5, 9), size, grid)


def _naive_patch_box(box, image_size, processor):
    """Resize a mask of the box with the processor's resize target and list the patches it
    touches: an independent route to the same answer."""
    width, height = image_size
    resized_h, resized_w = processor.resized_size(height, width)
    p = processor.patch_size
    x0, y0, x1, y1 = box
    rows = [
        r
        for r in range(resized_h // p)
        if (r + 1) * p * height > y0 * resized_h and r * p * height < y1 * resized_h
    ]
    cols = [
        c
        for c in range(resized_w // p)
        if (c + 1) * p * width > x0 * resized_w and c * p * width < x1 * resized_w
    ]
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def test_patch_boxes_match_a_naive_overlap_test_after_the_processors_resize():
    processor = ImageProcessor(min_pixels=3136, max_pixels=28 * 28 * 12)
    rng = np.random.default_rng(0)
    for width, height in [(100, 50), (37, 91), (300, 300), (57, 20)]:
        grid = patch_grid(width, height, processor)
        _pixels, grid_thw = processor(Image.new("RGB", (width, height)))
        assert tuple(grid_thw[0, 1:].tolist()) == grid
        for _ in range(50):
            x0, x1 = sorted(rng.integers(0, width + 1, 2).tolist())
            y0, y1 = sorted(rng.integers(0, height + 1, 2).tolist())
            if x0 == x1 or y0 == y1:
                continue
            expected = _naive_patch_box((x0, y0, x1, y1), (width, height), processor)
            assert pixel_box_to_patch_box((x0, y0, x1, y1), (width, height), grid) == expected
