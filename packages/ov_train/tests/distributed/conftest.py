"""The distributed tests' harness (`harness.py`), loaded by path and given as the `dist` fixture
(test modules are imported without a package path)."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "ov_train_dist_harness", Path(__file__).with_name("harness.py")
)
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


@pytest.fixture(scope="session")
def dist():
    """The harness module: run_workers, train, train_distributed, cosine, ..."""
    return harness
