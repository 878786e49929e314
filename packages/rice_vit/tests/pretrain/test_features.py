"""Region features: crops, the three encoders, and the resumable chunked job."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rice_vit.config import PRESETS
from rice_vit.model import RiceViT
from rice_vit.pretrain.features import (
    ClipFeatures,
    FeatureError,
    FeatureJobConfig,
    PixelFeatures,
    RegionFeatureEncoder,
    RiceViTFeatures,
    crop_region,
    extract_region_features,
    open_region_features,
)
from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.processor import ImageProcessor

SIZES = [(40, 30), (25, 50), (60, 60)]
BOXES = [
    [[0, 0, 20, 15], [10.5, 3.2, 39.9, 29.1], [30, 20, 50, 40]],  # the last is clipped
    [[5, 5, 6, 9], [0, 0, 25, 50]],
    [[1, 1, 59, 59], [10, 40, 30, 50], [44, 2, 60, 12], [0, 0, 0, 5]],  # the last is empty
]


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for number, ((width, height), boxes) in enumerate(zip(SIZES, BOXES, strict=True)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{number}.png")
        regions = [{"box": box, "kind": "object"} for box in boxes]
        rows.append({"image": f"{number}.png", "regions": regions})
    rows[1]["regions"][0] = {"box": [5, 5, 6, 9], "kind": "ocr", "text": "x"}
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _naive_crop(path: Path, box) -> Image.Image:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[:2]
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    return Image.fromarray(pixels[y0:y1, x0:x1])


def test_crop_rounds_fractional_edges_outward_and_stays_inside():
    image = Image.new("RGB", (10, 8))
    assert crop_region(image, (1.5, 2.0, 3.2, 4.9)).size == (3, 3)  # x 1..4, y 2..5
    assert crop_region(image, (9.9, 7.9, 10, 8)).size == (1, 1)
    assert crop_region(image, (0, 0, 10, 8)).size == (10, 8)


def test_pixel_features_are_normalised_block_means():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (features,) = PixelFeatures(2).encode([Image.fromarray(pixels)])
    blocks = pixels.astype(np.float64).reshape(2, 4, 2, 4, 3).mean(axis=(1, 3))
    expected = blocks.reshape(-1) / 255
    expected /= np.linalg.norm(expected)
    assert features.dtype == torch.float32
    assert features.shape == (12,)
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-6)
    black = PixelFeatures(2).encode([Image.new("RGB", (3, 3))])
    assert torch.equal(black, torch.zeros(1, 12))


def test_job_rows_follow_the_region_index_and_equal_direct_encoding(manifest_path, tmp_path):
    manifest = load_region_manifest(manifest_path)
    encoder = PixelFeatures(3)
    assert isinstance(encoder, RegionFeatureEncoder)
    config = FeatureJobConfig(chunk_regions=3, batch_regions=2)
    result = extract_region_features(
        manifest, encoder, tmp_path / "f", config=config, progress=False
    )
    assert result.index.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2]]
    assert len(result.chunk_paths()) == 3
    features = result.load()
    assert features.shape == (8, 27)
    clipped = {(0, 2): [30, 20, 40, 30]}
    for row, (image_row, region) in enumerate(result.index.tolist()):
        box = clipped.get((image_row, region), BOXES[image_row][region])
        crop = _naive_crop(manifest_path.parent / f"{image_row}.png", box)
        np.testing.assert_array_equal(features[row], encoder.encode([crop])[0].numpy())


class _Counting:
    """PixelFeatures that counts crops and can fail after `fail_after` encode calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.inner = PixelFeatures(3)
        self.crops = 0
        self.calls = 0
        self.fail_after = fail_after
        self.dim = self.inner.dim
        self.description = self.inner.description

    def encode(self, crops):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.crops += len(crops)
        return self.inner.encode(crops)


def test_a_killed_job_resumes_to_the_same_bytes_and_skips_finished_chunks(manifest_path, tmp_path):
    manifest = load_region_manifest(manifest_path)
    config = FeatureJobConfig(chunk_regions=3, batch_regions=3)
    whole = extract_region_features(
        manifest, _Counting(), tmp_path / "whole", config=config, progress=False
    )
    with pytest.raises(KeyboardInterrupt):  # dies in the second chunk
        extract_region_features(
            manifest, _Counting(fail_after=1), tmp_path / "f", config=config, progress=False
        )
    assert sorted(p.name for p in (tmp_path / "f").glob("chunk-*")) == ["chunk-000000.npy"]
    with pytest.raises(FeatureError, match="did not finish"):
        open_region_features(tmp_path / "f")
    encoder = _Counting()
    resumed = extract_region_features(
        manifest, encoder, tmp_path / "f", config=config, progress=False
    )
    assert encoder.crops == 5  # chunks 1 and 2 only
    for a, b in zip(whole.chunk_paths(), resumed.chunk_paths(), strict=True):
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(FeatureError, match="encoder"):
        extract_region_features(manifest, PixelFeatures(4), tmp_path / "f", config=config)
    with pytest.raises(FeatureError, match="chunk_regions"):
        extract_region_features(
            manifest, _Counting(), tmp_path / "f", config=FeatureJobConfig(chunk_regions=4)
        )


def test_nan_features_are_errors_naming_the_region(manifest_path, tmp_path):
    class Broken(_Counting):
        def encode(self, crops):
            out = super().encode(crops)
            out[-1, 0] = float("nan")
            return out

    manifest = load_region_manifest(manifest_path)
    with pytest.raises(FeatureError, match=r"manifest.jsonl:1 0.png region 2"):
        extract_region_features(
            manifest,
            Broken(),
            tmp_path / "f",
            config=FeatureJobConfig(chunk_regions=8, batch_regions=3),
            progress=False,
        )


def test_rice_vit_features_pack_crops_and_equal_one_by_one_encoding():
    torch.manual_seed(0)
    model = RiceViT(PRESETS["rice-vit-tiny"]).eval()
    processor = ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 4)
    rng = np.random.default_rng(2)
    crops = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(30, 30), (20, 60), (56, 28), (10, 10)]
    ]
    packed = RiceViTFeatures(model, processor, max_batch_patches=8).encode(crops)
    assert packed.shape == (4, model.config.hidden_size)
    for position, crop in enumerate(crops):
        pixel_values, grid_thw = processor(crop)
        with torch.inference_mode():
            pooled = model.pool(model.encode(pixel_values, grid_thw), "cls")[0]
        np.testing.assert_allclose(
            packed[position].numpy(), (pooled / pooled.norm()).numpy(), atol=1e-5
        )
    np.testing.assert_allclose(packed.norm(dim=1).numpy(), 1, atol=1e-6)


TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 64, "width": 24, "heads": 2, "layers": 2},
}


def test_clip_features_are_ov_concepts_clip_image_features_normalised(tmp_path):
    clip = pytest.importorskip("ov_concepts.clip")
    from safetensors.torch import save_file

    from ov_concepts.clip.model import Clip

    torch.manual_seed(0)
    config = clip.ClipConfig.from_dict(TINY_CLIP, "tiny")
    model = Clip(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if "ln_" in name and name.endswith("weight") else 0.0, 0.2)
    save_file(dict(model.state_dict()), tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP))
    features = ClipFeatures(tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    crops = [Image.new("RGB", (20, 30), (200, 0, 0)), Image.new("RGB", (50, 10), (0, 0, 200))]
    out = features.encode(crops)
    reference = clip.load_clip_encoder(tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    raw = torch.from_numpy(reference.encode_images(crops))
    np.testing.assert_allclose(
        out.numpy(), (raw / raw.norm(dim=1, keepdim=True)).numpy(), atol=1e-6
    )
    assert features.dim == 16
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    assert "tiny" in features.description


def test_clip_features_without_ov_concepts_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ov_concepts.clip", None)
    with pytest.raises(FeatureError, match=r"pip install 'ov-concepts\[clip\]'"):
        ClipFeatures("x.safetensors", "tiny.json")
