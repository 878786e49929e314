"""ImageProcessor: bitwise equal to the official processor's outputs, every colour mode, tiny and
extreme images, corrupt files and decompression bombs."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from rice_vit.errors import ConfigError, ImageError
from rice_vit.processor import ImageProcessor, smart_resize

FIXTURE = Path(__file__).parents[3] / "fixtures" / "llava_ov_tiny"
IMAGES = sorted(FIXTURE.glob("image_*.png"))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "processor_reference.safetensors")


def test_each_fixture_image_is_reproduced_bitwise(reference):
    processor = ImageProcessor()
    for i, path in enumerate(IMAGES):
        pixel_values, grid = processor([path])
        assert pixel_values.dtype == torch.float32
        assert torch.equal(pixel_values, reference[f"image_{i}_pixel_values"]), path.name
        assert torch.equal(grid, reference[f"image_{i}_grid_thw"])
        resized = processor.resized_size(*reference[f"image_{i}_orig_hw"].tolist())
        assert list(resized) == reference[f"image_{i}_resized_hw"].tolist()


def test_one_call_with_all_images_concatenates_them(reference):
    pixel_values, grid = ImageProcessor()(IMAGES)
    expected = torch.cat([reference[f"image_{i}_pixel_values"] for i in range(3)])
    assert torch.equal(pixel_values, expected)
    assert torch.equal(grid, reference["batch_image_grid_thw"])


def test_pil_images_and_paths_give_the_same_rows():
    processor = ImageProcessor()
    from_path = processor(IMAGES[0])
    with Image.open(IMAGES[0]) as image:
        from_pil = processor([image])
    assert torch.equal(from_path[0], from_pil[0])
    assert torch.equal(from_path[1], from_pil[1])


def test_smart_resize_matches_all_27_official_cases(reference):
    for height, width, expected_h, expected_w in reference["smart_resize_cases"].tolist():
        if expected_h == -1:
            with pytest.raises(ImageError, match=r"aspect ratio .* above 200"):
                smart_resize(height, width)
        else:
            assert smart_resize(height, width) == (expected_h, expected_w), (height, width)


def test_settings_are_read_from_the_fixture_preprocessor_config():
    assert ImageProcessor.from_pretrained(FIXTURE) == ImageProcessor()
    processor = ImageProcessor.from_pretrained(
        FIXTURE / "preprocessor_config.json", max_pixels=6272
    )
    assert processor.max_pixels == 6272


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"resample": 2}, "resample = 2 is not supported"),
        ({"temporal_patch_size": 2}, "temporal_patch_size = 2 is not supported"),
        ({"do_normalize": False}, "do_normalize = False"),
        ({"rescale_factor": 1.0}, "rescale_factor 1.0 is not 1/255"),
        ({"min_pixels": 10_000, "max_pixels": 100}, r"min_pixels \(10000\) is above max_pixels"),
    ],
)
def test_unsupported_preprocessor_settings_are_refused(tmp_path, setting, message):
    (tmp_path / "preprocessor_config.json").write_text(
        __import__("json").dumps({"image_processor_type": "Qwen2VLImageProcessor", **setting})
    )
    with pytest.raises(ConfigError, match=message):
        ImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_pixels": 0}, "min_pixels must be a positive integer"),
        ({"patch_size": 14.0}, "patch_size must be a positive integer"),
        ({"image_mean": (0.5, 0.5)}, "image_mean must be 3 numbers"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std must be > 0"),
    ],
)
def test_invalid_processor_settings_fail_at_construction(fields, message):
    with pytest.raises(ConfigError, match=message):
        ImageProcessor(**fields)


def colour_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8), "RGB"
    )
    if mode == "P":
        return rgb.quantize(colors=16)
    if mode == "PA":
        return rgb.quantize(colors=16).convert("PA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 3)
    return rgb.convert(mode)


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"]
)
def test_every_colour_mode_is_converted_to_rgb_like_pil_convert(mode):
    processor = ImageProcessor()
    image = colour_image(mode)
    assert image.mode == mode
    pixel_values, grid = processor([image])
    expected, expected_grid = processor([image.convert("RGB")])
    assert grid.tolist() == [[1, 4, 4]] == expected_grid.tolist()
    assert pixel_values.shape == (16, 588)
    assert torch.equal(pixel_values, expected)


def test_rgba_alpha_is_dropped_not_composited_like_the_official_processor():
    rgb = colour_image("RGB")
    transparent = rgb.copy()
    transparent.putalpha(0)
    processor = ImageProcessor()
    assert torch.equal(processor([transparent])[0], processor([rgb])[0])


def test_cmyk_jpeg_and_grayscale_png_files_decode(tmp_path):
    colour_image("CMYK").save(tmp_path / "cmyk.jpg")
    colour_image("L").save(tmp_path / "gray.png")
    pixel_values, grid = ImageProcessor()([tmp_path / "cmyk.jpg", tmp_path / "gray.png"])
    assert grid.tolist() == [[1, 4, 4], [1, 4, 4]]
    assert pixel_values.shape == (32, 588)


@pytest.mark.parametrize(
    ("size", "grid"),
    [((1, 1), [1, 4, 4]), ((3, 10), [1, 4, 8]), ((14, 2800), [1, 2, 58]), ((2800, 14), [1, 58, 2])],
)
def test_tiny_and_extreme_aspect_images_are_resized_to_valid_grids(size, grid):
    height, width = size
    image = Image.new("RGB", (width, height), (200, 30, 90))
    pixel_values, grid_thw = ImageProcessor()([image])
    assert grid_thw.tolist() == [grid]
    assert pixel_values.shape == (grid[1] * grid[2], 588)


def test_aspect_ratio_above_200_is_an_error_naming_the_image(tmp_path):
    Image.new("RGB", (2500, 10)).save(tmp_path / "strip.png")
    with pytest.raises(ImageError, match=r"strip.png: image of 10 x 2500 pixels: aspect ratio 250"):
        ImageProcessor()([tmp_path / "strip.png"])
    with pytest.raises(ImageError, match=r"image 1: .*aspect ratio"):
        ImageProcessor()([Image.new("RGB", (40, 40)), Image.new("RGB", (10, 2500))])


def test_truncated_undecodable_and_missing_files_are_errors_naming_the_file(tmp_path):
    data = IMAGES[1].read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    Image.new("RGB", (300, 200), (1, 2, 3)).save(tmp_path / "whole.jpg", quality=95)
    jpeg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    processor = ImageProcessor()
    for name, message in (
        ("truncated.png", "truncated or corrupt image data"),
        ("truncated.jpg", "truncated or corrupt image data"),
        ("noise.jpg", "not a decodable image"),
        ("missing.png", "no such file"),
    ):
        with pytest.raises(ImageError, match=f"{tmp_path / name}: {message}"):
            processor([tmp_path / name])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG announcing width x height pixels with no pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_the_header_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    with pytest.raises(ImageError, match=r"bomb\.png: refused as a possible decompression bomb"):
        ImageProcessor()([tmp_path / "bomb.png"])
    (tmp_path / "big.png").write_bytes(png_header_only(12_000, 10_000))
    with pytest.raises(ImageError, match=r"big.png: 12000 x 10000 = 120000000 pixels is above"):
        ImageProcessor(max_image_pixels=100_000_000)([tmp_path / "big.png"])
    Image.new("RGB", (50, 40)).save(tmp_path / "whole image.png")
    with pytest.raises(ImageError, match=r"whole image\.png: 50 x 40 = 2000 pixels is above"):
        ImageProcessor(max_image_pixels=1000)([tmp_path / "whole image.png"])


def test_inputs_that_are_not_images_are_rejected_and_no_images_give_empty_tensors():
    with pytest.raises(ImageError, match="image 0: expected a PIL image or a path, got ndarray"):
        ImageProcessor()([np.zeros((28, 28, 3), dtype=np.uint8)])
    pixel_values, grid = ImageProcessor()([])
    assert pixel_values.shape == (0, 588)
    assert grid.shape == (0, 3)
