"""`pad_row`: a padding sample (zero image and/or pad tokens, nothing supervised) leaves the real
samples' logits, loss and supervised count unchanged, and gives the row an image and a length
that is a multiple of N."""

import pytest
import torch

from ov_model.errors import InputError
from ov_model.packing import IGNORE_INDEX, PackedBatch, pad_row

IMAGE, PAD = 5, 0


class Sample:
    def __init__(self, ids, labels, pixel_values=None, image_grid_thw=None):
        self.input_ids = torch.tensor(ids)
        self.labels = torch.tensor(labels)
        self.pixel_values = pixel_values
        self.image_grid_thw = image_grid_thw


def make_sample(seed: int, length: int, image: bool) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (length,), generator=generator).tolist()
    pixels = grid = None
    if image:
        ids = ids[:3] + [3] + [IMAGE] * 6 + [4] + ids[3:]
        pixels = torch.randn(24, 588, generator=generator)
        grid = torch.tensor([[1, 4, 6]])
    labels = [IGNORE_INDEX] * (len(ids) // 2) + ids[len(ids) // 2 :]
    return Sample(ids, labels, pixels, grid)


def padded(batch, **options):
    settings = {"image_token_id": IMAGE, "pad_token_id": PAD, "patch_dim": 588, "merge_size": 2}
    return pad_row(batch, **(settings | options))


@pytest.fixture
def text_only():
    return PackedBatch.from_samples([make_sample(1, 9, False), make_sample(2, 13, False)])


@pytest.fixture
def with_image():
    return PackedBatch.from_samples([make_sample(3, 9, True), make_sample(4, 12, False)])


def test_a_text_only_row_gets_one_zero_image_of_merge_by_merge_patches(text_only):
    batch = padded(text_only)
    tokens = text_only.input_ids.shape[1]
    assert batch.input_ids.shape == (1, tokens + 1)
    assert batch.input_ids[0, -1] == IMAGE
    assert batch.labels[0, -1] == IGNORE_INDEX
    assert batch.cu_seqlens.tolist() == [*text_only.cu_seqlens.tolist(), tokens + 1]
    assert batch.image_grid_thw.tolist() == [[1, 2, 2]]
    assert torch.equal(batch.pixel_values, torch.zeros(4, 588))
    assert batch.num_supervised == text_only.num_supervised > 0
    assert batch.metadata.images(IMAGE, 2).rows.tolist() == [tokens]


def test_rows_are_padded_to_a_multiple_of_n_with_pad_tokens(with_image, text_only):
    batch = padded(with_image, multiple_of=8)
    assert batch.input_ids.shape[1] % 8 == 0
    assert batch.image_grid_thw.tolist() == with_image.image_grid_thw.tolist()  # has one already
    added = batch.input_ids[0, with_image.input_ids.shape[1] :]
    assert added.tolist() == [PAD] * len(added)
    assert batch.num_supervised == with_image.num_supervised
    both = padded(text_only, multiple_of=8)
    assert both.input_ids.shape[1] % 8 == 0
    assert both.input_ids[0, text_only.input_ids.shape[1]] == IMAGE
    assert both.num_supervised == text_only.num_supervised


def test_rows_are_padded_to_an_exact_static_length(with_image, text_only):
    tokens = with_image.input_ids.shape[1]
    batch = padded(with_image, length=tokens + 6)
    assert batch.input_ids.shape[1] == tokens + 6
    assert batch.input_ids[0, tokens:].tolist() == [PAD] * 6
    both = padded(text_only, length=text_only.input_ids.shape[1] + 1)  # the image token only
    assert both.input_ids[0, -1] == IMAGE
    assert both.image_grid_thw.shape == (1, 3)
    with pytest.raises(InputError, match=f"{tokens} tokens .* static length {tokens - 1}"):
        padded(with_image, length=tokens - 1)
    with pytest.raises(InputError, match="not a multiple of 4"):
        padded(with_image, length=4 * tokens + 2, multiple_of=4)


def test_a_row_that_needs_nothing_is_returned_as_it_is(with_image):
    assert padded(with_image) is with_image
    assert padded(with_image, multiple_of=with_image.input_ids.shape[1]) is with_image
    assert padded(with_image, ensure_image=False) is with_image


def test_bad_settings_are_refused(with_image):
    with pytest.raises(InputError, match="multiple_of"):
        padded(with_image, multiple_of=0)


@pytest.mark.parametrize(
    "options", [{}, {"multiple_of": 16}, {"length": 40}], ids=["image", "image+tokens", "length"]
)
def test_the_real_samples_logits_and_loss_are_unchanged_by_the_padding(
    make_model, text_only, options
):
    model = make_model(2)
    batch = padded(text_only, **options)
    with torch.no_grad():
        before = model(**text_only.model_inputs())
        after = model(**batch.model_inputs())
    tokens = text_only.input_ids.shape[1]
    torch.testing.assert_close(after.logits[0, :tokens], before.logits[0], rtol=1e-5, atol=1e-5)
    assert after.num_supervised == before.num_supervised
    torch.testing.assert_close(after.loss_sum, before.loss_sum, rtol=1e-6, atol=0)
    assert after.image_embeds.shape == (1, model.config.text.hidden_size)


def test_with_only_the_projector_trainable_a_padded_text_row_still_backpropagates(
    make_model, text_only
):
    # Stage 1 trains only the projector: without the padding image a text-only row's loss does
    # not reach it, and a rank would skip a backward (and its collectives) its peers run.
    model = make_model(3).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("projector."))
    assert not model(**text_only.model_inputs()).loss_sum.requires_grad
    out = model(**padded(text_only).model_inputs())
    assert out.loss_sum.requires_grad
    out.loss_sum.backward()
    for parameter in model.projector.parameters():
        assert parameter.grad is not None
        assert not parameter.grad.any()  # the padding sample reaches no supervised token
