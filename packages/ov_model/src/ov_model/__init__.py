"""ov_model: LLaVA-OneVision-1.5 model: RICE-ViT + patch-merger projector + Qwen LLM, HF
checkpoints, processor, packed forward, generation.
"""

from importlib.metadata import version

__version__ = version("ov-model")
__all__ = ["__version__"]
