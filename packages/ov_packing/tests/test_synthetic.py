"""Synthetic length generators: smart_resize matches the official processor, output is seeded."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ov_packing.synthetic import generate_lengths, smart_resize_grid

FIXTURE = Path(__file__).parents[3] / "fixtures/llava_ov_tiny/processor_reference.safetensors"


def test_smart_resize_matches_the_official_cases():
    cases = load_file(FIXTURE)["smart_resize_cases"]
    valid = cases[cases[:, 2] > 0]  # rows with -1 are aspect ratios the processor refuses
    heights, widths = smart_resize_grid(valid[:, 0], valid[:, 1])
    np.testing.assert_array_equal(np.stack([heights, widths], axis=1), valid[:, 2:])


@pytest.mark.parametrize("distribution", ["caption", "sft", "uniform"])
def test_same_seed_same_lengths_and_all_positive(distribution):
    first = generate_lengths(distribution, 2000, seed=4)
    second = generate_lengths(distribution, 2000, seed=4)
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.patches, second.patches)
    assert first.tokens.min() >= 1
    assert first.patches.min() >= 0
    assert not np.array_equal(first.tokens, generate_lengths(distribution, 2000, seed=5).tokens)


def test_caption_image_tokens_follow_the_merge_rule():
    lengths = generate_lengths("caption", 5000, seed=1)
    # patches are 4x the merged image tokens, and text adds at least template + 3 caption tokens
    image_tokens = lengths.patches // 4
    assert np.all(lengths.patches % 4 == 0)
    assert np.all(lengths.tokens - image_tokens >= 23)
    assert image_tokens.max() <= 2_560_000 // 28 // 28
