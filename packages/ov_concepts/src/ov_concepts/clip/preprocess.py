"""open_clip's inference image transform, with Pillow and numpy instead of torchvision.

Same steps in the same order as open_clip's `image_transform(is_train=False)`: resize (shortest side
to the model's image size, long side truncated as torchvision computes it; or "squash" to a square),
centre crop (offsets rounded as torchvision rounds them), conversion to RGB (after resizing, as in
open_clip, so palette images resize with Pillow's nearest-neighbour rule there too), scaling to
[0, 1] and per-channel normalisation. torchvision's resize of a Pillow image is Pillow's own resize,
so the pixels match.

The transform is split in two so that the Pillow half can run in decoding worker processes
(`ov_concepts.decode.ResizeCrop`, uint8 out) and the arithmetic half batched in the model's process
(`normalise_pixels`); `preprocess_image` chains them, bit for bit the same either way.
"""

import numpy as np
import torch

from ov_concepts.clip.config import PreprocessConfig
from ov_concepts.decode import ResizeCrop


def resize_crop(size: int, config: PreprocessConfig) -> ResizeCrop:
    """The Pillow half of the transform for images of `size` pixels, picklable."""
    return ResizeCrop(size, config.resize_mode, config.interpolation)


def normalise_pixels(pixels: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """uint8 (..., size, size, 3) RGB as normalised float32 (..., 3, size, size)."""
    scaled = np.asarray(pixels, dtype=np.float32) / 255.0
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return torch.from_numpy(np.moveaxis((scaled - mean) / std, -1, -3).copy())


def preprocess_image(image, size: int, config: PreprocessConfig) -> torch.Tensor:
    """A Pillow image as a normalised float32 tensor (3, size, size)."""
    return normalise_pixels(resize_crop(size, config)(image), config)


def normalise_pixels_on(pixels: np.ndarray, config: PreprocessConfig, device) -> torch.Tensor:
    """`normalise_pixels` computed on `device` (uint8 crosses to it: a quarter of the bytes).

    The same three correctly rounded float32 operations in the same order, so the same bits.
    """
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    mean = torch.tensor(config.mean, dtype=torch.float32, device=batch.device)
    std = torch.tensor(config.std, dtype=torch.float32, device=batch.device)
    scaled = batch.to(torch.float32) / 255.0
    return ((scaled - mean) / std).movedim(-1, -3).contiguous()
