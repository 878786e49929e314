"""Random state: seeding, deterministic mode, and RNG states as JSON for checkpoints.

Exact resume needs every generator a step may draw from to continue where it stopped: Python's
`random`, NumPy's global generator, torch's CPU generator and, when CUDA is in use, each
device's. They are captured into plain JSON values (torch states as base64 of their bytes,
NumPy's key as a list of ints) rather than pickled, so a checkpoint holds no executable data,
and restored after the model is built, since building it draws from them.

Deterministic mode (`torch.use_deterministic_algorithms`) makes kernels pick reproducible
algorithms; on CUDA cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG`, which must be set before
its first use, so `deterministic_mode` sets it (keeping a value the user set). The mode is a
process-wide switch: the context manager restores the previous setting, so a training run
inside a larger program (or a test session) leaves it as it found it.
"""

import base64
import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within the block, torch uses deterministic algorithms if `enabled`; restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Every generator's state as JSON-compatible values."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": _encode(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # never start CUDA for this
        state["cuda"] = [_encode(s.cpu()) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what `capture_rng_state` captured (CUDA states only when devices exist)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(_decode(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([_decode(s) for s in states])


def resume_seed(seed: int, step: int, rank: int) -> int:
    """The seed rank `rank` reseeds with when resuming at `step` in another world size than the
    checkpoint's (see checkpointing.py): distinct per rank and step, the same on every restart."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
