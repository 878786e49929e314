"""Seeded generators of realistic sample lengths, for benchmarks, demos and tests.

Three distributions:

- `caption` (mid-training): one native-resolution image per sample plus a caption. Image sizes are
  drawn around web-photo sizes (long side log-normal around 800 px, aspect ratio log-normal), then
  resized the way the LLaVA-OV-1.5 processor does (`smart_resize`: both sides multiples of 28,
  pixels within [3136, 2,560,000]); the LLM sees (h/28)(w/28) merged image tokens and the ViT
  4x as many 14x14 patches. Captions are long-tailed (log-normal, median 80 tokens), plus 20
  tokens of chat template.
- `sft` (instruction tuning): 0-4 images (mostly one, 15% text only), 1-10 turns of question and
  answer lengths drawn log-normally, so a few samples run to several thousand tokens.
- `uniform`: tokens uniform in [capacity/10, capacity/2], no images: the hard case for bin packing,
  where the simple lower bound is loose.

These mimic the shapes that matter for packing (image-token quantisation, long tails); they are not
statistics of any particular corpus.
"""

import numpy as np

from ov_packing.inputs import SampleLengths

DISTRIBUTIONS = ("caption", "sft", "uniform")
MERGE_FACTOR = 28
MIN_PIXELS = 3136
MAX_PIXELS = 2_560_000
TEMPLATE_TOKENS = 20


def smart_resize_grid(
    heights: np.ndarray, widths: np.ndarray, factor: int = MERGE_FACTOR
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Qwen2-VL smart_resize: resized (height, width), multiples of `factor`."""
    heights = heights.astype(np.float64)
    widths = widths.astype(np.float64)
    new_h = np.round(heights / factor) * factor  # numpy rounds half to even, as Python does
    new_w = np.round(widths / factor) * factor
    too_big = new_h * new_w > MAX_PIXELS
    beta = np.sqrt(heights * widths / MAX_PIXELS)
    new_h = np.where(too_big, np.maximum(factor, np.floor(heights / beta / factor) * factor), new_h)
    new_w = np.where(too_big, np.maximum(factor, np.floor(widths / beta / factor) * factor), new_w)
    too_small = new_h * new_w < MIN_PIXELS
    beta = np.sqrt(MIN_PIXELS / (heights * widths))
    new_h = np.where(too_small, np.ceil(heights * beta / factor) * factor, new_h)
    new_w = np.where(too_small, np.ceil(widths * beta / factor) * factor, new_w)
    return new_h.astype(np.int64), new_w.astype(np.int64)


def _image_tokens(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Merged LLM image tokens and ViT patches of `count` native-resolution images."""
    long_side = np.clip(rng.lognormal(np.log(800), 0.5, count), 64, 6000)
    aspect = np.clip(rng.lognormal(0.0, 0.35, count), 1 / 8, 8)
    landscape = rng.random(count) < 0.7
    short_side = np.maximum(16, long_side / np.maximum(aspect, 1 / aspect))
    heights = np.where(landscape, short_side, long_side)
    widths = np.where(landscape, long_side, short_side)
    new_h, new_w = smart_resize_grid(heights, widths)
    tokens = (new_h // MERGE_FACTOR) * (new_w // MERGE_FACTOR)
    return tokens, tokens * 4


def generate_lengths(
    distribution: str, count: int, *, seed: int = 0, capacity: int = 8192, with_ids: bool = True
) -> SampleLengths:
    """`count` samples from `distribution` (see the module docstring).

    Ids are `s000000000`, `s000000001`, ... (or None with `with_ids=False`, which is faster).
    `capacity` only shapes the `uniform` distribution.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose from {DISTRIBUTIONS}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    if distribution == "caption":
        image_tokens, patches = _image_tokens(rng, count)
        caption = np.clip(rng.lognormal(np.log(80), 0.8, count), 3, 4000).astype(np.int64)
        tokens = image_tokens + caption + TEMPLATE_TOKENS
    elif distribution == "sft":
        images = rng.choice([0, 1, 2, 3, 4], size=count, p=[0.15, 0.7, 0.08, 0.04, 0.03])
        turns = rng.integers(1, 11, size=count)
        owner = np.repeat(np.arange(count), images)
        image_tokens, image_patches = _image_tokens(rng, int(images.sum()))
        tokens = np.bincount(owner, weights=image_tokens, minlength=count).astype(np.int64)
        patches = np.bincount(owner, weights=image_patches, minlength=count).astype(np.int64)
        turn_owner = np.repeat(np.arange(count), turns)
        questions = rng.lognormal(np.log(25), 0.7, turn_owner.size)
        answers = rng.lognormal(np.log(90), 1.0, turn_owner.size)
        text = np.bincount(turn_owner, weights=questions + answers + 10, minlength=count)
        tokens = tokens + np.minimum(text, 12000).astype(np.int64) + TEMPLATE_TOKENS
    else:
        tokens = rng.integers(capacity // 10, capacity // 2 + 1, size=count)
        patches = np.zeros(count, dtype=np.int64)
    return SampleLengths(
        source=f"synthetic:{distribution}:seed={seed}",
        ids=[f"s{i:09d}" for i in range(count)] if with_ids else None,
        tokens=tokens.astype(np.int32),
        patches=patches.astype(np.int32),
    )
