"""PackPlan files: exact round trips, deterministic bytes, and clear errors on damaged files."""

import struct

import numpy as np
import pytest

from ov_packing import PackPlan, PlanFileError, pack
from ov_packing.plan import FORMAT_VERSION, MAGIC
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


def test_save_then_load_gives_the_same_plan(plan, tmp_path):
    path = tmp_path / "plan.ovp"
    plan.save(path)
    assert_same_plan(PackPlan.load(path), plan)
    assert PackPlan.load(path).to_bytes() == path.read_bytes()


def test_plan_without_ids_or_patches_round_trips(tmp_path):
    plan = pack(np.array([5, 9000, 3000, 4000]), capacity=8192)
    plan.save(tmp_path / "p")
    loaded = PackPlan.load(tmp_path / "p")
    assert_same_plan(loaded, plan)
    assert loaded.ids is None
    assert loaded.patches is None
    assert loaded.sample_id(1) == "1"


def test_header_holds_magic_version_and_payload_size(plan):
    data = plan.to_bytes()
    magic, version, size = struct.unpack_from("<8sIQ", data)
    assert (magic, version, size) == (MAGIC, FORMAT_VERSION, len(data) - 52)


def test_truncated_file_is_reported(plan, tmp_path):
    path = tmp_path / "plan.ovp"
    path.write_bytes(plan.to_bytes()[:-10])
    with pytest.raises(PlanFileError, match=r"plan\.ovp: truncated"):
        PackPlan.load(path)
    path.write_bytes(plan.to_bytes()[:30])
    with pytest.raises(PlanFileError, match="truncated plan file"):
        PackPlan.load(path)


def test_flipped_byte_is_a_checksum_error(plan):
    data = bytearray(plan.to_bytes())
    data[len(data) // 2] ^= 0x40
    with pytest.raises(PlanFileError, match="checksum mismatch"):
        PackPlan.from_bytes(bytes(data), source="x.ovp")


def test_unknown_version_is_refused_with_the_supported_one(plan):
    data = bytearray(plan.to_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    with pytest.raises(PlanFileError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        PackPlan.from_bytes(bytes(data))


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
