"""ov_model: the LLaVA-OneVision-1.5 model (RICE-ViT + patch merger + Qwen3/Qwen2 LLM) without
a transformers dependency: HF checkpoint IO, processor, packed forward and generation.

Public names are imported lazily (PEP 562) so that `import ov_model` and `ov-model --help` do not
pay for importing torch until a name that needs it is used.
"""

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

__version__ = version("ov-model")

_EXPORTS = {
    "LlavaOV": "ov_model.model",
    "LlavaOVOutput": "ov_model.model",
    "LlavaOVConfig": "ov_model.config",
    "TextConfig": "ov_model.config",
    "PRESETS": "ov_model.config",
    "OVProcessor": "ov_model.processor",
    "ProcessedSample": "ov_model.processor",
    "ProcessedPrompt": "ov_model.processor",
    "SampleLength": "ov_model.processor",
    "TextTokenizer": "ov_model.tokenizer",
    "build_tokenizer": "ov_model.tokenizer",
    "PackedBatch": "ov_model.packing",
    "PackedMetadata": "ov_model.packed_metadata",
    "pad_row": "ov_model.packing",
    "IGNORE_INDEX": "ov_model.packing",
    "GenerationConfig": "ov_model.generation",
    "initialise": "ov_model.init",
    "OVModelError": "ov_model.errors",
    "ConfigError": "ov_model.errors",
    "CheckpointError": "ov_model.errors",
    "InputError": "ov_model.errors",
    "ProcessorError": "ov_model.processor_errors",
    "SampleError": "ov_model.processor_errors",
}
__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "GenerationConfig",
    "InputError",
    "LlavaOV",
    "LlavaOVConfig",
    "LlavaOVOutput",
    "OVModelError",
    "OVProcessor",
    "PackedBatch",
    "PackedMetadata",
    "ProcessedPrompt",
    "ProcessedSample",
    "ProcessorError",
    "SampleError",
    "SampleLength",
    "TextConfig",
    "TextTokenizer",
    "__version__",
    "build_tokenizer",
    "initialise",
    "pad_row",
]

if TYPE_CHECKING:
    from ov_model.config import PRESETS, LlavaOVConfig, TextConfig
    from ov_model.errors import CheckpointError, ConfigError, InputError, OVModelError
    from ov_model.generation import GenerationConfig
    from ov_model.init import initialise
    from ov_model.model import LlavaOV, LlavaOVOutput
    from ov_model.packed_metadata import PackedMetadata
    from ov_model.packing import IGNORE_INDEX, PackedBatch, pad_row
    from ov_model.processor import OVProcessor, ProcessedPrompt, ProcessedSample, SampleLength
    from ov_model.processor_errors import ProcessorError, SampleError
    from ov_model.tokenizer import TextTokenizer, build_tokenizer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ov_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
