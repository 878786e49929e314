"""Native-resolution image preprocessing, value for value the Qwen2-VL image processor with the
settings of the LLaVA-OneVision-1.5 release (transformers 4.53.1, the slow numpy/PIL path).

Per image:

1. Decode with `rice_vit.decode.decode_image`: a missing, undecodable or truncated file is an
   `ImageError` naming the file; the pixel count is checked from the header before any pixel
   is decoded (decompression bombs); EXIF orientation is not applied (neither does the
   official processor).
2. Convert to RGB with PIL's `convert("RGB")`, as transformers' `convert_to_rgb` does: grayscale,
   palette, CMYK, YCbCr, 16-bit and float modes are converted by PIL; an alpha channel is dropped,
   not composited on white.
3. `smart_resize`: round each side to a multiple of factor = patch_size * merge_size (28),
   half to even; if the area is above `max_pixels` scale both sides down by sqrt(area/max) and
   floor, if below `min_pixels` scale up and ceil; an aspect ratio above 200 is an error.
4. PIL bicubic resize of the uint8 image to that size, uint8 out; always applied (a same-size
   resize is a copy).
5. `x.astype(float64) * (1/255)` cast to float32, then `(x - mean) / std` in float32 with the
   CLIP mean and std.
6. Patchify: one row of C*P*P values (index c*P*P + py*P + px) per P x P patch, rows in 2x2
   merge-block order (block rows, block columns, then the block's (0,0), (0,1), (1,0), (1,1)).

Each step is the same numpy/PIL operation in the same dtype as the reference, so the output is
bitwise identical, not just close. One deliberate difference: transformers guesses the channel
axis of tiny images (an image 1 or 3 pixels high reads as channels-first); we know PIL images are
height x width x channels and never guess.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rice_vit.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from rice_vit.errors import ConfigError, ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESCALE_FACTOR = 1 / 255
MAX_ASPECT_RATIO = 200
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"

ImageInput = str | Path | Image.Image


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 3136,
    max_pixels: int = 2_560_000,
) -> tuple[int, int]:
    """(height, width) after the official smart_resize: multiples of `factor`, area within
    [min_pixels, max_pixels] when possible, aspect ratio kept. Raises `ImageError` for an aspect
    ratio above 200 or an empty image."""
    if height < 1 or width < 1:
        raise ImageError(f"image of {height} x {width} pixels has no pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image of {height} x {width} pixels: aspect ratio "
            f"{max(height, width) / min(height, width):.1f} is above {MAX_ASPECT_RATIO}"
        )
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def patchify(image_chw: np.ndarray, patch_size: int = 14, merge_size: int = 2) -> np.ndarray:
    """(C, H, W) -> (H/P * W/P, C*P*P) patch rows in merge-block order; H and W must be
    multiples of patch_size * merge_size."""
    channels, height, width = image_chw.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ImageError(f"cannot patchify {height} x {width}: sides must be multiples of {factor}")
    grid_h, grid_w = height // patch_size, width // patch_size
    blocks = image_chw.reshape(
        channels,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # -> (block row, block col, in-block row, in-block col, channel, py, px)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
    return blocks.reshape(grid_h * grid_w, channels * patch_size * patch_size)


@dataclass(frozen=True, kw_only=True)
class ImageProcessor:
    """Images (PIL or paths) -> `(pixel_values, grid_thw)` for `RiceViT`; the pipeline is in
    the module docstring."""

    min_pixels: int = 3136
    max_pixels: int = 2_560_000
    patch_size: int = 14
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Files whose header announces more pixels are refused before decoding."""

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "patch_size", "merge_size", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"ImageProcessor.{name} must be a positive integer, got {value!r}"
                )
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"ImageProcessor.min_pixels ({self.min_pixels}) is above max_pixels "
                f"({self.max_pixels})"
            )
        for name in ("image_mean", "image_std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(isinstance(v, int | float) for v in value):
                raise ConfigError(f"ImageProcessor.{name} must be 3 numbers (R, G, B), got {value}")
            object.__setattr__(self, name, value)
        if not all(s > 0 for s in self.image_std):
            raise ConfigError(f"ImageProcessor.image_std must be > 0, got {self.image_std}")

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def __call__(
        self, images: ImageInput | Iterable[ImageInput]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`pixel_values` (sum of h*w, 3*P*P) float32 with all images' patch rows concatenated,
        and `grid_thw` (images, 3) int64 = (1, h, w) in patches."""
        if isinstance(images, str | Path | Image.Image):
            images = [images]
        rows: list[np.ndarray] = []
        grids: list[tuple[int, int, int]] = []
        for position, image in enumerate(images):
            patches, grid = self.process_one(image, name=f"image {position}")
            rows.append(patches)
            grids.append(grid)
        if not rows:
            patch_dim = 3 * self.patch_size * self.patch_size
            return torch.empty(0, patch_dim), torch.empty(0, 3, dtype=torch.int64)
        pixel_values = torch.from_numpy(np.concatenate(rows, axis=0))
        return pixel_values, torch.tensor(grids, dtype=torch.int64)

    def process_one(
        self, image: ImageInput, *, name: str = "image"
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (patch rows (h*w, 3*P*P) float32, (1, h, w)). `name` labels errors for
        in-memory images; files are named by their path."""
        if isinstance(image, str | Path):
            label = str(image)
            image = decode_image(image, max_image_pixels=self.max_image_pixels)
        elif isinstance(image, Image.Image):
            label = name
        else:
            raise ImageError(f"{name}: expected a PIL image or a path, got {type(image).__name__}")
        if image.mode != "RGB":
            try:
                image = image.convert("RGB")
            except ValueError as error:
                raise ImageError(
                    f"{label}: cannot convert mode {image.mode} to RGB ({error})"
                ) from None
        width, height = image.size
        try:
            resized_height, resized_width = self.resized_size(height, width)
        except ImageError as error:
            raise ImageError(f"{label}: {error}") from None
        resized = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.uint8)
        pixels = (pixels.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
        mean = np.array(self.image_mean, dtype=np.float32)
        std = np.array(self.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
        patches = patchify(pixels.transpose(2, 0, 1), self.patch_size, self.merge_size)
        grid = (1, resized_height // self.patch_size, resized_width // self.patch_size)
        return np.ascontiguousarray(patches), grid

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "ImageProcessor":
        """Settings from a `preprocessor_config.json` (a file or a folder holding one); refuses
        settings this processor does not implement. `overrides` replace fields."""
        file = Path(path)
        if file.is_dir():
            file = file / PREPROCESSOR_CONFIG_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file}: not valid JSON ({error})") from None
        required = {
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": int(Image.Resampling.BICUBIC),
            "temporal_patch_size": 1,
        }
        for key, value in required.items():
            if key in data and data[key] != value:
                raise ConfigError(
                    f"{file}: {key} = {data[key]!r} is not supported (only {value!r})"
                )
        if "rescale_factor" in data and not math.isclose(data["rescale_factor"], RESCALE_FACTOR):
            raise ConfigError(f"{file}: rescale_factor {data['rescale_factor']} is not 1/255")
        size = data.get("size") or {}
        fields: dict[str, Any] = {
            "min_pixels": data.get("min_pixels", size.get("shortest_edge", 3136)),
            "max_pixels": data.get("max_pixels", size.get("longest_edge", 2_560_000)),
            "patch_size": data.get("patch_size", 14),
            "merge_size": data.get("merge_size", 2),
            "image_mean": tuple(data.get("image_mean", CLIP_MEAN)),
            "image_std": tuple(data.get("image_std", CLIP_STD)),
        }
        try:
            return cls(**(fields | overrides))
        except ConfigError as error:
            raise ConfigError(f"{file}: {error}") from None
