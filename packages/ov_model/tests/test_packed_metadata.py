"""PackedMetadata: the host bookkeeping equals what the model computed on the device, the forward
with it equals the forward without it bit for bit, and metadata that does not describe the
inputs, or placeholders that do not match the images, are refused naming what is wrong."""

import pytest
import torch

from ov_model.errors import InputError
from ov_model.packed_metadata import PackedMetadata
from ov_model.packing import IGNORE_INDEX, PackedBatch, position_ids, shifted_targets

IMAGE = 5


class Sample:
    def __init__(self, ids, labels, pixel_values=None, image_grid_thw=None):
        self.input_ids = torch.tensor(ids)
        self.labels = torch.tensor(labels)
        self.pixel_values = pixel_values
        self.image_grid_thw = image_grid_thw


def make_sample(seed: int, length: int, grid: tuple[int, int] | None) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (length,), generator=generator).tolist()
    pixels = grid_thw = None
    if grid is not None:
        h, w = grid
        ids = ids[:3] + [3] + [IMAGE] * (h * w // 4) + [4] + ids[3:]
        pixels = torch.randn(h * w, 588, generator=generator)
        grid_thw = torch.tensor([[1, h, w]])
    labels = [IGNORE_INDEX] * (len(ids) // 2) + ids[len(ids) // 2 :]
    return Sample(ids, labels, pixels, grid_thw)


@pytest.fixture
def samples():
    return [make_sample(0, 9, (4, 6)), make_sample(1, 13, None), make_sample(2, 6, (2, 2))]


def test_host_metadata_equals_the_per_token_definitions(samples):
    batch = PackedBatch.from_samples(samples, image_token_id=IMAGE, merge_size=2)
    metadata = batch.metadata
    cu = batch.cu_seqlens
    targets = shifted_targets(batch.labels, cu)
    assert metadata.sample_lengths == tuple(cu.diff().tolist())
    assert metadata.max_seqlen == max(metadata.sample_lengths)
    assert torch.equal(metadata.position_ids, position_ids(cu))
    assert torch.equal(metadata.supervised_rows, (targets != IGNORE_INDEX).nonzero().squeeze(1))
    assert torch.equal(metadata.supervised_targets, targets[targets != IGNORE_INDEX])
    placement = metadata.images(IMAGE, 2)
    assert torch.equal(placement.rows, (batch.input_ids[0] == IMAGE).nonzero().squeeze(1))
    assert placement.tokens_per_image == (6, 1)
    assert placement.layout.sequence_lengths == (25, 5)
    assert metadata.images(IMAGE, 2) is placement  # computed once


def test_the_forward_with_metadata_equals_the_forward_without_bit_for_bit(samples, make_model):
    model = make_model(1).train()
    results = []
    for with_metadata in (True, False):
        batch = PackedBatch.from_samples(samples, image_token_id=IMAGE, merge_size=2)
        inputs = batch.model_inputs()
        if not with_metadata:
            inputs["metadata"] = None
        model.zero_grad()
        out = model(**inputs)
        out.loss_sum.backward()
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    (first, first_grads), (second, second_grads) = results
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.loss_sum, second.loss_sum)
    assert first.num_supervised == second.num_supervised == samples_supervised(samples)
    assert all(torch.equal(a, b) for a, b in zip(first_grads, second_grads, strict=True))


def samples_supervised(samples) -> int:
    return sum(int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples)


def test_metadata_of_another_row_is_refused(samples, make_model):
    model = make_model(2)
    batch = PackedBatch.from_samples(samples)
    other = PackedBatch.from_samples(samples[:2])
    with pytest.raises(InputError, match=r"metadata does not describe the inputs: .* tokens"):
        model(**(batch.model_inputs() | {"metadata": other.metadata}))


def test_placeholders_without_their_image_are_refused_when_packing_naming_the_sample(samples):
    broken = [*samples[:2], Sample([7, IMAGE, IMAGE, 8], [IGNORE_INDEX] * 4)]
    PackedBatch.from_samples(broken)  # without the model's ids nothing is checked yet
    with pytest.raises(InputError, match="sample 2 has 2 image placeholder tokens"):
        PackedBatch.from_samples(broken, image_token_id=IMAGE, merge_size=2)


def test_bad_cu_seqlens_are_refused():
    ids = torch.arange(6)
    with pytest.raises(InputError, match="rise from 0 to the row length 6"):
        PackedMetadata.build(ids, None, torch.tensor([0, 4, 3, 6]))
    with pytest.raises(InputError, match="rise from 0 to the row length 6"):
        PackedMetadata.build(ids, None, torch.tensor([0, 4]))


def test_a_batch_with_metadata_survives_pickling_as_loader_workers_send_it(samples, make_model):
    import pickle

    model = make_model(3)
    batch = PackedBatch.from_samples(samples, image_token_id=IMAGE, merge_size=2)
    copy = pickle.loads(pickle.dumps(batch))
    assert (IMAGE, 2) in copy.metadata._placements  # the image part travels, not recomputed
    with torch.no_grad():
        assert torch.equal(
            model(**copy.model_inputs()).logits, model(**batch.model_inputs()).logits
        )


@pytest.mark.gpu
def test_pinned_batches_and_metadata_give_the_same_cuda_forward(samples, make_model):
    model = make_model(4).cuda()
    batch = PackedBatch.from_samples(samples, image_token_id=IMAGE, merge_size=2)
    pinned = batch.pin_memory()
    placement = pinned.metadata.images(IMAGE, 2)
    assert pinned.input_ids.is_pinned()
    assert pinned.metadata.position_ids.is_pinned()
    assert placement.rows.is_pinned()
    assert placement.layout.patch_index.is_pinned()
    outputs = []
    for source in (batch, pinned):
        inputs = {
            k: v.cuda(non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in source.model_inputs().items()
        }
        with torch.no_grad():
            outputs.append(model(**inputs).logits.cpu())
    assert torch.equal(outputs[0], outputs[1])
