"""Encoded images: their size from the header, an optional full decode, the file extension.

Token counts need only each image's (height, width): PIL's `Image.open` parses the header and
stops, which costs microseconds where a decode costs milliseconds. But a header can be intact
while the data after it is truncated or corrupt, and such an image would only fail in the middle
of training. `verify=True` (the default of `PrepareConfig.verify_images`) therefore also decodes
every image once at preparation time: the price of one data-loader pass, paid offline, in
exchange for a training run that never meets an undecodable image. `verify=False` keeps the
header-only speed for corpora already known to be clean.

The bytes are kept exactly as found (no re-encoding: the shards carry the source bytes) and get
the extension of their real format, whatever the file or tar member was called.

Opening and decoding are rice_vit's (`rice_vit.open_image`, `rice_vit.decode_image`): the same
pixel limit, bomb guard and truncation check as the processor that later turns the image into
patches, so an image prepare accepts is one training can decode.
"""

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ov_train.data.raw_sample import Reason
from rice_vit import ImageError, ImageTooLargeError, open_image
from rice_vit import decode_image as rice_vit_decode_image

# PIL format name -> the extension the normalised source tars use.
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "PPM": "ppm",
}


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """An image's bytes as found, its extension by real format, and its size in pixels."""

    data: bytes
    ext: str
    height: int
    width: int


class ImageProblem(Exception):
    """Why an image reference cannot be used: a `Reason` and a detail for the report."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_image(
    ref: bytes | Path | None, *, max_pixels: int, verify: bool, name: str = "image"
) -> EncodedImage:
    """Load `ref` (bytes or a file), read its header and, with `verify`, decode it fully.

    Raises ImageProblem: `none_image` for None, `missing_file`, `undecodable_image` (not an image,
    an unsupported format, truncated data), `unusable_image` (more than `max_pixels` pixels,
    refused before decoding).
    """
    if ref is None:
        raise ImageProblem(Reason.NONE_IMAGE, f"{name} is null")
    if isinstance(ref, Path):
        try:
            data = ref.read_bytes()
        except FileNotFoundError:
            raise ImageProblem(Reason.MISSING_FILE, f"{name}: {ref} does not exist") from None
        except IsADirectoryError:
            raise ImageProblem(Reason.MISSING_FILE, f"{name}: {ref} is a directory") from None
        name = f"{name} ({ref})"
    else:
        data = ref
    try:
        with open_image(data, max_image_pixels=max_pixels, name=name) as image:
            width, height = image.size
            ext = FORMAT_EXTENSIONS.get(image.format or "", (image.format or "").lower())
        if verify:
            rice_vit_decode_image(data, max_image_pixels=max_pixels, name=name)
    except ImageTooLargeError as error:
        raise ImageProblem(Reason.UNUSABLE_IMAGE, str(error)) from None
    except ImageError as error:
        raise ImageProblem(Reason.UNDECODABLE_IMAGE, str(error)) from None
    if not ext.isalnum():
        raise ImageProblem(Reason.UNDECODABLE_IMAGE, f"{name}: unsupported format {ext!r}")
    return EncodedImage(data=data, ext=ext, height=height, width=width)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Fully decode encoded bytes to a PIL image (the loader's path; rice_vit's decoder).

    Raises ValueError with the reason; callers add which bin and sample it was.
    """
    try:
        return rice_vit_decode_image(data, max_image_pixels=max_pixels)
    except ImageError as error:
        raise ValueError(error.problem) from None
