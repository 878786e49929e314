"""Independent re-check of a plan: every invariant the packer promises, recomputed with numpy.

Nothing here calls the C++ core, so a bug there cannot hide itself. Checked: each input sample is in
exactly one bin or rejected; no bin is empty or over any budget (tokens, patches, samples); every
rejection has the right reason and every sample that fits was packed; and, given the input file,
the plan describes exactly that input (same ids, token and patch counts).
"""

import numpy as np

from ov_packing.errors import PlanVerificationError
from ov_packing.inputs import SampleLengths
from ov_packing.plan import PackPlan, RejectReason

_SHOWN = 5  # offending items quoted per problem


def _quote(indices: np.ndarray, plan: PackPlan, what: str) -> str:
    shown = ", ".join(repr(plan.sample_id(int(i))) for i in indices[:_SHOWN])
    more = f" and {indices.size - _SHOWN} more" if indices.size > _SHOWN else ""
    return f"{indices.size} {what}: {shown}{more}"


def find_problems(plan: PackPlan, lengths: SampleLengths | None = None) -> list[str]:
    """Every broken invariant of `plan` (checked against `lengths` when given), as messages."""
    problems: list[str] = []
    params = plan.params
    n = plan.num_samples
    seen = np.bincount(np.concatenate([plan.bin_samples, plan.rejected]), minlength=n)
    if np.any(seen == 0):
        problems.append(
            _quote(np.flatnonzero(seen == 0), plan, "samples neither packed nor rejected")
        )
    if np.any(seen > 1):
        problems.append(_quote(np.flatnonzero(seen > 1), plan, "samples placed more than once"))

    per_bin = np.diff(plan.bin_offsets)
    for label, values, limit in (
        ("tokens", plan.bin_tokens(), params.capacity),
        ("patches", plan.bin_patches(), params.patch_capacity),
        ("samples", per_bin, params.max_per_bin),
    ):
        if values is not None and limit is not None and np.any(values > limit):
            over = np.flatnonzero(values > limit)
            problems.append(
                f"{over.size} bins over {limit} {label}, "
                f"first: bin {over[0]} with {values[over[0]]}"
            )
    if np.any(per_bin == 0):
        problems.append(
            f"{np.count_nonzero(per_bin == 0)} empty bins, first: bin {np.argmax(per_bin == 0)}"
        )

    too_long = plan.tokens > params.capacity
    too_many_patches = np.zeros(n, dtype=bool)
    if params.patch_capacity is not None and plan.patches is not None:
        too_many_patches = ~too_long & (plan.patches > params.patch_capacity)
    expected = np.zeros(n, dtype=np.uint8)
    expected[too_long] = RejectReason.TOKENS_OVER_CAPACITY
    expected[too_many_patches] = RejectReason.PATCHES_OVER_CAPACITY
    actual = np.zeros(n, dtype=np.uint8)
    actual[plan.rejected] = plan.rejected_reasons
    wrong = np.flatnonzero(expected != actual)
    if wrong.size:
        problems.append(_quote(wrong, plan, "samples with a wrong rejection status"))

    if lengths is not None:
        problems.extend(_input_mismatches(plan, lengths))
    return problems


def _input_mismatches(plan: PackPlan, lengths: SampleLengths) -> list[str]:
    if len(lengths) != plan.num_samples:
        return [f"input {lengths.source} has {len(lengths)} samples, the plan {plan.num_samples}"]
    problems = []
    plan_ids = plan.ids if plan.ids is not None else [str(i) for i in range(plan.num_samples)]
    input_ids = lengths.ids if lengths.ids is not None else [str(i) for i in range(len(lengths))]
    if plan_ids != input_ids:
        first = next(i for i, (a, b) in enumerate(zip(plan_ids, input_ids, strict=True)) if a != b)
        problems.append(
            f"sample {first}: id {plan_ids[first]!r} in the plan, {input_ids[first]!r} in the input"
        )
    differs = np.flatnonzero(plan.tokens != lengths.tokens)
    if differs.size:
        problems.append(_quote(differs, plan, "samples whose token count differs from the input"))
    if (plan.patches is None) != (lengths.patches is None):
        problems.append("the plan and the input disagree on whether samples have patch counts")
    elif plan.patches is not None:
        differs = np.flatnonzero(plan.patches != lengths.patches)
        if differs.size:
            problems.append(
                _quote(differs, plan, "samples whose patch count differs from the input")
            )
    return problems


def verify_plan(plan: PackPlan, lengths: SampleLengths | None = None) -> None:
    """Raise PlanVerificationError listing every broken invariant; return None if all hold."""
    problems = find_problems(plan, lengths)
    if problems:
        raise PlanVerificationError("plan verification failed:\n- " + "\n- ".join(problems))
