"""rice_vit: RICE-ViT: native-resolution vision encoder with 2D RoPE, image preprocessing and
checkpoint IO.
"""

from importlib.metadata import version

__version__ = version("rice-vit")
__all__ = ["__version__"]
