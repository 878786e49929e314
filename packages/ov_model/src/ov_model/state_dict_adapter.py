"""HF checkpoint names <-> this package's module names, in one place, both directions.

| HF name (written) | also read | module name |
|---|---|---|
| `visual.merger.*` | `model.visual.merger.*` | `projector.*` |
| `visual.*` | `model.visual.*` | `vision.*` |
| `model.*` | `model.language_model.*` | `language_model.*` |
| `lm_head.weight` | | `lm_head.weight` (absent when tied) |

transformers >= 4.52 saves the first column; older saves and in-memory names use the second.
"""

from collections.abc import Iterable, Mapping

import torch

# (HF prefix, module prefix), most specific first.
_READ_PREFIXES = (
    ("model.visual.merger.", "projector."),
    ("visual.merger.", "projector."),
    ("model.visual.", "vision."),
    ("visual.", "vision."),
    ("model.language_model.", "language_model."),
    ("model.", "language_model."),
    ("lm_head.", "lm_head."),
)
_WRITE_PREFIXES = (
    ("projector.", "visual.merger."),
    ("vision.", "visual."),
    ("language_model.", "model."),
    ("lm_head.", "lm_head."),
)


def _rename(name: str, prefixes: Iterable[tuple[str, str]]) -> str | None:
    for source, target in prefixes:
        if name.startswith(source):
            return target + name.removeprefix(source)
    return None


def from_hf(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Module state dict from HF tensors, and the HF names that map to nothing."""
    state, unknown = {}, []
    for name, tensor in tensors.items():
        mapped = _rename(name, _READ_PREFIXES)
        if mapped is None:
            unknown.append(name)
        else:
            state[mapped] = tensor
    return state, unknown


def to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors (the names transformers >= 4.52 writes) from a module state dict."""
    out = {}
    for name, tensor in state.items():
        mapped = _rename(name, _WRITE_PREFIXES)
        if mapped is None:
            raise KeyError(f"no HF name for module tensor {name!r}")
        out[mapped] = tensor
    return out


def hf_name(module_name: str) -> str:
    """The HF name written for one module tensor (for error messages)."""
    return _rename(module_name, _WRITE_PREFIXES) or module_name
