"""verify_plan: each broken invariant is found and named (plans tampered with by hand)."""

import dataclasses

import numpy as np
import pytest

from ov_packing import (
    PlanVerificationError,
    SampleLengths,
    inputs,
    pack,
    verify_plan,
    write_lengths,
)
from ov_packing.sample_ids import SampleIds
from ov_packing.verify import find_problems


@pytest.fixture
def plan():
    lengths = SampleLengths(
        source="test",
        ids=["a", "b", "c", "d", "e"],
        tokens=np.array([6, 4, 7, 3, 12], dtype=np.int32),
        patches=np.array([1, 2, 3, 4, 5], dtype=np.int32),
    )
    return pack(lengths, capacity=10, patch_capacity=6)


def tampered(plan, **changes):
    return dataclasses.replace(plan, **changes)


def test_a_correct_plan_passes(plan):
    verify_plan(plan)
    assert find_problems(plan) == []


def test_sample_in_two_bins_is_found(plan):
    samples = plan.bin_samples.copy()
    samples[0] = samples[-1]
    problems = find_problems(tampered(plan, bin_samples=samples))
    assert any("placed more than once" in p for p in problems)
    assert any("neither packed nor rejected" in p for p in problems)


def test_bin_over_capacity_is_found(plan):
    tokens = plan.tokens.copy()
    tokens[plan.bin(0)[0]] += 10
    with pytest.raises(PlanVerificationError, match="bins over 10 tokens"):
        verify_plan(tampered(plan, tokens=tokens))


def test_bin_over_patch_capacity_is_found(plan):
    patches = plan.patches.copy()
    patches[plan.bin(0)[0]] += 6
    problems = find_problems(tampered(plan, patches=patches))
    assert any("bins over 6 patches" in p for p in problems)


def test_wrong_rejection_reason_is_found(plan):
    tokens = plan.tokens.copy()
    tokens[4] = 9  # fits now, yet the plan rejects it
    problems = find_problems(tampered(plan, tokens=tokens))
    assert any("wrong rejection status" in p and "'e'" in p for p in problems)


def test_mismatch_with_the_input_names_the_sample(plan):
    other = SampleLengths(
        source="other.jsonl",
        ids=["a", "b", "x", "d", "e"],
        tokens=plan.tokens,
        patches=plan.patches,
    )
    problems = find_problems(plan, other)
    assert problems == ["sample 2: id 'c' in the plan, 'x' in the input"]


def test_repeated_id_is_found_naming_both_positions(plan):
    broken = tampered(plan)
    object.__setattr__(broken, "ids", SampleIds(["a", "b", "c", "b", "e"]))
    assert find_problems(broken) == ["duplicate id 'b': samples 1 and 3"]


@pytest.mark.parametrize("name", ["in.parquet", "in.jsonl"])
def test_input_file_is_compared_block_by_block(tmp_path, monkeypatch, name):
    monkeypatch.setattr(inputs, "_BLOCK_BYTES", 64)
    monkeypatch.setattr(inputs, "_PARQUET_BATCH", 4)
    ids = [f"s{i:03d}" for i in range(40)]
    tokens = (np.arange(40, dtype=np.int32) % 9) + 1
    plan = pack(SampleLengths("x", ids, tokens, None), capacity=10)
    path = tmp_path / name
    write_lengths(path, SampleLengths("x", ids, tokens, None))
    assert find_problems(plan, path) == []
    verify_plan(plan, str(path))
    changed = tokens.copy()
    changed[[33, 37]] += 1
    write_lengths(path, SampleLengths("x", [*ids[:30], "zz", *ids[31:]], changed, None))
    assert find_problems(plan, path) == [
        "sample 30: id 's030' in the plan, 'zz' in the input",
        "2 samples whose token count differs from the input: 's033', 's037'",
    ]
    write_lengths(path, SampleLengths("x", ids[:39], tokens[:39], None))
    assert find_problems(plan, path) == [f"input {path} has 39 samples, the plan 40"]
