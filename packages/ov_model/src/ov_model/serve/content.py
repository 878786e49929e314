"""OpenAI chat messages -> the processor's conversation and the decoded images.

The conversation handed to `OVProcessor.prompt` is the OpenAI/HF dict form the processor already
reads (`conversation.py`): roles map one to one (`developer` is OpenAI's newer name for
`system`), text parts stay text and each `image_url` part becomes an `{"type": "image"}`
placeholder, so a request renders through exactly the chat template training used.

Images are where a server meets untrusted bytes, so each source is checked before anything is
decoded, and every refusal is an `ContentError` naming the part (`messages[1].content[0]`):
- `data:<type>;base64,<payload>`: the payload must be valid base64 and decode to an image;
- a local path (`file://...` or a plain path) only when the server was given `--image-root`,
  and only inside it once symbolic links and `..` are resolved;
- `http(s)://` and any other scheme: refused, the server makes no network calls;
- at most `max_images` image parts per request, counted before any is decoded;
- the pixel count is read from the header and checked against `max_image_pixels` before the
  pixels are decoded (`rice_vit.decode_image`), which also stops decompression bombs.
A literal `<image>` in text is refused too: the processor reads it as an image placeholder.
"""

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from ov_model.conversation import IMAGE_PLACEHOLDER
from ov_model.serve.schemas import ChatMessage, ImageContent, TextContent
from rice_vit import ImageError, ImageTooLargeError, decode_image

_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.DOTALL)
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI roles -> the roles of the chat template."""


class ContentError(ValueError):
    """A message part the server cannot use; `param` names it, `code` says why."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    """What a request may bring: image count, pixels per image, where local files may be."""

    max_images: int = 8
    max_image_pixels: int = 2**25
    image_root: Path | None = None
    """Local files are read only under this folder; None refuses every local path."""


@dataclass(frozen=True)
class RenderedInput:
    """A request's conversation in the processor's form, and its decoded RGB images in order."""

    conversation: list[dict]
    images: list[Image.Image]


def to_conversation(messages: Sequence[ChatMessage], limits: ImageLimits) -> RenderedInput:
    """The conversation and images of `messages`; raises `ContentError` naming the bad part."""
    _check_image_count(messages, limits)
    conversation: list[dict] = []
    images: list[Image.Image] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.content is None or isinstance(message.content, str):
            text = message.content or ""
            _check_text(text, f"{where}.content")
            conversation.append({"role": ROLES[message.role], "content": text})
            continue
        parts: list[dict] = []
        for part_index, part in enumerate(message.content):
            part_where = f"{where}.content[{part_index}]"
            if isinstance(part, TextContent):
                _check_text(part.text, f"{part_where}.text")
                parts.append({"type": "text", "text": part.text})
            else:
                images.append(load_image(part, limits, part_where))
                parts.append({"type": "image"})
        conversation.append({"role": ROLES[message.role], "content": parts})
    return RenderedInput(conversation, images)


def load_image(part: ImageContent, limits: ImageLimits, where: str) -> Image.Image:
    """The RGB image an `image_url` part names (see the module docstring for what is refused)."""
    url = part.image_url.url
    param = f"{where}.image_url.url"
    if url.startswith("data:"):
        source: bytes | Path = _data_url_bytes(url, param)
    else:
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            raise ContentError(
                f"{param}: remote image URLs are not fetched (the server makes no network "
                f"calls); send the image inline as a data: URL (data:image/png;base64,...)",
                param=param,
                code="remote_image_url",
            )
        if scheme not in ("", "file") and not _WINDOWS_DRIVE.match(url):
            raise ContentError(
                f"{param}: unsupported image URL scheme {scheme!r}; use a data: URL or a path "
                f"under the server's --image-root",
                param=param,
                code="unsupported_image_url",
            )
        source = _local_path(url, scheme == "file", limits.image_root, param)
    try:
        return decode_image(
            source, max_image_pixels=limits.max_image_pixels, name=param, mode="RGB"
        )
    except ImageTooLargeError as error:
        raise ContentError(str(error), param=param, code="image_too_large") from None
    except ImageError as error:
        raise ContentError(str(error), param=param, code="invalid_image") from None


def _check_image_count(messages: Sequence[ChatMessage], limits: ImageLimits) -> None:
    count = sum(
        isinstance(part, ImageContent)
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
    )
    if count > limits.max_images:
        raise ContentError(
            f"messages: the request holds {count} images; the server accepts at most "
            f"{limits.max_images} per request (--max-images)",
            param="messages",
            code="too_many_images",
        )


def _check_text(text: str, param: str) -> None:
    if IMAGE_PLACEHOLDER in text:
        raise ContentError(
            f"{param}: contains {IMAGE_PLACEHOLDER!r}, which the chat template reserves for "
            f"images; send images as image_url parts",
            param=param,
            code="reserved_text",
        )


def _data_url_bytes(url: str, param: str) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise ContentError(
            f"{param}: malformed data: URL (expected data:image/<format>;base64,<payload>)",
            param=param,
            code="invalid_image_url",
        )
    if ";base64" not in match["params"].lower():
        raise ContentError(
            f"{param}: data: URLs must be base64-encoded (data:image/<format>;base64,...)",
            param=param,
            code="invalid_image_url",
        )
    media_type = match["type"].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise ContentError(
            f"{param}: the data: URL's media type is {media_type!r}, not an image type",
            param=param,
            code="invalid_image",
        )
    payload = re.sub(r"\s+", "", match["payload"])
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ContentError(
            f"{param}: invalid base64 in the data: URL ({error})",
            param=param,
            code="invalid_base64",
        ) from None
    if not data:
        raise ContentError(
            f"{param}: the data: URL holds no bytes", param=param, code="invalid_image"
        )
    return data


def _local_path(url: str, is_file_url: bool, image_root: Path | None, param: str) -> Path:
    if image_root is None:
        raise ContentError(
            f"{param}: local image paths are refused: the server was started without "
            f"--image-root; send the image as a data: URL",
            param=param,
            code="local_image_refused",
        )
    if is_file_url:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ContentError(
                f"{param}: file:// URLs must name a local file (file:///path), got host "
                f"{parts.netloc!r}",
                param=param,
                code="invalid_image_url",
            )
        text = unquote(parts.path)
    else:
        text = url
    root = image_root.resolve()
    candidate = Path(text)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise ContentError(
            f"{param}: {text!r} is outside the server's --image-root; only files under it are read",
            param=param,
            code="image_path_outside_root",
        )
    if not path.is_file():
        raise ContentError(
            f"{param}: no image file {text!r} under --image-root",
            param=param,
            code="image_not_found",
        )
    return path
