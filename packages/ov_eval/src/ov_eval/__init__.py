"""ov_eval: Offline benchmark evaluation of LLaVA-OneVision-class checkpoints with the official
metrics.
"""

from importlib.metadata import version

__version__ = version("ov-eval")
__all__ = ["__version__"]
