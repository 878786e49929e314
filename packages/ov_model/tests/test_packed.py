"""Packed forward: each sample gets the same logits, loss and gradients as alone, in isolation."""

import pytest
import torch

from ov_model.errors import InputError
from ov_model.packing import IGNORE_INDEX, PackedBatch


class Sample:
    """A processed sample as the processor returns it (ids, labels, image data)."""

    def __init__(self, ids, labels, pixel_values=None, image_grid_thw=None):
        self.input_ids = torch.tensor(ids)
        self.labels = torch.tensor(labels)
        self.pixel_values = pixel_values
        self.image_grid_thw = image_grid_thw


def make_sample(seed: int, length: int, grid: tuple[int, int] | None) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(10, 500, (length,), generator=generator).tolist()
    ids = list(text)
    pixels = grid_thw = None
    if grid is not None:
        h, w = grid
        ids = text[:3] + [3] + [5] * (h * w // 4) + [4] + text[3:]
        pixels = torch.randn(h * w, 588, generator=generator)
        grid_thw = torch.tensor([[1, h, w]])
    labels = [IGNORE_INDEX] * (len(ids) // 2) + ids[len(ids) // 2 :]
    return Sample(ids, labels, pixels, grid_thw)


SAMPLES = [((0, 9, (4, 6))), (1, 13, None), (2, 6, (2, 2)), (3, 11, (8, 4))]


@pytest.fixture
def samples():
    return [make_sample(*spec) for spec in SAMPLES]


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


def _run(model, batch_inputs):
    model.zero_grad()
    out = model(**batch_inputs)
    out.loss_sum.backward()
    grads = {
        name: torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                for p in getattr(model, name).parameters()
            ]
        )
        for name in ("vision", "projector", "language_model")
    }
    return out, grads


def test_packed_logits_losses_and_gradients_equal_samples_alone(samples, make_model):
    model = make_model(3).train()
    packed = PackedBatch.from_samples(samples)
    out, packed_grads = _run(model, packed.model_inputs())
    alone_sum = 0.0
    alone_grads = None
    for index, sample in enumerate(samples):
        single = PackedBatch.from_samples([sample])
        alone, grads = _run(model, single.model_inputs())
        start, end = packed.cu_seqlens[index].item(), packed.cu_seqlens[index + 1].item()
        expected = alone.logits[0]
        assert (out.logits[0, start:end] - expected).abs().max() <= _tolerance(expected)
        alone_sum += alone.loss_sum.item()
        alone_grads = (
            grads if alone_grads is None else {k: alone_grads[k] + grads[k] for k in grads}
        )
    assert out.loss_sum.item() == pytest.approx(alone_sum, rel=1e-5)
    for module, grad in packed_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grad, alone_grads[module], dim=0)
        assert cosine >= 0.99999, module


def test_changing_one_sample_leaves_the_others_exactly_unchanged(samples, make_model):
    model = make_model(4)
    packed = PackedBatch.from_samples(samples)
    changed = list(samples)
    changed[2] = make_sample(99, 6, (2, 2))
    other = PackedBatch.from_samples(changed)
    with torch.no_grad():
        before = model(**packed.model_inputs()).logits[0]
        after = model(**other.model_inputs()).logits[0]
    cu = packed.cu_seqlens.tolist()
    for index in (0, 1, 3):
        assert torch.equal(before[cu[index] : cu[index + 1]], after[cu[index] : cu[index + 1]])
    assert not torch.equal(before[cu[2] : cu[3]], after[cu[2] : cu[3]])


def test_several_packed_bins_form_one_micro_batch(samples, make_model):
    model = make_model(5)
    first, second = PackedBatch.from_samples(samples[:2]), PackedBatch.from_samples(samples[2:])
    both = PackedBatch.from_samples(samples)
    with torch.no_grad():
        joint = model(**both.model_inputs())
        parts = [model(**b.model_inputs()) for b in (first, second)]
    assert joint.num_supervised == sum(p.num_supervised for p in parts)
    assert joint.loss_sum.item() == pytest.approx(sum(p.loss_sum.item() for p in parts), rel=1e-5)


def test_image_token_mismatch_names_the_sample(samples, make_model):
    model = make_model(6)
    broken = list(samples)
    text_only = samples[1]  # stray image placeholders in a sample without images
    broken[1] = Sample(
        [*text_only.input_ids.tolist(), 5, 5],
        [*text_only.labels.tolist(), IGNORE_INDEX, IGNORE_INDEX],
    )
    batch = PackedBatch.from_samples(broken)
    with pytest.raises(InputError, match="sample 1 has 2 image placeholder tokens"):
        model(**batch.model_inputs())


def test_positions_restart_per_sample_in_a_padded_batch_row(make_model):
    model = make_model(7)
    ids = torch.randint(10, 500, (3, 8))
    with torch.no_grad():
        batch = model(ids).logits
        rows = [model(ids[i : i + 1]).logits[0] for i in range(3)]
    for i in range(3):
        assert (batch[i] - rows[i]).abs().max() <= _tolerance(rows[i])
