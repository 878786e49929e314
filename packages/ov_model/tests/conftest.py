"""Shared fixtures: the official tiny checkpoint and small random models built on the spot."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ov_model.config import LlavaOVConfig
from ov_model.model import LlavaOV

FIXTURES = Path(__file__).parents[3] / "fixtures" / "llava_ov_tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURES / "hf"


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference.safetensors")


def random_model(seed: int = 0, **text_changes) -> LlavaOV:
    """A tiny model with random weights (float32, eval mode)."""
    config = LlavaOVConfig.from_preset("tiny")
    if text_changes:
        config = config.replace(
            text=config.text.__class__(**{**_fields(config.text), **text_changes})
        )
    torch.manual_seed(seed)
    model = LlavaOV(config)
    with torch.no_grad():
        for parameter in model.parameters():  # norms away from 1, biases away from 0
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def _fields(config) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__ if name != "extra"}


@pytest.fixture(scope="session")
def make_model():
    """random_model(seed, **text_changes) for tests."""
    return random_model
