"""Shared pytest hooks for every package's tests and the root integration tests.

`gpu` tests are skipped (with the reason) when torch sees no CUDA device, so the same suite runs
on a laptop, in CI and on the GPU machine. torch is imported only when such a test was collected.
"""

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
