"""Shared test material: random packed micro-batches for the tiny preset, tiny recipes, a tiny
model folder with its processor.

`resume_worker.py` (run as a script by the kill tests) imports the builders below, so a killed,
a resumed and an uninterrupted run see the very same data.
"""

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_model.packing import IGNORE_INDEX, PackedBatch
from ov_train.config_io import apply_overrides
from ov_train.memory_loader import PackedMicroBatch
from ov_train.recipes import RECIPES

# Token ids of the tiny preset: <vision_start> 3, <vision_end> 4, <image_pad> 5; text 10..500.
VISION_START, VISION_END, IMAGE_PAD = 3, 4, 5
PATCH_WIDTH = 588  # 3 channels x 14 x 14


class Sample:
    """A processed sample as `OVProcessor` returns it (ids, labels, image data)."""

    def __init__(self, ids, labels, pixel_values=None, image_grid_thw=None):
        self.input_ids = torch.tensor(ids)
        self.labels = torch.tensor(labels)
        self.pixel_values = pixel_values
        self.image_grid_thw = image_grid_thw


def make_sample(seed: int, *, image: bool = True, supervised: bool = True) -> Sample:
    """A random sample: 8-30 text tokens, optionally one image of 4x4 patches (4 LLM tokens),
    the second half of the tokens supervised."""
    generator = torch.Generator().manual_seed(seed)
    length = int(torch.randint(8, 31, (1,), generator=generator))
    text = torch.randint(10, 500, (length,), generator=generator).tolist()
    ids, pixels, grid = list(text), None, None
    if image:
        h, w = (4, 4) if seed % 3 else (4, 8)
        ids = text[:3] + [VISION_START] + [IMAGE_PAD] * (h * w // 4) + [VISION_END] + text[3:]
        pixels = torch.randn(h * w, PATCH_WIDTH, generator=generator)
        grid = torch.tensor([[1, h, w]])
    half = len(ids) // 2
    labels = [IGNORE_INDEX] * half + (
        ids[half:] if supervised else [IGNORE_INDEX] * (len(ids) - half)
    )
    return Sample(ids, labels, pixels, grid)


def make_samples(count: int, seed: int = 0) -> list[Sample]:
    """`count` random samples, two in three with an image."""
    return [make_sample(seed * 1000 + i, image=i % 3 != 1) for i in range(count)]


def pack(samples) -> PackedMicroBatch:
    """Samples packed into one micro-batch."""
    return PackedMicroBatch(PackedBatch.from_samples(list(samples)))


def make_micro_batches(count: int, per_batch: int = 3, seed: int = 0) -> list[PackedMicroBatch]:
    """`count` micro-batches of `per_batch` random samples each."""
    samples = make_samples(count * per_batch, seed)
    return [pack(samples[i * per_batch : (i + 1) * per_batch]) for i in range(count)]


def tiny_recipe(*overrides: str, base: str = "stage2-tiny"):
    """A registered tiny recipe, quiet (no progress bar, no plot) and short, with overrides."""
    quiet = ["logging.progress_bar=false", "logging.plot=false", "train.steps=4"]
    return apply_overrides(RECIPES[base], [*quiet, *overrides])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model with a real tokenizer and processor (ov_model.tiny)."""
    from ov_model.tiny import create_tiny_model

    folder = tmp_path_factory.mktemp("tiny_model")
    texts = ["a red circle and a blue square", "three green triangles on the left"] * 20
    create_tiny_model(folder, texts, seed=0)
    return folder


@pytest.fixture(scope="session")
def make_recipe():
    """tiny_recipe(*overrides, base=...) for tests."""
    return tiny_recipe


def kill_when_paused(process, marker: Path, timeout: float) -> None:
    """SIGKILL the forked training `process` once it has written `marker` (its pause point),
    then remove the marker; fails if it ends or never pauses within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.is_alive(), f"the run ended (exit code {process.exitcode}) before pausing"
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout)
    assert process.exitcode == -signal.SIGKILL
    marker.unlink()


@pytest.fixture(scope="session")
def kill_paused():
    """kill_when_paused(process, marker, timeout) for the kill-and-resume tests."""
    return kill_when_paused


@pytest.fixture(scope="session")
def make_batches():
    """make_micro_batches(count, per_batch, seed) for tests."""
    return make_micro_batches


@pytest.fixture(scope="session")
def samples():
    """The sample builders: make_sample(seed, image=, supervised=), make_samples, pack."""
    return SimpleNamespace(make_sample=make_sample, make_samples=make_samples, pack=pack)


@pytest.fixture
def tiny_model():
    """A fresh random model of the tiny preset (seeded, fp32, train mode)."""
    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"]).train()


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square")


def drawn_image(colour: str, shape: str, size: int = 56):
    """A white image with one shape of one colour."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (8, 8, size - 8, size - 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def caption_conversation(colour: str, shape: str) -> list[dict[str, str]]:
    """A one-turn LLaVA conversation about one image."""
    return [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": f"a {colour} {shape}"},
    ]


@pytest.fixture(scope="session")
def processor_batches(tiny_model_dir):
    """Six micro-batches of two real processed samples each, for the model of tiny_model_dir."""
    from ov_model.processor import OVProcessor

    processor = OVProcessor.from_pretrained(tiny_model_dir)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    processed = [
        processor(caption_conversation(c, s), images=[drawn_image(c, s)]) for c, s in pairs
    ]
    return [pack(processed[i : i + 2]) for i in range(0, len(processed), 2)] * 2


@pytest.fixture(scope="session")
def packed_shards(tiny_model_dir, tmp_path_factory) -> Path:
    """Packed shards of a small LLaVA-format corpus, made by `ov_train.data.prepare` with the
    processor of tiny_model_dir (what `ov-train run --data` reads)."""
    import json

    from ov_model.processor import OVProcessor
    from ov_train.data.ingest_llava import LlavaSource
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_config import PrepareConfig

    folder = tmp_path_factory.mktemp("corpus")
    rows = []
    for index, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        drawn_image(colour, shape).save(folder / f"{index}.png")
        rows.append(
            {
                "id": str(index),
                "image": f"{index}.png",
                "conversations": caption_conversation(colour, shape),
            }
        )
    (folder / "data.json").write_text(json.dumps(rows))
    config = PrepareConfig(
        inputs=(LlavaSource(folder / "data.json"),),
        out_dir=folder / "prepared",
        max_length=256,
        capacity=256,
        progress=False,
    )
    return prepare(config, OVProcessor.from_pretrained(tiny_model_dir)).shards_dir
