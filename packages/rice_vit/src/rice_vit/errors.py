"""Exceptions of rice_vit. Each message names the file, tensor, image or value that is wrong."""


class RiceViTError(ValueError):
    """Base class of every error rice_vit raises on bad input, bad config or bad files."""


class ConfigError(RiceViTError):
    """A config value is invalid, or a config.json cannot be expressed by or read into
    `RiceViTConfig`."""


class CheckpointError(RiceViTError):
    """A checkpoint folder is unusable: missing files, unknown layout, missing, unexpected or
    mis-shaped tensors (all listed in the message)."""


class ImageError(RiceViTError):
    """An image cannot be used: undecodable or truncated file, too many pixels, impossible aspect
    ratio (the message names the file or the image's position in the call). `problem` is what
    is wrong without the name, for callers that name the image their own way."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem


class ImageTooLargeError(ImageError):
    """An image announces more pixels than allowed (`max_image_pixels`, or PIL's decompression
    bomb limit); refused from its header, before decoding."""


class InputError(RiceViTError):
    """Model or attention inputs are inconsistent (shapes, grids, cu_seqlens)."""
