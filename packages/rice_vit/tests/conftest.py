"""Shared fixtures: small random encoders and random inputs."""

import pytest
import torch

from rice_vit.config import PRESETS
from rice_vit.model import RiceViT


@pytest.fixture
def tiny_model() -> RiceViT:
    """A seeded random encoder of the tiny preset in fp32, eval mode."""
    torch.manual_seed(0)
    return RiceViT(PRESETS["rice-vit-tiny"]).eval()


def _random_images(
    grids: list[tuple[int, int]], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    patches = sum(h * w for h, w in grids)
    pixel_values = torch.randn(patches, 3 * 14 * 14, generator=generator)
    return pixel_values, torch.tensor([[1, h, w] for h, w in grids])


@pytest.fixture
def random_images():
    """`random_images([(h, w), ...], seed)` -> (pixel_values, grid_thw) of random patch rows."""
    return _random_images
