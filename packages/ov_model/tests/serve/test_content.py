"""OpenAI messages -> the processor's conversation and images, and every refused image source."""

import base64
import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("pydantic")

from ov_model.serve.content import ContentError, ImageLimits, to_conversation
from ov_model.serve.schemas import ChatMessage


def _messages(*messages: dict) -> list[ChatMessage]:
    return [ChatMessage.model_validate(message) for message in messages]


def _image_message(url: str, text: str = "what is this?") -> list[ChatMessage]:
    return _messages(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        }
    )


def _refused(messages: list[ChatMessage], limits: ImageLimits) -> ContentError:
    with pytest.raises(ContentError) as caught:
        to_conversation(messages, limits)
    return caught.value


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def test_roles_and_text_map_to_the_processor_conversation():
    rendered = to_conversation(
        _messages(
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "again"},
        ),
        ImageLimits(),
    )
    assert rendered.conversation == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]
    assert rendered.images == []


def test_a_data_url_image_decodes_to_the_same_rgb_pixels(make_png, make_data_url, decode_png):
    data = make_png(width=24, height=18, seed=3)
    rendered = to_conversation(_image_message(make_data_url(data)), ImageLimits())
    assert rendered.conversation == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}
    ]
    (image,) = rendered.images
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(decode_png(data)))


def test_invalid_base64_is_refused_naming_the_part():
    error = _refused(_image_message("data:image/png;base64,abc$%^"), ImageLimits())
    assert error.code == "invalid_base64"
    assert error.param == "messages[0].content[0].image_url.url"
    assert "invalid base64" in str(error)


def test_a_payload_that_is_not_an_image_is_refused(make_data_url):
    error = _refused(_image_message(make_data_url(b"just some text, no image")), ImageLimits())
    assert error.code == "invalid_image"
    assert "not a decodable image" in str(error)


def test_a_data_url_of_another_media_type_is_refused(make_png, make_data_url):
    error = _refused(_image_message(make_data_url(make_png(), "text/plain")), ImageLimits())
    assert "not an image type" in str(error)


def test_a_data_url_without_base64_is_refused():
    error = _refused(_image_message("data:image/png,rawbytes"), ImageLimits())
    assert "base64" in str(error)


def test_a_decompression_bomb_is_refused_before_decoding(make_data_url):
    bomb = _png_bomb(100_000, 100_000)
    error = _refused(_image_message(make_data_url(bomb)), ImageLimits())
    assert error.code == "image_too_large"
    assert "10000000000 pixels" in str(error) or "decompression bomb" in str(error)


def test_an_image_over_the_pixel_limit_is_refused(make_png, make_data_url):
    url = make_data_url(make_png(width=50, height=40))
    error = _refused(_image_message(url), ImageLimits(max_image_pixels=1999))
    assert error.code == "image_too_large"
    assert "50 x 40 = 2000 pixels is above the limit of 1999" in str(error)
    assert to_conversation(_image_message(url), ImageLimits(max_image_pixels=2000)).images


def test_too_many_images_are_refused_before_any_is_decoded():
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,not-even-valid"}}
    messages = _messages({"role": "user", "content": [part] * 3})
    error = _refused(messages, ImageLimits(max_images=2))
    assert error.code == "too_many_images"
    assert "3 images" in str(error)
    assert "at most 2" in str(error)


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "HTTPS://example.com/cat.png"])
def test_remote_urls_are_refused_without_a_network_call(url):
    error = _refused(_image_message(url), ImageLimits())
    assert error.code == "remote_image_url"
    assert "remote image URLs are not fetched" in str(error)


def test_other_schemes_are_refused():
    error = _refused(_image_message("ftp://example.com/cat.png"), ImageLimits())
    assert error.code == "unsupported_image_url"


def test_local_paths_are_refused_without_an_image_root(tmp_path, make_png):
    (tmp_path / "cat.png").write_bytes(make_png())
    for url in (str(tmp_path / "cat.png"), (tmp_path / "cat.png").as_uri()):
        error = _refused(_image_message(url), ImageLimits())
        assert error.code == "local_image_refused"
        assert "--image-root" in str(error)


def test_local_files_under_the_image_root_are_read(tmp_path, make_png, decode_png):
    data = make_png(seed=5)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cat.png").write_bytes(data)
    limits = ImageLimits(image_root=tmp_path)
    for url in (
        "sub/cat.png",
        str(tmp_path / "sub" / "cat.png"),
        (tmp_path / "sub/cat.png").as_uri(),
    ):
        (image,) = to_conversation(_image_message(url), limits).images
        assert np.array_equal(np.asarray(image), np.asarray(decode_png(data)))


def test_paths_that_escape_the_image_root_are_refused(tmp_path, make_png):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(make_png())
    os.symlink(tmp_path / "secret.png", root / "link.png")
    limits = ImageLimits(image_root=root)
    for url in (
        "../secret.png",
        str(tmp_path / "secret.png"),
        (tmp_path / "secret.png").as_uri(),
        "file://" + str(root) + "/../secret.png",
        "link.png",
    ):
        error = _refused(_image_message(url), limits)
        assert error.code == "image_path_outside_root", url


def test_a_missing_file_under_the_root_is_named(tmp_path):
    error = _refused(_image_message("nope.png"), ImageLimits(image_root=tmp_path))
    assert error.code == "image_not_found"
    assert "'nope.png'" in str(error)


def test_a_literal_image_placeholder_in_text_is_refused():
    error = _refused(_messages({"role": "user", "content": "look: <image>"}), ImageLimits())
    assert error.code == "reserved_text"
    assert error.param == "messages[0].content"


def test_the_base64_payload_may_hold_line_breaks(make_png):
    encoded = base64.encodebytes(make_png()).decode()  # 76-character lines
    rendered = to_conversation(_image_message(f"data:image/png;base64,{encoded}"), ImageLimits())
    assert len(rendered.images) == 1
