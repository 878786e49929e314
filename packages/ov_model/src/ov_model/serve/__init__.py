"""ov-model serve: continuous-batching generation (`engine.py`) behind an OpenAI-compatible HTTP
API and a browser chat page.

The engine's names are imported lazily (PEP 562), so that importing `ov_model.serve` (as the CLI
does to register `ov-model serve`) does not pay for importing torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "ov_model.serve.engine",
    "EngineClosed": "ov_model.serve.engine",
    "EngineRequest": "ov_model.serve.engine",
    "QueueFull": "ov_model.serve.engine",
    "RequestHandle": "ov_model.serve.engine",
    "SamplingSettings": "ov_model.serve.engine",
}

__all__ = [
    "Engine",
    "EngineClosed",
    "EngineRequest",
    "QueueFull",
    "RequestHandle",
    "SamplingSettings",
]

if TYPE_CHECKING:
    from ov_model.serve.engine import (
        Engine,
        EngineClosed,
        EngineRequest,
        QueueFull,
        RequestHandle,
        SamplingSettings,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
