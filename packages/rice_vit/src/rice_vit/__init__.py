"""rice_vit: RICE-ViT: native-resolution vision encoder with 2D RoPE, image preprocessing and
checkpoint IO.

The public names are imported lazily (PEP 562) so that `import rice_vit` and `rice-vit --help`
do not pay for importing torch until a name that needs it is used.
"""

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

__version__ = version("rice-vit")

_EXPORTS = {
    "RiceViT": "rice_vit.model",
    "RiceViTOutput": "rice_vit.model",
    "RiceViTConfig": "rice_vit.config",
    "PRESETS": "rice_vit.config",
    "ImageProcessor": "rice_vit.processor",
    "smart_resize": "rice_vit.processor",
    "decode_image": "rice_vit.decode",
    "open_image": "rice_vit.decode",
    "varlen_attention": "rice_vit.attention",
    "select_backend": "rice_vit.attention",
    "BACKENDS": "rice_vit.attention",
    "inspect_checkpoint": "rice_vit.checkpoint",
    "merge_block_to_raster_index": "rice_vit.token_layout",
    "TokenLayout": "rice_vit.token_layout",
    "RiceViTError": "rice_vit.errors",
    "ConfigError": "rice_vit.errors",
    "CheckpointError": "rice_vit.errors",
    "ImageError": "rice_vit.errors",
    "ImageTooLargeError": "rice_vit.errors",
    "InputError": "rice_vit.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from rice_vit.attention import BACKENDS as BACKENDS
    from rice_vit.attention import select_backend as select_backend
    from rice_vit.attention import varlen_attention as varlen_attention
    from rice_vit.checkpoint import inspect_checkpoint as inspect_checkpoint
    from rice_vit.config import PRESETS as PRESETS
    from rice_vit.config import RiceViTConfig as RiceViTConfig
    from rice_vit.decode import decode_image as decode_image
    from rice_vit.decode import open_image as open_image
    from rice_vit.errors import CheckpointError as CheckpointError
    from rice_vit.errors import ConfigError as ConfigError
    from rice_vit.errors import ImageError as ImageError
    from rice_vit.errors import ImageTooLargeError as ImageTooLargeError
    from rice_vit.errors import InputError as InputError
    from rice_vit.errors import RiceViTError as RiceViTError
    from rice_vit.model import RiceViT as RiceViT
    from rice_vit.model import RiceViTOutput as RiceViTOutput
    from rice_vit.processor import ImageProcessor as ImageProcessor
    from rice_vit.processor import smart_resize as smart_resize
    from rice_vit.token_layout import TokenLayout as TokenLayout
    from rice_vit.token_layout import merge_block_to_raster_index as merge_block_to_raster_index


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rice_vit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
