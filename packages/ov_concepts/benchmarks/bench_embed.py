"""Embedding images/s with decoding worker processes against decoding in the model's process.

Run (numbers printed with -s, also in `--benchmark-json`'s extra_info):

    uv run pytest packages/ov_concepts/benchmarks/bench_embed.py -q -s

Sizes: `OV_CONCEPTS_BENCH_IMAGES` JPEGs (default 64, the CI size; 1,024 for the README numbers),
640 x 480, quality 90, smooth random content (about 40 KB each, the size of a typical web photo);
`OV_CONCEPTS_BENCH_DECODE_WORKERS` decoding processes (default: all cores).

The model is a tiny ViT (224 px, patch 32, width 32, 1 layer, random weights) on the CUDA device
when there is one, else on the CPU: a stand-in for a GPU encoder, which embeds thousands of images
per second, so the job is bound by decoding, as the real one is. Cases:

- `decode_only`: one process decoding + resizing (`ResizeCrop`, what a worker does), images/s per
  core: the figure to multiply by cores for an estimate;
- `decode_pool[0]` / `decode_pool[N]`: decoding alone through `DecodePool`, inline or in N
  worker processes (start-up included): the speed-up decoding workers give where the model does
  not compete for the cores (a GPU);
- `model_only`: the model on already-prepared pixels (the ceiling of the whole job);
- `job[0]` / `job[N]`: the whole `run_embedding_job` (one chunk of all images, batches of 32)
  decoding inline or in N worker processes, process start-up included; both must write the same
  bytes.
"""

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ov_concepts.clip.config import ClipConfig
from ov_concepts.clip.encoder import ClipEncoder
from ov_concepts.clip.model import Clip
from ov_concepts.decode import DecodePool, ResizeCrop, load_images
from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.inputs import ImageFiles

IMAGES = int(os.environ.get("OV_CONCEPTS_BENCH_IMAGES", "64"))
DECODE_WORKERS = int(os.environ.get("OV_CONCEPTS_BENCH_DECODE_WORKERS", str(os.cpu_count() or 1)))
SMALL_VIT = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 32, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        coarse = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:06d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    torch.manual_seed(0)
    model = Clip(ClipConfig.from_dict(SMALL_VIT, "small-vit"))
    with torch.no_grad():
        for parameter in model.parameters():  # random weights (some start at zero)
            parameter.normal_(0.0, 0.05)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return ClipEncoder(model, description="bench:small-vit", device=device)


def _record(benchmark, images: int, label: str) -> None:
    if benchmark.disabled:  # --benchmark-disable: ran once as a smoke test, nothing timed
        return
    rate = images / benchmark.stats.stats.min
    benchmark.extra_info["images_per_s"] = round(rate, 1)
    print(f"\n{label}: {rate:,.1f} images/s ({images} images, min of the rounds)")


def test_decode_only(benchmark, jpegs):
    keys = sorted(p.name for p in jpegs.iterdir())
    prepare = ResizeCrop(224)
    loaded = benchmark.pedantic(load_images, (jpegs, keys, prepare), rounds=2, warmup_rounds=0)
    assert all(ok for ok, _ in loaded)
    assert loaded[0][1].shape == (224, 224, 3)
    _record(benchmark, IMAGES, "decode + resize, one process")


@pytest.mark.parametrize("workers", [0, DECODE_WORKERS], ids=lambda w: f"workers{w}")
def test_decode_pool(benchmark, jpegs, workers):
    keys = sorted(p.name for p in jpegs.iterdir())

    def decode():
        with DecodePool(workers, ResizeCrop(224)) as pool:  # process start-up included
            return [ok for ok, _ in pool.load(jpegs, keys)]

    assert all(benchmark.pedantic(decode, rounds=2, warmup_rounds=0))
    _record(benchmark, IMAGES, f"decode + resize, DecodePool({workers})")


def test_model_only(benchmark, jpegs, encoder):
    keys = sorted(p.name for p in jpegs.iterdir())
    prepared = [value for _, value in load_images(jpegs, keys, encoder.image_preparer())]

    def encode():
        return [encoder.encode_images(prepared[s : s + 32]) for s in range(0, len(prepared), 32)]

    benchmark.pedantic(encode, rounds=2, warmup_rounds=1)
    _record(benchmark, IMAGES, f"model only ({encoder.device})")


@pytest.mark.parametrize("decode_workers", [0, DECODE_WORKERS], ids=lambda w: f"decode{w}")
def test_job(benchmark, jpegs, encoder, tmp_path, decode_workers):
    runs = itertools.count()
    config = EmbedJobConfig(chunk_inputs=IMAGES, batch_size=32)

    def job() -> Path:
        out = tmp_path / f"run-{next(runs)}"
        run_embedding_job(
            ImageFiles.from_path(jpegs), encoder, out, config, decode_workers=decode_workers
        )
        return out

    out = benchmark.pedantic(job, rounds=2, warmup_rounds=0)
    reference = tmp_path / "reference"
    run_embedding_job(ImageFiles.from_path(jpegs), encoder, reference, config, decode_workers=0)
    for name in ("chunk-000000.npy", "chunk-000000.json", "keys.txt"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    _record(benchmark, IMAGES, f"embed-images job, {decode_workers} decoding workers")
