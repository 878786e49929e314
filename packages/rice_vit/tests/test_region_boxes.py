"""RegionBoxes: construction, validation against the grid, device moves."""

import pytest
import torch

from rice_vit.errors import InputError
from rice_vit.region_boxes import RegionBoxes


def test_from_per_image_numbers_regions_image_by_image():
    regions = RegionBoxes.from_per_image([[(0, 0, 2, 2), (1, 1, 2, 3)], [], [(0, 0, 1, 1)]])
    assert len(regions) == 3
    assert regions.image_index.tolist() == [0, 0, 2]
    assert regions.boxes.dtype == torch.int64
    assert regions.boxes.tolist() == [[0, 0, 2, 2], [1, 1, 2, 3], [0, 0, 1, 1]]
    assert regions.areas().tolist() == [4, 2, 1]


def test_empty_regions_are_allowed():
    regions = RegionBoxes.from_lists([], [])
    assert len(regions) == 0
    assert regions.boxes.shape == (0, 4)
    regions.check_against_grid(torch.tensor([2]), torch.tensor([2]))


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((0, 0, 0, 2), "non-empty"),
        ((1, 0, 0, 2), "non-empty"),
        ((0, 2, 1, 2), "non-empty"),
        ((-1, 0, 1, 1), "row0, col0 >= 0"),
    ],
)
def test_degenerate_or_negative_boxes_are_errors_naming_the_region(box, reason):
    with pytest.raises(InputError, match=rf"region 1: .*{list(box)}.*{reason}"):
        RegionBoxes.from_lists([0, 0], [(0, 0, 1, 1), box])


def test_bad_shapes_and_dtypes_are_errors():
    with pytest.raises(InputError, match="integers"):
        RegionBoxes(torch.tensor([0]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(InputError, match=r"\(R, 4\)"):
        RegionBoxes(torch.tensor([0, 1]), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(InputError, match=r"\(R,\)"):
        RegionBoxes(torch.tensor([[0]]), torch.tensor([[0, 0, 1, 1]]))


def test_check_against_grid_names_the_region_outside_its_image():
    heights, widths = torch.tensor([4, 2]), torch.tensor([6, 2])
    RegionBoxes.from_lists([0, 1], [(0, 0, 4, 6), (1, 1, 2, 2)]).check_against_grid(heights, widths)
    with pytest.raises(InputError, match=r"region 1: .*outside image 1 of 2 x 2"):
        RegionBoxes.from_lists([0, 1], [(0, 0, 4, 6), (0, 0, 2, 3)]).check_against_grid(
            heights, widths
        )
    with pytest.raises(InputError, match=r"region 0: .*outside image 0 of 4 x 6"):
        RegionBoxes.from_lists([0], [(0, 0, 5, 1)]).check_against_grid(heights, widths)
    with pytest.raises(InputError, match=r"region 0: image_index 2 but the call has 2 images"):
        RegionBoxes.from_lists([2], [(0, 0, 1, 1)]).check_against_grid(heights, widths)


def test_to_returns_itself_on_the_same_device():
    regions = RegionBoxes.from_lists([0], [(0, 0, 1, 1)])
    assert regions.to("cpu") is regions
