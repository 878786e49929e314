"""RegionBatches: packed contents, CSR positives, determinism, ranks and exact resume."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rice_vit.config import PRESETS
from rice_vit.errors import InputError
from rice_vit.model import RiceViT
from rice_vit.pretrain.batches import KIND_CODES, RegionBatches
from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.processor import ImageProcessor

K = 50
PROCESSOR = ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 6)
SIZES = [(60, 40), (30, 90), (50, 50), (100, 30), (45, 60)]


def byte_classes(text: str) -> list[int]:
    """A stand-in OCR labeler: UTF-8 bytes offset past the K clusters."""
    return [K + b for b in text.encode()]


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for number, (width, height) in enumerate(SIZES):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{number}.png")
        regions = []
        for region in range(1 + number % 3 * 3):  # 1, 4, 7, 1, 4 regions
            x0, y0 = int(rng.integers(0, width - 5)), int(rng.integers(0, height - 5))
            box = [x0, y0, x0 + 5, y0 + 5]
            if region % 3 == 2:
                regions.append({"box": box, "kind": "ocr", "text": ["ab", "bba", "z"][number % 3]})
            else:
                regions.append({"box": box, "kind": "object", "cluster": (number * 7 + region) % K})
        rows.append({"image": f"{number}.png", "regions": regions})
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _batches(path: Path, **overrides) -> RegionBatches:
    arguments = {
        "batch_images": 2,
        "processor": PROCESSOR,
        "regions_per_image": 3,
        "seed": 5,
        "ocr_classes": byte_classes,
        "num_classes": K + 256,
    } | overrides
    return RegionBatches(load_region_manifest(path), **arguments)


def _equal(a, b) -> bool:
    return all(
        torch.equal(x.boxes, y.boxes) and torch.equal(x.image_index, y.image_index)
        if field.name == "regions"
        else torch.equal(x, y)
        for field in dataclasses.fields(a)
        for x, y in [(getattr(a, field.name), getattr(b, field.name))]
    )


def test_a_batch_packs_its_images_and_labels_each_sampled_region(manifest_path):
    batches = _batches(manifest_path)
    manifest = load_region_manifest(manifest_path)
    assert len(batches) == 2  # 5 images, 2 a batch, last incomplete batch dropped
    batch = batches.batch(0, 1)
    rows = batch.image_rows.tolist()
    pixel_values, grid_thw = PROCESSOR([manifest_path.parent / f"{r}.png" for r in rows])
    assert torch.equal(batch.pixel_values, pixel_values)
    assert torch.equal(batch.grid_thw, grid_thw)
    assert batch.regions.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    batch.regions.check_against_grid(grid_thw[:, 1], grid_thw[:, 2])
    offsets = batch.positives_offsets.tolist()
    assert offsets[0] == 0
    assert offsets[-1] == len(batch.positives_classes)
    raw = {}
    for line in manifest_path.read_text().splitlines():
        raw[json.loads(line)["image"]] = json.loads(line)
    for r in range(6):
        row = rows[r // 3]
        region = raw[f"{row}.png"]["regions"][int(batch.region_indices[r])]
        classes = batch.positives_classes[offsets[r] : offsets[r + 1]].tolist()
        if region["kind"] == "object":
            assert classes == [region["cluster"]]
        else:
            assert classes == sorted({K + b for b in region["text"].encode()})
        assert batch.kinds[r] == KIND_CODES[region["kind"]]
        # the patch box covers the pixel box: every patch centre inside the pixel box is in it
        (_, h, w), (width, height) = grid_thw[r // 3].tolist(), SIZES[row]
        r0, c0, r1, c1 = batch.regions.boxes[r].tolist()
        x0, y0, x1, y1 = region["box"]
        for i in range(h):
            for j in range(w):
                cy, cx = (i + 0.5) * height / h, (j + 0.5) * width / w
                if x0 <= cx < x1 and y0 <= cy < y1:
                    assert r0 <= i < r1
                    assert c0 <= j < c1
        assert r0 * height / h <= y0 < r1 * height / h
        assert c0 * width / w <= x0 < c1 * width / w
    image = next(i for i in manifest.images if i.row == rows[0])
    assert set(batch.region_indices[:3].tolist()) <= {r.index for r in image.regions}


def test_batches_are_deterministic_and_epochs_reshuffle(manifest_path):
    a, b = _batches(manifest_path), _batches(manifest_path)
    for epoch in range(3):
        for number in range(len(a)):
            assert _equal(a.batch(epoch, number), b.batch(epoch, number))
    orders = {tuple(a.epoch_order(e).tolist()) for e in range(4)}
    assert len(orders) > 1
    assert all(sorted(o) == list(range(5)) for o in orders)
    other = _batches(manifest_path, seed=6)
    assert any(not np.array_equal(other.images_of(e, 0), a.images_of(e, 0)) for e in range(4))


def test_regions_are_resampled_per_epoch_and_repeated_when_few(manifest_path):
    batches = _batches(manifest_path, batch_images=5, regions_per_image=5, drop_last=True)
    draws = [batches.batch(e, 0) for e in range(3)]
    for batch in draws:
        per_image = batch.region_indices.reshape(5, 5)
        for slot, row in enumerate(batch.image_rows.tolist()):
            valid = 1 + row % 3 * 3
            counts = np.bincount(per_image[slot].numpy(), minlength=valid)
            assert counts.min() >= 5 // valid
            assert counts.max() <= -(-5 // valid)
    assert len({tuple(b.region_indices.tolist()) for b in draws}) > 1


def test_ranks_split_each_global_batch(manifest_path):
    whole = _batches(manifest_path, batch_images=4)
    parts = [_batches(manifest_path, batch_images=4, rank=r, world_size=2) for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 1
    for epoch in range(3):
        joined = torch.cat([p.batch(epoch, 0).image_rows for p in parts])
        assert torch.equal(joined, whole.batch(epoch, 0).image_rows)
    with pytest.raises(InputError, match="not divisible"):
        _batches(manifest_path, batch_images=3, world_size=2)


def test_iteration_resumes_exactly_from_a_state_dict(manifest_path):
    first = _batches(manifest_path)
    stream = iter(first)
    seen = [next(stream) for _ in range(3)]  # epoch 0 batches 0, 1; epoch 1 batch 0
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 1)
    expected = [next(stream) for _ in range(3)]
    resumed = _batches(manifest_path)
    resumed.load_state_dict(state)
    again = iter(resumed)
    for batch in expected:
        assert _equal(next(again), batch)
    assert _equal(resumed.batch_for_step(2), seen[2])
    assert resumed.position_of_step(5) == (2, 1)
    with pytest.raises(InputError, match="seed"):
        _batches(manifest_path, seed=1).load_state_dict(state)


def test_prefetched_steps_equal_step_by_step_batches(manifest_path):
    batches = _batches(manifest_path)
    prefetched = list(batches.steps(1, 6, prefetch=2))
    assert [step for step, _ in prefetched] == [1, 2, 3, 4, 5]
    for step, batch in prefetched:
        assert _equal(batch, batches.batch_for_step(step))
    endless = batches.steps(3, prefetch=3)
    assert [next(endless)[0] for _ in range(4)] == [3, 4, 5, 6]
    endless.close()


def test_a_multiprocess_loader_gives_the_same_batches_in_order(manifest_path):
    batches = _batches(manifest_path)
    loaded = list(batches.loader(2, 6, workers=2))
    assert len(loaded) == 4
    for step, batch in zip(range(2, 6), loaded, strict=True):
        assert _equal(batch, batches.batch_for_step(step))


def test_missing_or_bad_labels_are_errors_naming_the_region(manifest_path, tmp_path):
    with pytest.raises(InputError, match="no ocr_classes labeler"):
        _batches(manifest_path, ocr_classes=None)
    with pytest.raises(InputError, match=r"gives no class"):
        _batches(manifest_path, ocr_classes=lambda text: [])
    with pytest.raises(InputError, match=r"outside \[0, 60\)"):
        _batches(manifest_path, num_classes=60)
    lines = manifest_path.read_text().splitlines()
    row = json.loads(lines[1])
    del row["regions"][1]["cluster"]
    lines[1] = json.dumps(row)
    (tmp_path / "unlabelled.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"unlabelled.jsonl:2 1.png region 1: object region"):
        _batches(tmp_path / "unlabelled.jsonl")
    batches = _batches(tmp_path / "unlabelled.jsonl", clusters=(np.array([[1, 1]]), np.array([42])))
    assert batches._positives[1][1] == (42,)


def test_batches_feed_an_encoder_with_region_layers(manifest_path):
    config = dataclasses.replace(PRESETS["rice-vit-tiny"], region_layers=1)
    torch.manual_seed(0)
    model = RiceViT(config).eval()
    batch = _batches(manifest_path).batch(0, 0)
    with torch.inference_mode():
        output = model.encode(batch.pixel_values, batch.grid_thw, regions=batch.regions)
    assert output.region_embeddings.shape == (6, config.hidden_size)
    assert torch.isfinite(output.region_embeddings).all()
