"""Parity with the official HF code on the public tiny fixture (fp32)."""

import torch

from ov_model.model import LlavaOV


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


def test_multimodal_logits_and_image_embeddings_match_the_per_image_reference(
    fixture_dir, reference
):
    model = LlavaOV.from_pretrained(fixture_dir)
    with torch.no_grad():
        out = model(reference["input_ids"], reference["pixel_values"], reference["image_grid_thw"])
    expected = reference["logits_per_image"]
    assert (out.logits - expected).abs().max() <= _tolerance(expected)
    embeds = reference["image_embeds_per_image"]
    assert (out.image_embeds - embeds).abs().max() <= _tolerance(embeds)


def test_text_only_logits_match(fixture_dir, reference):
    model = LlavaOV.from_pretrained(fixture_dir)
    with torch.no_grad():
        logits = model(reference["text_only_input_ids"]).logits
    expected = reference["text_only_logits"]
    assert (logits - expected).abs().max() <= _tolerance(expected)


def test_we_differ_from_the_as_shipped_multi_image_bug_only_where_it_acts(fixture_dir, reference):
    model = LlavaOV.from_pretrained(fixture_dir)
    with torch.no_grad():
        logits = model(
            reference["input_ids"], reference["pixel_values"], reference["image_grid_thw"]
        ).logits[0]
    shipped = reference["logits"][0]
    ids = reference["input_ids"][0]
    first_image_end = int((ids == 4).nonzero()[0])  # vision_end of the first image
    before = slice(0, first_image_end + 1)
    assert (logits[before] - shipped[before]).abs().max() <= _tolerance(shipped)
    assert (logits[first_image_end + 1 :] - shipped[first_image_end + 1 :]).abs().max() > 0.1


def test_hidden_states_match_before_the_second_image(fixture_dir, reference):
    model = LlavaOV.from_pretrained(fixture_dir)
    with torch.no_grad():
        states = model(
            reference["input_ids"],
            reference["pixel_values"],
            reference["image_grid_thw"],
            output_hidden_states=True,
        ).hidden_states
    expected = reference["text_hidden_states"]  # as shipped: equal up to the first image's end
    assert len(states) == expected.shape[0]
    upto = int((reference["input_ids"][0] == 4).nonzero()[0]) + 1
    for ours, theirs in zip(states, expected, strict=True):
        assert (ours[0, :upto] - theirs[:upto]).abs().max() <= _tolerance(theirs)
