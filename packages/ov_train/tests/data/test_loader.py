"""PackedDataLoader: content, token budget, supervised counts from the bin table, the global
stream shared by every world size, determinism across worker counts, exact resume at the same
and at another world size, padding of image-less rows, bounded memory, state validation.

Note: before the global stream, each rank cut its own share of the bins into micro-batches and
the state was a per-rank bin position; the tests of that order (ranks partition each epoch's
bins, a state refuses another world size) became the union-of-ranks and resume-at-another-world-
size tests below.
"""

import gc
import io
import itertools
import json
import pickle
import shutil

import pytest
import torch
from PIL import Image

from ov_model import LlavaOV
from ov_model.packing import IGNORE_INDEX
from ov_model.processor import OVProcessor
from ov_packing.errors import ShardError
from ov_packing.shards import iter_bins
from ov_train.data.bin_order import StreamPosition
from ov_train.data.bin_table import (
    SUPERVISED_TARGETS,
    ShardTableWarning,
    load_bin_table,
    read_bin,
    scan_bin_table,
)
from ov_train.data.errors import LoaderError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.loader import MicroBatch, PackedDataLoader, _RankStream
from ov_train.data.prepare import prepare
from ov_train.source import StepBatches, supervised_targets

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


@pytest.fixture(scope="module")
def text_only(tmp_path_factory, processor, config_for):
    """Packed shards of six text-only samples (every row needs a padding image)."""
    root = tmp_path_factory.mktemp("text-only")
    rows = [
        {
            "id": f"t{index}",
            "conversations": [
                {"from": "human", "value": "Say hi."},
                {"from": "gpt", "value": "Hi there. " * (1 + index)},
            ],
        }
        for index in range(6)
    ]
    (root / "data.json").write_text(json.dumps(rows))
    return prepare(config_for((LlavaSource(root / "data.json"),), root / "out"), processor)


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
    return (micro_batch.epoch, micro_batch.index, micro_batch.bins)


def _same(first, second):
    assert [_key(m) for m in first] == [_key(m) for m in second]
    for a, b in zip(first, second, strict=True):
        for name in ("input_ids", "labels", "cu_seqlens", "pixel_values", "image_grid_thw"):
            x, y = getattr(a.batch, name), getattr(b.batch, name)
            assert (x is None and y is None) or torch.equal(x, y), name


def _world_steps(packed, processor, world_size, per_step, steps, state=None, **overrides):
    """`steps` optimizer steps of `world_size` ranks (`per_step` micro-batches each), as the
    global order: round by round, rank by rank; and every rank's state afterwards."""
    loaders = [
        _loader(packed, processor, rank=rank, world_size=world_size, **overrides)
        for rank in range(world_size)
    ]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
    per_rank = []
    for loader in loaders:
        batches = StepBatches(loader, per_step)
        drawn = []
        for _ in range(steps):
            plan = batches.next_step()
            step = list(plan)
            assert list(plan.supervised_targets) == [m.supervised_targets for m in step]
            drawn.extend(step)
        per_rank.append(drawn)
    order = [per_rank[rank][k] for k in range(per_step * steps) for rank in range(world_size)]
    return order, [loader.state_dict() for loader in loaders]


def test_the_bin_table_written_with_the_shards_equals_a_scan(packed):
    table, scanned = load_bin_table(packed[0]), scan_bin_table(packed[0])
    for name in ("shard", "offset", "length", "tokens", "samples"):
        assert getattr(table, name).tolist() == getattr(scanned, name).tolist(), name
    assert table.fingerprint == scanned.fingerprint
    assert [read_bin(table, index) for index in range(table.num_bins)] == list(iter_bins(packed[0]))


def test_a_flipped_byte_in_a_bin_is_an_error_naming_the_shard_and_bin(packed, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(packed[0], copy)
    table = load_bin_table(copy)
    assert table.sha256 is not None
    assert table.sha256.shape == (table.num_bins, 32)
    victim = table.num_bins // 2
    shard = copy / table.shard_names[int(table.shard[victim])]
    # a byte inside the bin's last member's data, not in a header: only the digest can see it
    position = int(table.offset[victim] + table.length[victim]) - 2 * 512 - 1
    data = bytearray(shard.read_bytes())
    data[position] ^= 0x01
    shard.write_bytes(bytes(data))
    expected = [read_bin(load_bin_table(packed[0]), index) for index in range(table.num_bins)]
    for index in range(table.num_bins):
        if index == victim:
            with pytest.raises(ShardError, match=rf"{shard.name}: bin {victim} \(bytes .*SHA-256"):
                read_bin(table, index)
        else:
            assert read_bin(table, index) == expected[index]


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
    assert not micro_batch.padded  # the corpus has images in most bins
    assert torch.equal(micro_batch.batch.input_ids[0], expected_ids)
    assert torch.equal(micro_batch.batch.labels[0], torch.cat([s.labels for s in samples]))
    lengths = micro_batch.batch.cu_seqlens.diff().tolist()
    assert lengths == [sample.input_ids.numel() for sample in samples]
    assert micro_batch.num_samples == len(samples)
    assert micro_batch.num_tokens == int(expected_ids.numel())
    assert micro_batch.num_supervised == sum(sample.num_supervised for sample in samples)
    assert micro_batch.supervised_targets == supervised_targets(micro_batch.batch)
    assert micro_batch.num_bins == len(micro_batch.bins) > 1  # several bins, no padding


@pytest.mark.parametrize("budget", [BUDGET, 150, 1])
def test_micro_batches_are_greedy_and_within_budget_unless_one_bin_is_larger(
    packed, processor, budget
):
    loader = _loader(packed, processor, micro_batch_tokens=budget, pad_imageless_rows=False)
    tokens = loader.table.tokens
    count = loader.micro_batches_in_epoch(0)
    batches = list(_take(loader, count))
    assert [m.epoch for m in batches] == [0] * count
    assert [m.index for m in batches] == list(range(count))
    assert sum(m.num_bins for m in batches) == loader.num_bins
    for current, following in itertools.pairwise(batches):
        assert current.num_tokens == int(tokens[list(current.bins)].sum())
        assert current.num_tokens <= budget or current.num_bins == 1
        # greedy: the next bin did not fit
        assert current.num_tokens + int(tokens[following.bins[0]]) > budget
    if budget == 1:
        assert all(m.num_bins == 1 for m in batches)


def test_announced_supervised_targets_are_what_the_micro_batches_hold(packed, processor):
    loader = _loader(packed, processor, rank=1, world_size=2)
    count = loader.micro_batches_in_epoch(0)  # about two epochs of this rank
    announced = loader.upcoming_supervised_targets(count)
    taken = _take(loader, count)
    assert {m.epoch for m in taken} == {0, 1}
    assert announced == [supervised_targets(m.batch) for m in taken]
    assert announced == [m.supervised_targets for m in taken]
    column = loader.table.columns[SUPERVISED_TARGETS]
    assert [int(column[list(m.bins)].sum()) for m in taken] == announced


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_ranks_of_a_step_together_read_the_one_rank_stream(packed, processor, world_size):
    per_step = 2
    per_epoch = _loader(packed, processor).micro_batches_in_epoch(0)
    steps = per_epoch // (per_step * world_size) + 1
    reference, _ = _world_steps(packed, processor, 1, per_step * world_size, steps)
    union, states = _world_steps(packed, processor, world_size, per_step, steps)
    assert [_key(m) for m in union] == [_key(m) for m in reference]
    assert all(state == states[0] for state in states)  # every rank saves the same state
    assert {m.epoch for m in reference} == {0, 1}  # the steps cross an epoch end


@pytest.mark.parametrize(("saved_on", "resumed_on"), [(2, 1), (2, 3), (3, 2), (1, 2)])
def test_a_state_saved_at_one_world_size_resumes_at_another(
    packed, processor, saved_on, resumed_on
):
    per_step = 2
    reference, _ = _world_steps(packed, processor, 1, per_step * 6, 1)
    head, states = _world_steps(packed, processor, saved_on, per_step, 1)
    rest = len(reference) - len(head)
    tail, _ = _world_steps(
        packed, processor, resumed_on, rest // resumed_on, 1, state=states[0], num_workers=1
    )
    assert [_key(m) for m in head + tail] == [_key(m) for m in reference[: len(head + tail)]]
    assert len(head + tail) > len(reference) - resumed_on


def test_a_rank_reads_only_the_bins_of_its_micro_batches(packed, processor, monkeypatch):
    import ov_train.data.loader as loader_module

    read = []

    def counting_read_bin(table, index):
        read.append(index)
        return read_bin(table, index)

    monkeypatch.setattr(loader_module, "read_bin", counting_read_bin)
    taken = _take(_loader(packed, processor, rank=1, world_size=3), 4)
    assert read == [index for micro_batch in taken for index in micro_batch.bins]


def test_the_stream_is_the_same_for_0_1_and_2_workers(packed, processor):
    probe = _loader(packed, processor, rank=1, world_size=2)
    count = (probe.micro_batches_in_epoch(0) + probe.micro_batches_in_epoch(1)) // 2 + 2
    streams = [
        _take(_loader(packed, processor, rank=1, world_size=2, num_workers=workers), count)
        for workers in (0, 1, 2)
    ]
    _same(streams[0], streams[1])
    _same(streams[0], streams[2])
    assert [m.epoch for m in streams[0]][-1] == 2  # rolled over twice, with new permutations


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
        assert (state["epoch"], state["index"]) == (1, 0)
    resumed = _loader(packed, processor, num_workers=workers_after)
    resumed.load_state_dict(state)
    tail = _take(resumed, total - stop)
    _same(head + tail, reference)


def test_a_loader_resumes_itself_between_iterations(packed, processor):
    loader = _loader(packed, processor, num_workers=1)
    reference = _take(_loader(packed, processor), 6)
    first = _take(loader, 2)
    second = _take(loader, 4)
    _same(first + second, reference)
    loader.load_state_dict(_loader(packed, processor).state_dict())  # back to the start
    _same(_take(loader, 6), reference)


def test_each_iteration_is_the_rank_s_share_of_one_epoch(packed, processor):
    loader = _loader(packed, processor, num_workers=2)
    first = list(loader)
    assert [m.index for m in first] == list(range(loader.micro_batches_in_epoch(0)))
    assert {m.epoch for m in first} == {0}
    assert (loader.state_dict()["epoch"], loader.state_dict()["index"]) == (1, 0)
    second = list(loader)
    assert {m.epoch for m in second} == {1}
    assert sorted(b for m in second for b in m.bins) == list(range(loader.num_bins))
    shares = [list(_loader(packed, processor, rank=r, world_size=3)) for r in range(3)]
    assert sorted(m.index for share in shares for m in share) == [m.index for m in first]
    assert [m.index for m in shares[1]] == [m.index for m in first][1::3]


def test_rows_without_an_image_get_a_padding_sample_the_model_accepts(
    text_only, processor, tiny_model_dir
):
    padded = PackedDataLoader(text_only.shards_dir, processor, micro_batch_tokens=80, seed=0)
    plain = PackedDataLoader(
        text_only.shards_dir, processor, micro_batch_tokens=80, seed=0, pad_imageless_rows=False
    )
    model = LlavaOV.from_pretrained(tiny_model_dir).eval()
    merge = processor.image_processor.merge_size
    for with_pad, without in zip(list(padded), list(plain), strict=True):
        assert with_pad.padded
        assert not without.padded
        batch = with_pad.batch
        assert batch.input_ids[0, -1] == processor.image_token_id
        assert batch.labels[0, -1] == IGNORE_INDEX
        assert batch.cu_seqlens.diff()[-1] == 1
        assert batch.image_grid_thw.tolist() == [[1, merge, merge]]
        assert batch.pixel_values.shape[0] == merge * merge
        assert with_pad.num_samples == without.num_samples
        assert with_pad.supervised_targets == without.supervised_targets
        assert with_pad.num_tokens == without.num_tokens + 1
        with torch.no_grad():
            out_pad = model(**batch.model_inputs(), return_logits=False)
            out_plain = model(**without.batch.model_inputs(), return_logits=False)
        assert out_pad.num_supervised == out_plain.num_supervised == with_pad.supervised_targets
        torch.testing.assert_close(out_pad.loss_sum, out_plain.loss_sum, rtol=1e-5, atol=1e-5)


def test_rows_are_padded_to_the_multiple_or_the_static_length_parallelism_asks_for(
    packed, processor
):
    plain = list(_loader(packed, processor))
    multiple = list(_loader(packed, processor, pad_multiple=8))
    static = list(_loader(packed, processor, pad_length=BUDGET + 8))
    for row, by_multiple, by_length in zip(plain, multiple, static, strict=True):
        assert by_multiple.num_tokens % 8 == 0
        assert 0 <= by_multiple.num_tokens - row.num_tokens < 8
        assert by_length.num_tokens == BUDGET + 8
        for padded in (by_multiple, by_length):
            assert padded.supervised_targets == row.supervised_targets
            assert padded.num_samples == row.num_samples
            same = row.num_tokens
            assert torch.equal(padded.batch.input_ids[0, :same], row.batch.input_ids[0])
    with pytest.raises(LoaderError, match=r"bins \[.*more than the static length 3"):
        list(_loader(packed, processor, pad_length=3))


@pytest.mark.parametrize("per_step", [4, 40])
def test_host_memory_holds_a_bounded_number_of_micro_batches_whatever_the_step(
    packed, processor, per_step
):
    workers, prefetch = 2, 2
    loader = _loader(packed, processor, micro_batch_tokens=150, num_workers=workers)
    assert per_step > 4 or loader.micro_batches_in_epoch(0) < 40  # 40 crosses epochs
    plan = StepBatches(loader, per_step).next_step()
    alive = []
    for micro_batch in plan:
        del micro_batch
        gc.collect()
        alive.append(sum(type(item) is MicroBatch for item in gc.get_objects()))
    assert len(alive) == per_step
    assert max(alive) <= workers * prefetch + 1
    loader.close()


def test_a_folder_without_a_bin_table_is_scanned_but_cannot_announce_counts(
    packed, processor, tmp_path
):
    old = tmp_path / "old"
    old.mkdir()
    for path in packed[0].iterdir():
        if path.suffix == ".tar":
            (old / path.name).symlink_to(path)
    raw = json.loads((packed[0] / "index.json").read_text())
    raw["version"] = 1
    del raw["table"]
    (old / "index.json").write_text(json.dumps(raw))
    with pytest.warns(ShardTableWarning, match="without a bin table"):
        loader = PackedDataLoader(old, processor, micro_batch_tokens=BUDGET, seed=7)
    _same(_take(loader, 3), _take(_loader(packed, processor), 3))
    with pytest.raises(LoaderError, match="no 'supervised_targets' column"):
        loader.upcoming_supervised_targets(1)


def test_load_state_dict_refuses_another_order(packed, processor):
    state = _loader(packed, processor).state_dict()
    for overrides in ({"seed": 8}, {"micro_batch_tokens": BUDGET + 1}):
        with pytest.raises(LoaderError, match="a state only resumes the same data order"):
            _loader(packed, processor, **overrides).load_state_dict(state)
    loader = _loader(packed, processor)
    with pytest.raises(LoaderError, match="index"):
        loader.load_state_dict({**state, "index": loader.micro_batches_in_epoch(0)})
    with pytest.raises(LoaderError, match="not a version-2"):
        loader.load_state_dict({"version": 1, "epoch": 0, "position": 0})
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


def test_a_supervised_count_other_than_prepare_s_is_refused_naming_the_sample(packed, processor):
    loader = _loader(packed, processor)
    loader.table.sample_columns[SUPERVISED_TARGETS][0] += 1  # bin 0's first sample
    with pytest.raises(LoaderError, match=r"bin 0, sample .* supervised targets, prepare recorded"):
        list(loader)


def test_invalid_arguments_are_refused(packed, processor):
    with pytest.raises(LoaderError, match="micro_batch_tokens must be an integer >= 1"):
        _loader(packed, processor, micro_batch_tokens=0)
    with pytest.raises(LoaderError, match="rank 2 is not below world_size 2"):
        _loader(packed, processor, rank=2, world_size=2)


def test_the_stream_pickles_with_its_processor_for_spawned_workers(packed, processor):
    loader = _loader(packed, processor)
    stream = _RankStream(loader, StreamPosition(0, 1))
    copy = pickle.loads(pickle.dumps(stream))
    assert copy.processor is not processor
    _same(list(itertools.islice(copy, 3)), list(itertools.islice(stream, 3)))
