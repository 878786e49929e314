"""A synthetic region dataset drawn with Pillow: coloured shapes and rendered words, with boxes.

Each image (a few sizes, so batches pack images of different grids) has a plain light
background with mild pixel noise, 2-4 objects (a shape x colour: `SHAPES` x `COLOURS`, 12
classes) and 1-2 words from `WORDS` in dark ink, placed without overlap. It is written as a
region manifest of the real format (`manifest.jsonl`: `{"image": "images/000000.png",
"regions": [{"box": [x0, y0, x1, y1], "kind": "object"}, {"box": [...], "kind": "ocr",
"text": "cat"}]}`, pixel boxes in the original image, half-open), so the pipeline reads it
exactly as it would a user's data. The ground truth the pipeline must not see (the object class
"red circle", or the word) is written aside, in `truth.jsonl`, one row per image whose
`classes` list is aligned with the manifest's `regions`.

What makes the task learnable but not trivial for a random encoder: colour alone separates
only 4 of the 12 object classes, shape needs the outline; words share one ink colour, so only
their glyphs tell them apart (the OCR labels are their UTF-8 bytes, which overlap between
words: "cat" and "car" share two). Deterministic for a seed (Python's `random.Random`; PNGs
are written losslessly).
"""

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("square", "circle", "triangle")
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (220, 190, 30),
}
WORDS = ("cat", "car", "sun", "map", "box", "pen", "key", "owl")
MANIFEST_FILE = "manifest.jsonl"
TRUTH_FILE = "truth.jsonl"


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """What `write_synthetic_dataset` draws."""

    images: int = 200
    """Number of images."""
    sizes: Sequence[int] = (112, 140, 168)
    """Each image's width and height are drawn from these (pixels; multiples of 28 keep the
    processor from resizing)."""
    objects: tuple[int, int] = (2, 4)
    """Objects per image: inclusive range."""
    words: tuple[int, int] = (1, 2)
    """Words per image: inclusive range."""
    object_size: tuple[int, int] = (30, 46)
    """Object edge in pixels: inclusive range."""
    font_size: int = 22
    """Word glyph size in pixels (Pillow's default font, scalable when FreeType is present)."""
    seed: int = 0


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a synthetic dataset was written and what it holds."""

    folder: Path
    manifest: Path
    truth: Path
    images: int
    regions: int


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    margin = 3
    return all(
        x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
        for a0, b0, a1, b1 in taken
    )


def _place(
    rng: random.Random, width: int, height: int, w: int, h: int, taken: list
) -> tuple[int, int, int, int] | None:
    for _ in range(50):
        x0, y0 = rng.randrange(0, width - w + 1), rng.randrange(0, height - h + 1)
        box = (x0, y0, x0 + w, y0 + h)
        if _free(box, taken):
            return box
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple, colour: tuple) -> None:
    x0, y0, x1, y1 = box
    corners = (x0, y0, x1 - 1, y1 - 1)  # Pillow's rectangles include their last pixel
    if shape == "square":
        draw.rectangle(corners, fill=colour)
    elif shape == "circle":
        draw.ellipse(corners, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_image(
    rng: random.Random, spec: SyntheticSpec, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[Image.Image, list[dict], list[str]]:
    """One image, its manifest regions and their ground-truth classes (aligned)."""
    width, height = rng.choice(spec.sizes), rng.choice(spec.sizes)
    background = np.array([rng.randint(200, 245) for _ in range(3)], dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-8, 9, (height, width, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    regions: list[dict] = []
    classes: list[str] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(*spec.words)):
        word = rng.choice(WORDS)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        placed = _place(rng, width, height, right - left + 4, bottom - top + 4, taken)
        if placed is None:
            continue
        ink = tuple(rng.randint(0, 50) for _ in range(3))
        draw.text((placed[0] + 2 - left, placed[1] + 2 - top), word, fill=ink, font=font)
        taken.append(placed)
        regions.append({"box": list(placed), "kind": "ocr", "text": word})
        classes.append(word)
    for _ in range(rng.randint(*spec.objects)):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        edge = rng.randint(*spec.object_size)
        placed = _place(rng, width, height, edge, edge, taken)
        if placed is None:
            continue
        _draw_shape(draw, shape, placed, COLOURS[colour])
        taken.append(placed)
        regions.append({"box": list(placed), "kind": "object"})
        classes.append(f"{colour} {shape}")
    return image, regions, classes


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at `size` pixels (its fixed bitmap font without FreeType)."""
    return ImageFont.load_default(size=size)


def write_synthetic_dataset(folder: str | Path, spec: SyntheticSpec) -> SyntheticDataset:
    """Draw `spec.images` images into `folder/images/`, write `manifest.jsonl` (the pipeline's
    input) and `truth.jsonl` (classes, kept aside for evaluation)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    font = load_font(spec.font_size)
    manifest_rows, truth_rows = [], []
    for index in range(spec.images):
        image, regions, classes = draw_image(rng, spec, font)
        name = f"images/{index:06d}.png"
        image.save(folder / name)
        manifest_rows.append({"image": name, "regions": regions})
        truth_rows.append({"image": name, "classes": classes})
    manifest, truth = folder / MANIFEST_FILE, folder / TRUTH_FILE
    manifest.write_text("".join(json.dumps(row) + "\n" for row in manifest_rows))
    truth.write_text("".join(json.dumps(row) + "\n" for row in truth_rows))
    regions = sum(len(row["regions"]) for row in manifest_rows)
    return SyntheticDataset(folder, manifest, truth, spec.images, regions)


def read_truth(path: str | Path) -> dict[str, list[str]]:
    """image path -> the classes of its regions, in manifest order."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {row["image"]: row["classes"] for row in rows}
