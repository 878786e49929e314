"""Image references: sizes from headers, optional full decode, real-format extensions."""

import io

import pytest
from PIL import Image

from ov_train.data.images import ImageProblem, decode_image, read_image
from rice_vit import ImageError, ImageProcessor


def _encoded(width, height, format):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize(("format", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_size_and_extension_come_from_the_content(tmp_path, format, ext):
    data = _encoded(37, 21, format)
    path = tmp_path / "named-wrongly.gif"
    path.write_bytes(data)
    for ref in (data, path):
        image = read_image(ref, max_pixels=10_000, verify=True)
        assert (image.height, image.width, image.ext) == (21, 37, ext)
        assert image.data == data


def test_truncated_pixels_pass_the_header_check_and_fail_the_full_decode():
    data = _encoded(200, 200, "PNG")[:-300]
    assert read_image(data, max_pixels=10**6, verify=False).width == 200
    with pytest.raises(ImageProblem) as caught:
        read_image(data, max_pixels=10**6, verify=True)
    assert caught.value.reason == "undecodable_image"
    with pytest.raises(ValueError, match="truncated or corrupt image data"):
        decode_image(data, max_pixels=10**6)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (None, "none_image"),
        (b"", "undecodable_image"),
        (b"plain text", "undecodable_image"),
        ("missing", "missing_file"),
        ("large", "unusable_image"),
    ],
)
def test_problems_carry_their_reason(tmp_path, ref, reason):
    if ref == "missing":
        ref = tmp_path / "missing.png"
    elif ref == "large":
        ref = _encoded(101, 100, "PNG")
    with pytest.raises(ImageProblem) as caught:
        read_image(ref, max_pixels=100 * 100, verify=True, name="image 3")
    assert caught.value.reason == reason
    assert caught.value.detail.startswith("image 3")
    assert " at 0x" not in caught.value.detail  # stable across runs


def test_decode_image_returns_the_pixels():
    image = decode_image(_encoded(12, 9, "PNG"), max_pixels=1000)
    assert image.size == (12, 9)
    assert image.getpixel((3, 3)) == (10, 200, 30)
    with pytest.raises(ValueError, match="above the limit"):
        decode_image(_encoded(12, 9, "PNG"), max_pixels=100)
    with pytest.raises(ValueError, match="format PIL can read"):
        decode_image(b"nothing", max_pixels=100)


def test_prepare_refuses_what_the_processor_refuses_with_the_same_words(tmp_path):
    """One decoder (rice_vit's): prepare's check and the processor's decode agree."""
    path = tmp_path / "big.png"
    path.write_bytes(_encoded(101, 100, "PNG"))
    with pytest.raises(ImageProblem) as prepared:
        read_image(path, max_pixels=100 * 100, verify=False)
    with pytest.raises(ImageError) as processed:
        ImageProcessor(max_image_pixels=100 * 100)([path])
    assert prepared.value.detail.endswith(processed.value.problem)
    assert "101 x 100 = 10100 pixels is above the limit of 10000" in processed.value.problem
