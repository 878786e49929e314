"""ov_concepts: Concept balancing of image corpora: embed, top-K concept assignment, inverse-
frequency resampling, reports.
"""

from importlib.metadata import version

__version__ = version("ov-concepts")
__all__ = ["__version__"]
