"""open_clip's inference image transform, with Pillow and numpy instead of torchvision.

Same steps in the same order as open_clip's `image_transform(is_train=False)`: resize (shortest side
to the model's image size, long side truncated as torchvision computes it; or "squash" to a square),
centre crop (offsets rounded as torchvision rounds them), conversion to RGB (after resizing, as in
open_clip, so palette images resize with Pillow's nearest-neighbour rule there too), scaling to
[0, 1] and per-channel normalisation. torchvision's resize of a Pillow image is Pillow's own resize,
so the pixels match.
"""

import numpy as np
import torch

from ov_concepts.clip.config import PreprocessConfig


def _resize(image, size: int, config: PreprocessConfig):
    from PIL import Image

    resample = Image.Resampling.BICUBIC
    if config.interpolation == "bilinear":
        resample = Image.Resampling.BILINEAR
    width, height = image.size
    if config.resize_mode == "squash":
        return image.resize((size, size), resample)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize(new_size, resample)


def _centre_crop(image, size: int):
    width, height = image.size
    top = round((height - size) / 2.0)  # Python rounds half to even, as torchvision does
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def preprocess_image(image, size: int, config: PreprocessConfig) -> torch.Tensor:
    """A Pillow image as a normalised float32 tensor (3, size, size)."""
    image = _centre_crop(_resize(image, size, config), size).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())
