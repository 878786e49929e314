"""Random state: seeding, deterministic mode, and RNG states as JSON for checkpoints.

Exact resume needs every generator a step may draw from to continue where it stopped: Python's
`random`, NumPy's global generator, torch's CPU generator and, when CUDA is in use, each
device's. `capture_rng_state`/`restore_rng_state` (from `rice_vit.rng_state`, shared with
`rice-vit pretrain`) turn them into plain JSON values rather than pickles, so a checkpoint holds
no executable data; they are restored after the model is built, since building it draws from them.

Deterministic mode (`torch.use_deterministic_algorithms`) makes kernels pick reproducible
algorithms; on CUDA cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG`, which must be set before
its first use, so `deterministic_mode` sets it (keeping a value the user set). The mode is a
process-wide switch: the context manager restores the previous setting, so a training run
inside a larger program (or a test session) leaves it as it found it.
"""

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from rice_vit.rng_state import capture_rng_state, restore_rng_state

__all__ = [
    "capture_rng_state",
    "deterministic_mode",
    "restore_rng_state",
    "resume_seed",
    "seed_everything",
]


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


def resume_seed(seed: int, step: int, rank: int) -> int:
    """The seed rank `rank` reseeds with when resuming at `step` in another world size than the
    checkpoint's (see checkpointing.py): distinct per rank and step, the same on every restart."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
