"""Device choice and the dtype policy: bf16 autocast on CUDA, fp32 on CPU, fp32 master weights.

The release trains in bf16 with fp32 master weights. Here parameters, gradients and AdamW states
stay fp32 and the forward runs under `torch.autocast(bfloat16)`: matmuls and attention in bf16,
reductions (norms, softmax, the loss) in fp32 as autocast's op lists decide. On CPU the default
is plain fp32: CPU bf16 matmuls are slower than fp32 on most machines, and fp32 is the reference
the exact-resume and accumulation tests compare bitwise. `train.dtype = "bf16"` forces autocast
on CPU too; `"fp32"` turns it off on CUDA.
"""

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from ov_train.errors import TrainingError


def resolve_device(spec: str) -> torch.device:
    """`train.device` as a torch.device: auto is CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device is {spec!r} but CUDA is not available")
    return device


def autocast_dtype(policy: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.dtype` on `device` (None: no autocast, fp32)."""
    if policy == "fp32":
        return None
    if policy == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None


def autocast_factory(policy: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A function returning the context a forward pass runs in."""
    dtype = autocast_dtype(policy, device)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
