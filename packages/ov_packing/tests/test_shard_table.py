"""The bin table written with the shards: byte ranges, counts and caller columns, version-1
directories, and the checks that refuse an altered or unsafe table."""

import io
import json
import tarfile
from pathlib import Path

import msgspec
import numpy as np
import pytest

from ov_packing.errors import ShardError
from ov_packing.plan import PackParams, PackPlan
from ov_packing.shard_table import load_table
from ov_packing.shards import ShardIndex, iter_bins, write_shards


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _plan(ids: list[str], bins: list[list[int]], patches: bool = True) -> PackPlan:
    rng = np.random.default_rng(len(ids))
    return PackPlan(
        params=PackParams(capacity=4096),
        algorithm="test",
        ids=ids,
        tokens=rng.integers(1, 1000, len(ids)).astype(np.int32),
        patches=rng.integers(0, 500, len(ids)).astype(np.int32) if patches else None,
        bin_offsets=np.cumsum([0] + [len(m) for m in bins]).astype(np.int64),
        bin_samples=np.array([i for members in bins for i in members], dtype=np.int32),
        rejected=np.zeros(0, np.int32),
        rejected_reasons=np.zeros(0, np.uint8),
    )


BINS = [[3, 0], [7], [5, 2, 4], [1, 6]]


@pytest.fixture
def source(tmp_path) -> Path:
    """One source tar of eight samples `k0`..`k7` with files of varied sizes."""
    rng = np.random.default_rng(1)
    members = []
    for number in range(8):
        members.append((f"k{number}.jpg", rng.bytes(int(rng.integers(1, 3000)))))
        members.append((f"k{number}.json", json.dumps({"n": number}).encode()))
    return _write_tar(tmp_path / "source.tar", members)


@pytest.fixture
def written(source, tmp_path):
    """Shards of BINS (two shards) with two caller columns; (out dir, plan, columns)."""
    plan = _plan([f"k{n}" for n in range(8)], BINS)
    columns = {"weight": np.arange(8) * 10 + 1, "flag": np.array([1, 0, 1, 0, 1, 0, 1, 0])}
    write_shards(plan, [source], tmp_path / "out", max_bins_per_shard=3, sample_columns=columns)
    return tmp_path / "out", plan, columns


def test_table_byte_ranges_hold_exactly_each_bins_members(written):
    out, plan, _ = written
    table = load_table(out)
    index = ShardIndex.load(out)
    assert table.num_bins == plan.num_bins == 4
    assert table.shard.tolist() == [0, 0, 0, 1]
    for number in range(table.num_bins):
        shard = out / index.shards[int(table.shard[number])].name
        with open(shard, "rb") as file:
            file.seek(int(table.offset[number]))
            data = file.read(int(table.length[number]))
        with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 1024)) as tar:
            names = [member.name for member in tar.getmembers()]
        key = f"bin-{number:09d}"
        assert names[0] == f"{key}.json"
        assert all(name.startswith(f"{key}.") for name in names)
        assert len(names) == 1 + 2 * len(BINS[number])  # nothing of the next bin


def test_table_counts_and_columns_agree_with_the_plan_and_the_shards(written):
    out, _, columns = written
    table = load_table(out)
    bins = list(iter_bins(out))
    assert table.tokens.tolist() == [packed.tokens for packed in bins]
    assert table.patches.tolist() == [packed.patches for packed in bins]
    assert table.samples.tolist() == [len(packed.samples) for packed in bins]
    assert table.first_sample.tolist() == [0, 2, 3, 6, 8]
    for name, values in columns.items():
        assert table.bin_columns[name].tolist() == [int(values[m].sum()) for m in BINS]
        assert table.sample_columns[name].tolist() == [int(values[i]) for m in BINS for i in m]
    assert ShardIndex.load(out).table.columns == ["weight", "flag"]


def test_a_plan_without_patches_and_without_columns_has_a_table_too(source, tmp_path):
    plan = _plan([f"k{n}" for n in range(8)], BINS, patches=False)
    write_shards(plan, [source], tmp_path / "out")
    table = load_table(tmp_path / "out")
    assert table.patches is None
    assert table.bin_columns == table.sample_columns == {}
    assert table.tokens.tolist() == [int(plan.tokens[m].sum()) for m in BINS]


def test_a_version_1_directory_has_no_table_and_still_reads(written):
    out, _, _ = written
    raw = json.loads((out / "index.json").read_text())
    raw["version"] = 1
    del raw["table"]
    (out / "index.json").write_text(json.dumps(raw))
    assert load_table(out) is None
    assert len(list(iter_bins(out))) == 4


def test_an_altered_or_missing_table_is_refused_naming_the_file(written):
    out, _, _ = written
    data = bytearray((out / "bins.npy").read_bytes())
    data[-1] ^= 1
    (out / "bins.npy").write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"bins\.npy: SHA-256 differs"):
        load_table(out)
    (out / "bins.npy").unlink()
    with pytest.raises(ShardError, match=r"bins\.npy: bin table file listed in index\.json"):
        load_table(out)


def _replace_table_file(out: Path, name: str, array: np.ndarray, allow_pickle=False) -> None:
    """Write `array` as table file `name` and record its hash, as a forger would."""
    import hashlib

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    (out / name).write_bytes(buffer.getvalue())
    index = ShardIndex.load(out)
    field = "bins_sha256" if name == "bins.npy" else "samples_sha256"
    table = msgspec.structs.replace(
        index.table, **{field: hashlib.sha256(buffer.getvalue()).hexdigest()}
    )
    (out / "index.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(index, table=table))
    )


def test_a_pickled_table_is_never_unpickled(written):
    out, _, _ = written
    _replace_table_file(out, "bins.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardError, match=r"bins\.npy: not a readable \.npy array"):
        load_table(out)


def test_a_table_that_disagrees_with_the_index_or_itself_is_refused(written):
    out, _, _ = written
    bins = np.load(out / "bins.npy")
    moved = bins.copy()
    moved["offset"][3] = 10**9
    _replace_table_file(out, "bins.npy", moved)
    with pytest.raises(ShardError, match="byte range lies outside its shard"):
        load_table(out)
    wrong_sum = bins.copy()
    wrong_sum["weight"][0] += 1
    _replace_table_file(out, "bins.npy", wrong_sum)
    with pytest.raises(ShardError, match="column 'weight' is not the sum of its sub-samples"):
        load_table(out)
    _replace_table_file(out, "bins.npy", bins[:3])
    with pytest.raises(ShardError, match=r"3 bins and 8 sub-samples, index\.json says 4 and 8"):
        load_table(out)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"Bad-Name": np.zeros(8, int)}, "must match"),
        ({"tokens": np.zeros(8, int)}, "not be one of"),
        ({"short": np.zeros(7, int)}, r"one value per plan sample \(8,\)"),
        ({"real": np.zeros(8)}, "not integers"),
    ],
)
def test_malformed_columns_are_refused_before_anything_is_written(
    source, tmp_path, columns, message
):
    plan = _plan([f"k{n}" for n in range(8)], BINS)
    with pytest.raises(ValueError, match=message):
        write_shards(plan, [source], tmp_path / "out", sample_columns=columns)
    assert not (tmp_path / "out").exists()
