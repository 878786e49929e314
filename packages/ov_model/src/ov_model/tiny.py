"""Tiny, complete models built on the spot: a trained-on-the-fly tokenizer plus a random model
of the `tiny` preset's shape, saved as a real checkpoint folder.

Tests, benchmarks, `ov-eval` examples and the training quickstart use it instead of downloading
anything; the folder it writes is an ordinary checkpoint (config.json, safetensors, tokenizer.json,
chat template, preprocessor config) that every loader reads like a released one.
"""

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

from ov_model.config import PRESETS, LlavaOVConfig
from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_model.tokenizer import TextTokenizer, build_tokenizer
from rice_vit import ImageProcessor


def tiny_config(tokenizer: TextTokenizer, *, vocab_multiple: int = 64) -> LlavaOVConfig:
    """The `tiny` preset with the vocabulary and special token ids of `tokenizer`."""
    special = tokenizer.special
    vocab = -(-tokenizer.vocab_size // vocab_multiple) * vocab_multiple
    base = PRESETS["tiny"]
    return base.replace(
        text=dataclasses.replace(base.text, vocab_size=vocab),
        image_token_id=special.image_pad,
        video_token_id=special.video_pad,
        vision_start_token_id=special.vision_start,
        vision_end_token_id=special.vision_end,
    )


def create_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    bpe_vocab_size: int = 400,
    min_pixels: int = 3136,
    max_pixels: int = 112 * 112,
) -> tuple[LlavaOV, OVProcessor]:
    """Train a tokenizer on `texts`, build a seeded random tiny model, save both to `out_dir`.

    The small `max_pixels` default keeps images to a few dozen patches, right for CPU runs.
    """
    tokenizer = TextTokenizer(build_tokenizer(texts, bpe_vocab_size))
    processor = OVProcessor(tokenizer, ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels))
    torch.manual_seed(seed)
    model = LlavaOV(tiny_config(tokenizer)).eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model, processor
