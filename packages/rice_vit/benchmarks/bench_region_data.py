"""Throughput of the region data path of RICE pretraining, on CPU: manifest validation (image
headers only), the region feature job with `PixelFeatures`, and building packed `RegionBatches`
in the calling thread, with 2 prefetch threads (`steps(prefetch=2)`) and with a 2-process
`loader`.

    uv run pytest packages/rice_vit/benchmarks/bench_region_data.py -q -s

The data: 64 JPEG photos-like images (smooth colour fields plus noise, quality 90) of mixed
sizes from 320 x 240 to 1024 x 768, 10 object regions each (boxes 40-300 pixels a side) plus one
bad box per image (counted by the report). Batches: 16 images at the `rice-vit pretrain`
default resolution cap (max_pixels 200,704 = 448 x 448), N = 10 regions per image. Each case
prints its rate (images/s or regions/s) with -s and stores it in `extra_info`.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rice_vit.pretrain.batches import RegionBatches
from rice_vit.pretrain.features import FeatureJobConfig, PixelFeatures, extract_region_features
from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.processor import ImageProcessor

IMAGES = 64
SIZES = [(320, 240), (640, 480), (1024, 768), (480, 640), (800, 600), (500, 333)]
BATCH_IMAGES = 16


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("region_data")
    rng = np.random.default_rng(0)
    rows = []
    for number in range(IMAGES):
        width, height = SIZES[number % len(SIZES)]
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        )
        noise = rng.integers(-12, 13, (height, width, 3))
        pixels = np.clip(field.astype(np.int64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{number}.jpg", quality=90)
        regions = []
        for _ in range(10):
            side_x = int(rng.integers(40, min(300, width)))
            side_y = int(rng.integers(40, min(300, height)))
            x0, y0 = int(rng.integers(0, width - side_x)), int(rng.integers(0, height - side_y))
            box = [x0, y0, x0 + side_x, y0 + side_y]
            regions.append({"box": box, "kind": "object", "cluster": int(rng.integers(0, 1000))})
        regions.append({"box": [10, 10, 5, 20], "kind": "object"})  # degenerate: reported
        rows.append({"image": f"{number}.jpg", "regions": regions})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _report(benchmark, name: str, count: int, unit: str) -> None:
    if benchmark.disabled:  # --benchmark-disable: ran once as a smoke test, nothing timed
        return
    rate = count / benchmark.stats.stats.median
    benchmark.extra_info[f"{unit}_per_s"] = rate
    print(f"\n{name}: {rate:,.0f} {unit}/s")


def test_validation_reads_headers(benchmark, manifest_path):
    manifest = benchmark(load_region_manifest, manifest_path)
    assert manifest.report.images_used == IMAGES
    assert manifest.report.excluded["degenerate"] == IMAGES
    _report(benchmark, "validation (headers)", IMAGES, "images")


def test_pixel_feature_job(benchmark, manifest_path, tmp_path):
    manifest = load_region_manifest(manifest_path)
    runs = iter(range(1000))

    def job():
        out = tmp_path / f"run{next(runs)}"
        return extract_region_features(
            manifest,
            PixelFeatures(8),
            out,
            config=FeatureJobConfig(chunk_regions=256),
            progress=False,
        )

    features = benchmark.pedantic(job, rounds=3, iterations=1)
    assert features.num_regions == IMAGES * 10
    _report(benchmark, "feature job, PixelFeatures(8)", IMAGES * 10, "regions")


@pytest.mark.parametrize("mode", ["steps", "steps-prefetch-2", "loader-2-workers"])
def test_region_batches(benchmark, manifest_path, mode):
    manifest = load_region_manifest(manifest_path)
    batches = RegionBatches(
        manifest,
        batch_images=BATCH_IMAGES,
        processor=ImageProcessor(max_pixels=200_704),
        regions_per_image=10,
    )
    steps = IMAGES // BATCH_IMAGES

    def epoch():
        started = time.perf_counter()
        if mode == "loader-2-workers":
            out = list(batches.loader(0, steps, workers=2))
        else:
            prefetch = 2 if mode == "steps-prefetch-2" else 0
            out = [b for _, b in batches.steps(0, steps, prefetch=prefetch)]
        return out, time.perf_counter() - started

    drawn, _ = benchmark.pedantic(epoch, rounds=3, iterations=1)
    assert sum(len(b.grid_thw) for b in drawn) == IMAGES
    assert sum(len(b.regions) for b in drawn) == IMAGES * 10
    _report(benchmark, f"RegionBatches, {mode}", IMAGES, "images")
