"""Independent re-check of a plan: every invariant the packer promises, recomputed with numpy.

Nothing here calls the C++ core, so a bug there cannot hide itself. Checked: ids are unique; each
input sample is in exactly one bin or rejected; no bin is empty or over any budget (tokens,
patches, samples); every rejection has the right reason and every sample that fits was packed;
and, given the input (a `SampleLengths` or a lengths file), the plan describes exactly that input
(same ids, token and patch counts).

Memory: the checks work on the plan's arrays in place (a memory-mapped version-2 plan is not
copied) with temporaries of at most a few bytes per sample: placement counts (int32), the
rejection codes (2 x uint8), id hashes for the uniqueness check (8 bytes, see `sample_ids`), bin
sums in blocks. An input file is compared block by block as it is read, never held whole.
"""

import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ov_packing.errors import PlanVerificationError
from ov_packing.inputs import SampleLengths, iter_lengths
from ov_packing.plan import PackPlan, RejectReason

_SHOWN = 5  # offending items quoted per problem
_BLOCK = 1 << 20  # indices per block when counting placements


def _quote(indices: np.ndarray, plan: PackPlan, what: str) -> str:
    shown = ", ".join(repr(plan.sample_id(int(i))) for i in indices[:_SHOWN])
    more = f" and {indices.size - _SHOWN} more" if indices.size > _SHOWN else ""
    return f"{indices.size} {what}: {shown}{more}"


def find_problems(
    plan: PackPlan, lengths: SampleLengths | str | os.PathLike[str] | None = None
) -> list[str]:
    """Every broken invariant of `plan` (checked against `lengths`, a `SampleLengths` or the path
    of a lengths file read block by block, when given), as messages."""
    problems: list[str] = []
    params = plan.params
    n = plan.num_samples
    if plan.ids is not None:
        duplicate = plan.ids.first_duplicate()
        if duplicate is not None:
            first, second = duplicate
            problems.append(f"duplicate id {plan.ids[second]!r}: samples {first} and {second}")
    seen = np.zeros(n, dtype=np.int32)
    for indices in (plan.bin_samples, plan.rejected):
        for start in range(0, indices.shape[0], _BLOCK):
            np.add.at(seen, indices[start : start + _BLOCK], 1)
    if np.any(seen == 0):
        problems.append(
            _quote(np.flatnonzero(seen == 0), plan, "samples neither packed nor rejected")
        )
    if np.any(seen > 1):
        problems.append(_quote(np.flatnonzero(seen > 1), plan, "samples placed more than once"))
    del seen

    per_bin = np.diff(plan.bin_offsets)
    budgets = (
        ("tokens", params.capacity, plan.bin_tokens),
        ("patches", params.patch_capacity, plan.bin_patches),
        ("samples", params.max_per_bin, None),
    )
    for label, limit, sums_of in budgets:
        if limit is None:
            continue
        sums = per_bin if sums_of is None else sums_of()
        if sums is not None and np.any(sums > limit):
            over = np.flatnonzero(sums > limit)
            problems.append(
                f"{over.size} bins over {limit} {label}, first: bin {over[0]} with {sums[over[0]]}"
            )
    if np.any(per_bin == 0):
        problems.append(
            f"{np.count_nonzero(per_bin == 0)} empty bins, first: bin {np.argmax(per_bin == 0)}"
        )
    del per_bin

    expected = np.where(
        plan.tokens > params.capacity, np.uint8(RejectReason.TOKENS_OVER_CAPACITY), np.uint8(0)
    )
    if params.patch_capacity is not None and plan.patches is not None:
        expected[(expected == 0) & (plan.patches > params.patch_capacity)] = (
            RejectReason.PATCHES_OVER_CAPACITY
        )
    actual = np.zeros(n, dtype=np.uint8)
    actual[plan.rejected] = plan.rejected_reasons
    wrong = np.flatnonzero(expected != actual)
    del expected, actual
    if wrong.size:
        problems.append(_quote(wrong, plan, "samples with a wrong rejection status"))

    if isinstance(lengths, SampleLengths):
        problems.extend(_input_mismatches(plan, [lengths], lengths.source))
    elif lengths is not None:
        problems.extend(_input_mismatches(plan, iter_lengths(lengths), os.fspath(lengths)))
    return problems


class _Differences:
    """Positions where the plan and the input differ: the first few, and how many."""

    def __init__(self) -> None:
        self.first: list[int] = []
        self.count = 0

    def add(self, positions: np.ndarray) -> None:
        self.count += int(positions.size)
        if len(self.first) < _SHOWN:
            self.first.extend(positions[: _SHOWN - len(self.first)].tolist())

    def quote(self, plan: PackPlan, what: str) -> str:
        shown = ", ".join(repr(plan.sample_id(i)) for i in self.first)
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return f"{self.count} {what}: {shown}{more}"


def _input_mismatches(plan: PackPlan, blocks: Iterable[SampleLengths], source: str) -> list[str]:
    """Compare the plan with the input, block by block (blocks are consecutive samples)."""
    n = plan.num_samples
    start = 0
    first_id: str | None = None
    tokens, patches = _Differences(), _Differences()
    same_patch_presence: bool | None = None
    for block in blocks:
        size = len(block)
        stop = min(n, start + size)
        overlap = stop - start
        if overlap > 0:
            if first_id is None and (plan.ids is not None or block.ids is not None):
                first_id = _first_id_mismatch(plan, block, start, overlap)
            tokens.add(start + np.flatnonzero(plan.tokens[start:stop] != block.tokens[:overlap]))
            if same_patch_presence is None:
                same_patch_presence = (plan.patches is None) == (block.patches is None)
            if same_patch_presence and plan.patches is not None:
                patches.add(
                    start + np.flatnonzero(plan.patches[start:stop] != block.patches[:overlap])
                )
        start += size
    if start != n:
        return [f"input {source} has {start} samples, the plan {n}"]
    problems = [first_id] if first_id is not None else []
    if tokens.count:
        problems.append(tokens.quote(plan, "samples whose token count differs from the input"))
    if same_patch_presence is False:
        problems.append("the plan and the input disagree on whether samples have patch counts")
    elif patches.count:
        problems.append(patches.quote(plan, "samples whose patch count differs from the input"))
    return problems


def _index_ids(start: int, size: int) -> pa.Array:
    return pa.array(np.arange(start, start + size).astype(str), pa.large_string())


def _first_id_mismatch(plan: PackPlan, block: SampleLengths, start: int, size: int) -> str | None:
    ours = plan.ids.arrow.slice(start, size) if plan.ids is not None else _index_ids(start, size)
    theirs = block.ids.arrow.slice(0, size) if block.ids is not None else _index_ids(0, size)
    equal = pc.equal(ours, theirs).to_numpy(zero_copy_only=False)
    if equal.all():
        return None
    first = int(np.argmin(equal))
    return (
        f"sample {start + first}: id {plan.sample_id(start + first)!r} in the plan, "
        f"{theirs[first].as_py()!r} in the input"
    )


def verify_plan(
    plan: PackPlan, lengths: SampleLengths | str | os.PathLike[str] | None = None
) -> None:
    """Raise PlanVerificationError listing every broken invariant; return None if all hold."""
    problems = find_problems(plan, lengths)
    if problems:
        raise PlanVerificationError("plan verification failed:\n- " + "\n- ".join(problems))
