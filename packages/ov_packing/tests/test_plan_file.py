"""PackPlan files: exact round trips, deterministic bytes, and clear errors on damaged files."""

import struct

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ov_packing import PackParams, PackPlan, PlanFileError, pack
from ov_packing.plan import FORMAT_VERSION, MAGIC, PLAN_SCHEMA_V2
from ov_packing.sample_ids import SampleIds
from ov_packing.synthetic import generate_lengths


@pytest.fixture
def plan():
    lengths = generate_lengths("sft", 2_000, seed=5)
    return pack(lengths, capacity=8192, patch_capacity=16_000, max_per_bin=12, seed=3)


def assert_same_plan(a: PackPlan, b: PackPlan) -> None:
    assert a.params == b.params
    assert a.algorithm == b.algorithm
    assert a.ids == b.ids
    for name in ("tokens", "patches", "bin_offsets", "bin_samples", "rejected", "rejected_reasons"):
        left, right = getattr(a, name), getattr(b, name)
        if left is None or right is None:
            assert left is right, name
            continue
        assert left.dtype == right.dtype, name
        np.testing.assert_array_equal(left, right, err_msg=name)


@pytest.mark.parametrize("version", [2, 1])
def test_save_then_load_gives_the_same_plan(plan, tmp_path, version):
    path = tmp_path / "plan.ovp"
    plan.save(path, version=version)
    assert_same_plan(PackPlan.load(path), plan)
    assert PackPlan.load(path).to_bytes(version=version) == path.read_bytes()
    assert plan.to_bytes(version=version) == plan.to_bytes(version=version)


@pytest.mark.parametrize("version", [2, 1])
def test_plan_without_ids_or_patches_round_trips(tmp_path, version):
    plan = pack(np.array([5, 9000, 3000, 4000]), capacity=8192)
    plan.save(tmp_path / "p", version=version)
    loaded = PackPlan.load(tmp_path / "p")
    assert_same_plan(loaded, plan)
    assert loaded.ids is None
    assert loaded.patches is None
    assert loaded.sample_id(1) == "1"


def test_version_1_file_still_loads_and_converts_to_version_2(plan, tmp_path):
    plan.save(tmp_path / "v1.ovp", version=1)
    assert (tmp_path / "v1.ovp").read_bytes()[:8] == MAGIC
    PackPlan.load(tmp_path / "v1.ovp").save(tmp_path / "v2.ovp")
    assert (tmp_path / "v2.ovp").read_bytes() == plan.to_bytes()


def test_version_2_is_an_arrow_ipc_file_with_the_documented_schema(plan, tmp_path):
    path = tmp_path / "plan.ovp"
    plan.save(path)
    assert FORMAT_VERSION == 2
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    assert reader.schema.remove_metadata().equals(PLAN_SCHEMA_V2)
    metadata = reader.schema.metadata
    assert metadata[b"ov_packing.plan_format"] == b"2"
    assert msgspec.json.decode(metadata[b"ov_packing.params"]) == {
        "capacity": 8192,
        "patch_capacity": 16_000,
        "max_per_bin": 12,
        "seed": 3,
    }
    assert metadata[b"ov_packing.num_samples"] == b"2000"
    assert metadata[b"ov_packing.digest"].startswith(b"blake2b-256:")
    row = reader.read_all().to_pylist()[0]
    assert row["ids"] == list(plan.ids)
    assert row["tokens"] == plan.tokens.tolist()
    assert row["bin_offsets"] == plan.bin_offsets.tolist()
    assert row["bin_samples"] == plan.bin_samples.tolist()
    assert row["rejected_reasons"] == plan.rejected_reasons.tolist()


def test_version_2_load_is_memory_mapped(plan, tmp_path):
    path = tmp_path / "plan.ovp"
    plan.save(path)
    loaded = PackPlan.load(path)
    for array in (loaded.tokens, loaded.patches, loaded.bin_samples, loaded.bin_offsets):
        assert not array.flags.owndata  # a view of the mapped file, not a copy
        assert not array.flags.writeable
    assert isinstance(loaded.ids, SampleIds)
    assert loaded.ids.arrow.type == pa.large_string()


def test_header_holds_magic_version_and_payload_size(plan):
    data = plan.to_bytes(version=1)
    magic, version, size = struct.unpack_from("<8sIQ", data)
    assert (magic, version, size) == (MAGIC, 1, len(data) - 52)


def test_truncated_file_is_reported(plan, tmp_path):
    path = tmp_path / "plan.ovp"
    path.write_bytes(plan.to_bytes(version=1)[:-10])
    with pytest.raises(PlanFileError, match=r"plan\.ovp: truncated"):
        PackPlan.load(path)
    path.write_bytes(plan.to_bytes(version=1)[:30])
    with pytest.raises(PlanFileError, match="truncated plan file"):
        PackPlan.load(path)
    for cut in (10, 1000, len(plan.to_bytes()) // 2):
        path.write_bytes(plan.to_bytes()[:-cut])
        with pytest.raises(PlanFileError, match=r"plan\.ovp: truncated or corrupt plan file"):
            PackPlan.load(path)


@pytest.mark.parametrize("version", [2, 1])
def test_flipped_byte_is_a_checksum_error(plan, version):
    data = bytearray(plan.to_bytes(version=version))
    if version == 2:  # a byte of the token counts, inside the Arrow buffers
        where = bytes(data).find(plan.tokens[100:110].astype("<i4").tobytes()) + 5
    else:
        where = len(data) // 2
    data[where] ^= 0x40
    with pytest.raises(PlanFileError, match=r"x\.ovp: checksum mismatch"):
        PackPlan.from_bytes(bytes(data), source="x.ovp")


def test_flipped_id_byte_is_a_checksum_error(plan):
    data = bytearray(plan.to_bytes())
    data[bytes(data).find(plan.ids[1000].encode()) + 2] ^= 0x01
    with pytest.raises(PlanFileError, match="checksum mismatch"):
        PackPlan.from_bytes(bytes(data))


def test_unknown_version_is_refused_with_the_supported_one(plan, tmp_path):
    data = bytearray(plan.to_bytes(version=1))
    struct.pack_into("<I", data, 8, 3)
    with pytest.raises(PlanFileError, match="version 3 is not supported"):
        PackPlan.from_bytes(bytes(data))
    schema = PLAN_SCHEMA_V2.with_metadata({"ov_packing.plan_format": "3"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema):
        pass
    with pytest.raises(PlanFileError, match=r"version 3 is not supported .*versions \(1, 2\)"):
        PackPlan.from_bytes(sink.getvalue().to_pybytes())
    with pytest.raises(PlanFileError, match="cannot write plan format version 3"):
        plan.save(tmp_path / "p", version=3)


def test_other_arrow_file_is_not_a_plan(tmp_path):
    path = tmp_path / "t.arrow"
    table = pa.table({"x": [1, 2]})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(PlanFileError, match=r"without ov_packing\.plan_format metadata"):
        PackPlan.load(path)


def _plan_with_ids(ids):
    return PackPlan(
        params=PackParams(capacity=10),
        algorithm="first-fit-decreasing",
        ids=ids,
        tokens=np.array([3, 3, 3, 3], dtype=np.int32),
        patches=None,
        bin_offsets=np.array([0, 3, 4], dtype=np.int64),
        bin_samples=np.array([0, 1, 2, 3], dtype=np.int32),
        rejected=np.zeros(0, dtype=np.int32),
        rejected_reasons=np.zeros(0, dtype=np.uint8),
    )


def test_duplicate_ids_are_refused_naming_the_id_and_both_positions(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate id 'b': samples 1 and 3"):
        _plan_with_ids(["a", "b", "c", "b"])
    with pytest.raises(ValueError, match=r"duplicate id 'x': samples 0 and 2"):
        pack(np.array([1, 2, 3]), capacity=8, ids=["x", "y", "x"])
    # A file holding repeated ids (written around the check) is refused on load, in both versions.
    plan = _plan_with_ids(["a", "b", "c", "d"])
    object.__setattr__(plan, "ids", SampleIds(["a", "b", "c", "b"]))
    for version in (1, 2):
        plan.save(tmp_path / "dup.ovp", version=version)
        with pytest.raises(PlanFileError, match=r"dup\.ovp: .*duplicate id 'b': samples 1 and 3"):
            PackPlan.load(tmp_path / "dup.ovp")


def test_other_file_is_not_a_plan(tmp_path):
    path = tmp_path / "lengths.jsonl"
    path.write_text('{"id": "a", "tokens": 3}\n' * 10)
    with pytest.raises(PlanFileError, match="not an ov_packing plan file"):
        PackPlan.load(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PlanFileError, match=r"nope\.ovp: plan file not found"):
        PackPlan.load(tmp_path / "nope.ovp")


def test_long_and_unicode_ids_round_trip(tmp_path):
    ids = ["x" * 300, "é/ü:" * 100, "short"]
    plan = pack(np.array([10, 20, 30]), capacity=64, ids=ids)
    plan.save(tmp_path / "p")
    assert PackPlan.load(tmp_path / "p").ids == ids


def test_cli_plans_from_parquet_reading_the_ids_after_packing(tmp_path):
    from click.testing import CliRunner

    from ov_packing.cli import main
    from ov_packing.inputs import write_lengths

    lengths = generate_lengths("sft", 3_000, seed=2)
    source = tmp_path / "in.parquet"
    write_lengths(source, lengths)
    runner = CliRunner()
    args = ["plan", str(source), "--capacity", "8192", "--patch-capacity", "9000"]
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "p.ovp")])
    assert result.exit_code == 0, result.output
    loaded = PackPlan.load(tmp_path / "p.ovp")
    expected = pack(lengths, capacity=8192, patch_capacity=9000)
    assert_same_plan(loaded, expected)
    assert (tmp_path / "p.ovp").read_bytes() == expected.to_bytes()
    assert (
        "ok:"
        in runner.invoke(main, ["verify", str(tmp_path / "p.ovp"), "--input", str(source)]).output
    )
    # The same ids from JSONL give the same plan bytes; format 1 on request.
    write_lengths(tmp_path / "in.jsonl", lengths)
    result = runner.invoke(
        main,
        [
            "plan",
            str(tmp_path / "in.jsonl"),
            *args[2:],
            "--plan-format",
            "1",
            "-o",
            str(tmp_path / "v1.ovp"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v1.ovp").read_bytes() == expected.to_bytes(version=1)
    # A repeated id, found when the id column is read after packing, names both rows.
    ids = list(lengths.ids)
    ids[2500] = ids[7]
    pq.write_table(pa.table({"id": ids, "tokens": lengths.tokens}), source)
    result = runner.invoke(
        main, ["plan", str(source), "--capacity", "8192", "-o", str(tmp_path / "d.ovp")]
    )
    assert result.exit_code == 2
    assert f"{source}: row 2500: duplicate id '{ids[7]}' (first in row 7)" in result.output
    assert not (tmp_path / "d.ovp").exists()
