"""Decoding encoded images with limits: the one image decoder of the workspace.

ov_model's processor (through `ImageProcessor`), ov_train's data preparation and loader and
ov_eval's samples all decode through here, so an image refused in one place is refused in all,
with the same message. What it does, and deliberately does not:

- The pixel count is read from the header and checked against `max_image_pixels` before any
  pixel is decoded (decompression bombs); PIL's own bomb error (above twice its
  MAX_IMAGE_PIXELS, our default) is reported the same way, as `ImageTooLargeError`.
- A full decode (`decode_image`) fails on truncated or corrupt data: PIL's
  LOAD_TRUNCATED_IMAGES is left off, so a half-written file never becomes a half-grey image.
- The mode is kept as decoded unless `mode` asks for one (`"RGB"`: PIL's `convert`, an alpha
  channel dropped, not composited, as the release's processor does).
- EXIF orientation is not applied: the official processor does not either, and training and
  evaluation must see the same pixels.

Errors are `ImageError` (a ValueError) naming the image: its path, or the `name` the caller
gives (a sample, a row); `error.problem` is the same text without the name, for callers that
name the image their own way. Messages carry no object addresses, so reports are stable.
"""

import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from rice_vit.errors import ImageError, ImageTooLargeError

# PIL refuses images above twice its MAX_IMAGE_PIXELS while opening; this is the same limit.
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485

ImageSource = str | Path | bytes

_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def open_image(
    source: ImageSource,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Open `source` (a file path or encoded bytes) reading only its header, and check its
    pixel count. Returns the lazy PIL image (size and format known, pixels not decoded); the
    caller closes it (`with open_image(...) as image:`). Raises ImageError (no such file, not
    an image PIL can read) or ImageTooLargeError, naming `name` or the path."""
    label = name or (str(source) if isinstance(source, str | Path) else "image")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS; our own limit below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except FileNotFoundError:
        raise _error(label, "no such file") from None
    except IsADirectoryError:
        raise _error(label, "is a directory, not an image file") from None
    except Image.DecompressionBombError as error:
        problem = f"refused as a possible decompression bomb ({error})"
        raise _error(label, problem, ImageTooLargeError) from None
    except UnidentifiedImageError:
        raise _error(label, "not a decodable image (not a format PIL can read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise _error(label, f"not a decodable image ({_stable(error)})") from None
    width, height = image.size
    if width * height > max_image_pixels:
        image.close()
        problem = (
            f"{width} x {height} = {width * height} pixels is above the limit of "
            f"{max_image_pixels} (max_image_pixels); refused before decoding"
        )
        raise _error(label, problem, ImageTooLargeError)
    return image


def decode_image(
    source: ImageSource,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    name: str | None = None,
    mode: str | None = None,
) -> Image.Image:
    """Fully decode `source` (a file path or encoded bytes), checked as `open_image` does;
    `mode` (e.g. "RGB") converts it. Returns a PIL image detached from any file. Raises
    ImageError (also for truncated or corrupt data) or ImageTooLargeError, naming `name` or
    the path."""
    label = name or (str(source) if isinstance(source, str | Path) else "image")
    image = open_image(source, max_image_pixels=max_image_pixels, name=label)
    with image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise _error(label, f"truncated or corrupt image data ({_stable(error)})") from None
        if mode is not None and image.mode != mode:
            try:
                return image.convert(mode)
            except ValueError as error:
                problem = f"cannot convert mode {image.mode} to {mode} ({error})"
                raise _error(label, problem) from None
        # bytes: nothing to detach from; a file: copy so its handle closes here.
        return image if isinstance(source, bytes) else image.copy()


def _error(label: str, problem: str, kind: type[ImageError] = ImageError) -> ImageError:
    return kind(f"{label}: {problem}", problem=problem)


def _stable(error: BaseException) -> str:
    """The error's message without object addresses, so reports do not change between runs."""
    return _OBJECT_REPR.sub("<data>", str(error))
