"""ov-model serve: continuous-batching generation (`engine.py`) behind an OpenAI-compatible HTTP
API and a browser chat page."""

from ov_model.serve.engine import (
    Engine,
    EngineClosed,
    EngineRequest,
    QueueFull,
    RequestHandle,
    SamplingSettings,
)

__all__ = [
    "Engine",
    "EngineClosed",
    "EngineRequest",
    "QueueFull",
    "RequestHandle",
    "SamplingSettings",
]
