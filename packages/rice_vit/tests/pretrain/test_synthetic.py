"""The synthetic region dataset: the real manifest format, deterministic, truthful boxes."""

import numpy as np
from PIL import Image

from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.pretrain.synthetic import (
    COLOURS,
    WORDS,
    SyntheticSpec,
    read_truth,
    write_synthetic_dataset,
)


def test_the_manifest_validates_cleanly_and_the_truth_is_aligned(tmp_path):
    dataset = write_synthetic_dataset(tmp_path, SyntheticSpec(images=12, seed=3))
    manifest = load_region_manifest(dataset.manifest)
    report = manifest.report
    assert report.images_used == 12
    assert report.regions_excluded == 0
    assert report.clipped == 0
    assert report.regions_valid == dataset.regions
    truth = read_truth(dataset.truth)
    for image in manifest.images:
        pixels = np.asarray(Image.open(image.path).convert("RGB")).astype(int)
        assert len(truth[image.image]) == len(image.regions)
        for region in image.regions:
            name = truth[image.image][region.index]
            x0, y0, x1, y1 = (int(v) for v in region.box)
            crop = pixels[y0:y1, x0:x1].reshape(-1, 3)
            if region.kind == "ocr":
                assert region.text == name
                assert name in WORDS
                assert (crop.sum(1) < 200).mean() > 0.05  # dark ink inside the box
            else:
                colour, shape = name.split()
                close = np.abs(crop - np.asarray(COLOURS[colour])).max(1) <= 1
                # square fills its box, circle pi/4, triangle about 1/2
                expected = {"square": 0.95, "circle": 0.7, "triangle": 0.4}[shape]
                assert close.mean() > expected, (image.image, region.index, name)


def test_a_seed_draws_the_same_files_and_another_seed_others(tmp_path):
    spec = SyntheticSpec(images=3, seed=5)
    first = write_synthetic_dataset(tmp_path / "a", spec)
    second = write_synthetic_dataset(tmp_path / "b", spec)
    other = write_synthetic_dataset(tmp_path / "c", SyntheticSpec(images=3, seed=6))
    assert first.manifest.read_bytes() == second.manifest.read_bytes()
    for name in ("000000.png", "000002.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (
            tmp_path / "b" / "images" / name
        ).read_bytes()
    assert first.manifest.read_bytes() != other.manifest.read_bytes()
