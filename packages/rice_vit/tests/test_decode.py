"""The workspace's one image decoder: header-first pixel limit, truncation, mode, stable errors."""

import io

import pytest
from PIL import Image

from rice_vit import ImageError, ImageTooLargeError, decode_image, open_image


def _encoded(width: int, height: int, mode: str = "RGB", format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=format)
    return buffer.getvalue()


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bytes_and_files_decode_to_the_same_pixels(tmp_path):
    data = _encoded(12, 9, "RGBA")
    (tmp_path / "a.png").write_bytes(data)
    from_bytes = decode_image(data)
    from_file = decode_image(tmp_path / "a.png")
    assert from_bytes.mode == from_file.mode == "RGBA"  # kept as decoded unless asked
    assert from_bytes.tobytes() == from_file.tobytes()
    assert decode_image(data, mode="RGB").mode == "RGB"
    with open_image(data) as lazy:
        assert (lazy.size, lazy.format) == ((12, 9), "PNG")


def test_the_pixel_limit_is_checked_from_the_header_and_named(tmp_path):
    data = _encoded(50, 40)
    with pytest.raises(ImageTooLargeError) as caught:
        open_image(data, max_image_pixels=1999, name="sample 7 image 0")
    assert str(caught.value) == (
        "sample 7 image 0: 50 x 40 = 2000 pixels is above the limit of 1999 "
        "(max_image_pixels); refused before decoding"
    )
    assert caught.value.problem == str(caught.value).removeprefix("sample 7 image 0: ")
    assert decode_image(data, max_image_pixels=2000).size == (50, 40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image: not a decodable image (not a format PIL can read)"),
        (b"plain text", "image: not a decodable image (not a format PIL can read)"),
        (_noise_png()[:-300], "image: truncated or corrupt image data (image file is"),
    ],
)
def test_unreadable_bytes_are_image_errors_without_object_addresses(data, message):
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert not isinstance(caught.value, ImageTooLargeError)
    assert str(caught.value).startswith(message)
    assert " at 0x" not in str(caught.value)


def test_missing_files_and_folders_are_named(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.png: no such file"):
        decode_image(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="is a directory"):
        decode_image(tmp_path)
