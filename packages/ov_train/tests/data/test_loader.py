"""PackedDataLoader: content, token budget, determinism across worker counts, exact resume,
rank split, state validation."""

import io
import itertools
import json
import pickle

import pytest
import torch
from PIL import Image

from ov_model.processor import OVProcessor
from ov_packing.shards import iter_bins
from ov_train.data.bin_table import read_bin, scan_bin_table
from ov_train.data.errors import LoaderError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.loader import PackedDataLoader, _MicroBatchStream
from ov_train.data.prepare import prepare

BUDGET = 400
SAMPLES = 36

pytestmark = pytest.mark.filterwarnings(
    # torch warns when asked for more workers than this machine's CPUs; irrelevant here.
    "ignore:This DataLoader will create:UserWarning"
)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, processor, config_for):
    """A prepared corpus of SAMPLES LLaVA samples of varied lengths; (shards dir, raw samples)."""
    root = tmp_path_factory.mktemp("loader")
    images = root / "images"
    images.mkdir()
    rows, raw = [], {}
    for index in range(SAMPLES):
        answer = "A red square. " * (1 + index % 8)
        if index % 4 == 3:
            conversation = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": answer}]
            rows.append({"id": f"s{index}", "conversations": conversation})
            raw[f"s{index}"] = (conversation, [])
            continue
        image = Image.new("RGB", (30 + 9 * index % 80, 40 + 5 * index % 60), (index * 7, 90, 30))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (images / f"{index}.png").write_bytes(buffer.getvalue())
        conversation = [
            {"from": "human", "value": "<image>\nWhat is shown in the image?"},
            {"from": "gpt", "value": answer},
        ]
        rows.append({"id": f"s{index}", "image": f"{index}.png", "conversations": conversation})
        raw[f"s{index}"] = (conversation, [buffer.getvalue()])
    (root / "data.json").write_text(json.dumps(rows))
    config = config_for((LlavaSource(root / "data.json", images),), root / "out", max_length=200)
    result = prepare(config, processor)
    assert result.report.counts.packed == SAMPLES
    return result.shards_dir, raw


def _loader(packed, processor, **overrides):
    settings = {"micro_batch_tokens": BUDGET, "seed": 7}
    settings.update(overrides)
    return PackedDataLoader(packed[0], processor, **settings)


def _take(loader, count):
    """The next `count` micro-batches, continuing into new epochs as a trainer does."""
    taken = []
    while len(taken) < count:
        for micro_batch in loader:
            taken.append(micro_batch)
            if len(taken) == count:
                break
    return taken


def _key(micro_batch):
    return (micro_batch.epoch, micro_batch.position, micro_batch.bins)


def _same(first, second):
    assert [_key(m) for m in first] == [_key(m) for m in second]
    for a, b in zip(first, second, strict=True):
        for name in ("input_ids", "labels", "cu_seqlens", "pixel_values", "image_grid_thw"):
            x, y = getattr(a.batch, name), getattr(b.batch, name)
            assert (x is None and y is None) or torch.equal(x, y), name


def test_bin_table_reads_exactly_what_iter_bins_reads(packed):
    table = scan_bin_table(packed[0])
    assert [read_bin(table, index) for index in range(table.num_bins)] == list(iter_bins(packed[0]))


def test_micro_batches_hold_the_processed_samples_of_their_bins(packed, processor):
    loader = _loader(packed, processor)
    micro_batch = next(iter(loader))
    samples = []
    for index in micro_batch.bins:
        for sample in read_bin(loader.table, index).samples:
            record = json.loads(sample.files["json"])
            conversation, images = packed[1][record["id"]]
            samples.append(processor(conversation, [Image.open(io.BytesIO(d)) for d in images]))
    expected_ids = torch.cat([sample.input_ids for sample in samples])
    assert torch.equal(micro_batch.batch.input_ids[0], expected_ids)
    assert torch.equal(micro_batch.batch.labels[0], torch.cat([s.labels for s in samples]))
    lengths = micro_batch.batch.cu_seqlens.diff().tolist()
    assert lengths == [sample.input_ids.numel() for sample in samples]
    assert micro_batch.num_samples == len(samples)
    assert micro_batch.num_tokens == int(expected_ids.numel())
    assert micro_batch.num_supervised == sum(sample.num_supervised for sample in samples)
    assert micro_batch.num_bins == len(micro_batch.bins) > 1  # several bins, no padding


@pytest.mark.parametrize("budget", [BUDGET, 150, 1])
def test_micro_batches_are_greedy_and_within_budget_unless_one_bin_is_larger(
    packed, processor, budget
):
    loader = _loader(packed, processor, micro_batch_tokens=budget)
    tokens = loader.table.tokens
    count = loader.micro_batches_in_epoch(0)
    batches = list(_take(loader, count))
    assert [m.epoch for m in batches] == [0] * count
    assert sum(m.num_bins for m in batches) == loader.num_bins
    for current, following in itertools.pairwise(batches):
        assert current.num_tokens == int(tokens[list(current.bins)].sum())
        assert current.num_tokens <= budget or current.num_bins == 1
        # greedy: the next bin did not fit
        assert current.num_tokens + int(tokens[following.bins[0]]) > budget
    if budget == 1:
        assert all(m.num_bins == 1 for m in batches)


def test_the_stream_is_the_same_for_0_1_and_2_workers(packed, processor):
    count = sum(_loader(packed, processor).micro_batches_in_epoch(e) for e in (0, 1)) + 3
    streams = [
        _take(_loader(packed, processor, num_workers=workers), count) for workers in (0, 1, 2)
    ]
    _same(streams[0], streams[1])
    _same(streams[0], streams[2])
    epochs = [m.epoch for m in streams[0]]
    assert epochs[0] == 0
    assert epochs[-1] == 2  # rolled over twice, with new permutations
    orders = [[b for m in streams[0] if m.epoch == e for b in m.bins] for e in (0, 1)]
    assert (
        sorted(orders[0]) == sorted(orders[1]) == list(range(_loader(packed, processor).num_bins))
    )
    assert orders[0] != orders[1]


@pytest.mark.parametrize(("stop", "workers_after"), [(1, 0), (4, 2), ("epoch", 1), ("epoch+2", 0)])
def test_resuming_from_a_state_continues_the_uninterrupted_stream(
    packed, processor, stop, workers_after
):
    per_epoch = _loader(packed, processor).micro_batches_in_epoch(0)
    stop = {"epoch": per_epoch, "epoch+2": per_epoch + 2}.get(stop, stop)
    total = stop + per_epoch
    reference = _take(_loader(packed, processor), total)
    first = _loader(packed, processor, num_workers=2)
    head = _take(first, stop)
    state = first.state_dict()
    if stop == per_epoch:
        assert (state["epoch"], state["position"]) == (1, 0)
    resumed = _loader(packed, processor, num_workers=workers_after)
    resumed.load_state_dict(state)
    tail = _take(resumed, total - stop)
    _same(head + tail, reference)


def test_a_loader_resumes_itself_between_iterations(packed, processor):
    loader = _loader(packed, processor)
    reference = _take(_loader(packed, processor), 6)
    first = _take(loader, 2)
    second = _take(loader, 4)
    _same(first + second, reference)


def test_each_iteration_is_the_rest_of_one_epoch(packed, processor):
    loader = _loader(packed, processor, num_workers=2)
    first = list(loader)
    assert len(first) == loader.micro_batches_in_epoch(0)
    assert {m.epoch for m in first} == {0}
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (1, 0)
    second = list(loader)
    assert len(second) == loader.micro_batches_in_epoch(1)
    assert {m.epoch for m in second} == {1}
    assert sorted(b for m in second for b in m.bins) == list(range(loader.num_bins))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_every_bin_exactly_once_per_epoch(packed, processor, world_size):
    per_epoch: dict[int, list[int]] = {0: [], 1: []}
    for rank in range(world_size):
        loader = _loader(packed, processor, rank=rank, world_size=world_size)
        count = loader.micro_batches_in_epoch(0) + loader.micro_batches_in_epoch(1)
        for micro_batch in _take(loader, count):
            per_epoch[micro_batch.epoch].extend(micro_batch.bins)
        assert loader.state_dict()["epoch"] == 2
        assert loader.bins_per_epoch in (
            loader.num_bins // world_size,
            -(-loader.num_bins // world_size),
        )
    for bins in per_epoch.values():
        assert sorted(bins) == list(range(loader.num_bins))


def test_load_state_dict_refuses_another_order(packed, processor):
    state = _loader(packed, processor).state_dict()
    for overrides in ({"seed": 8}, {"world_size": 2}, {"rank": 1, "world_size": 2}):
        with pytest.raises(LoaderError, match="a state only resumes the same data order"):
            _loader(packed, processor, **overrides).load_state_dict(state)
    loader = _loader(packed, processor)
    with pytest.raises(LoaderError, match="position"):
        loader.load_state_dict({**state, "position": loader.bins_per_epoch})
    with pytest.raises(LoaderError, match="not a version-1"):
        loader.load_state_dict({"epoch": 0})
    tampered = {**state, "data_fingerprint": "0" * 64}
    with pytest.raises(LoaderError, match="data_fingerprint"):
        loader.load_state_dict(tampered)


def test_a_processor_other_than_prepare_s_is_refused_naming_the_sample(
    packed, processor, tiny_model_dir
):
    other = OVProcessor.from_pretrained(tiny_model_dir, max_pixels=56 * 56 * 2)
    with pytest.raises(
        LoaderError, match=r"bin \d+, sample .* differs from the one used by prepare"
    ):
        next(iter(_loader(packed, other)))


def test_invalid_arguments_are_refused(packed, processor):
    with pytest.raises(LoaderError, match="micro_batch_tokens must be an integer >= 1"):
        _loader(packed, processor, micro_batch_tokens=0)
    with pytest.raises(LoaderError, match="rank 2 is not below world_size 2"):
        _loader(packed, processor, rank=2, world_size=2)
    bins = scan_bin_table(packed[0]).num_bins
    with pytest.raises(LoaderError, match="cannot feed"):
        _loader(packed, processor, rank=bins, world_size=bins + 1)


def test_the_stream_pickles_with_its_processor_for_spawned_workers(packed, processor):
    loader = _loader(packed, processor)
    stream = _MicroBatchStream(loader, 0, 0)
    copy = pickle.loads(pickle.dumps(stream))
    assert copy.processor is not processor
    _same(list(copy), list(stream))
