"""ov_train: Three-stage LLaVA-OneVision-1.5 trainer on torch.distributed: recipes, packed data,
exact resume, quickstart.
"""

from importlib.metadata import version

__version__ = version("ov-train")
__all__ = ["__version__"]
