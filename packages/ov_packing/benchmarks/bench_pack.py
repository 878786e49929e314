"""Packing benchmarks: the C++ core against the numpy first-fit-decreasing oracle, side by side.

Run: `uv run pytest packages/ov_packing/benchmarks -o python_files='bench_*.py'` (add
`--benchmark-columns=min,mean,rounds` for a compact table). Each case records its quality numbers
(bins, lower bound, % over it, fill) in the benchmark's extra_info, printed with `-s` as well.

Cases: 1M samples from the `caption` and `sft` generators at capacity 8192 and 16384, plus
`uniform`; reading 1M JSONL rows; 85M samples from arrays (marked slow); peak memory per sample.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from ov_packing import compute_stats, lower_bound_bins, pack, read_lengths, write_lengths
from ov_packing.reference import first_fit_decreasing_reference
from ov_packing.synthetic import generate_lengths

MILLION = 1_000_000
CASES = [("caption", 8192), ("caption", 16384), ("sft", 8192), ("sft", 16384), ("uniform", 8192)]


def _quality(bins: int, tokens: np.ndarray, capacity: int) -> dict:
    """Bins against ceil(total / capacity) over the samples that fit (one budget)."""
    fitting = tokens[tokens <= capacity]
    bound = lower_bound_bins(fitting, capacity)
    return {
        "bins": bins,
        "lower_bound": bound,
        "over_lower_bound_percent": round(100 * (bins - bound) / bound, 4),
        "fill_percent": round(100 * int(fitting.sum()) / (bins * capacity), 4),
    }


@pytest.fixture(scope="module", params=CASES, ids=[f"{d}-{c}" for d, c in CASES])
def million(request):
    distribution, capacity = request.param
    lengths = generate_lengths(distribution, MILLION, seed=0, capacity=capacity, with_ids=False)
    return distribution, capacity, lengths.tokens


@pytest.mark.parametrize("threads", [1, 2])
def test_core_packs_one_million(benchmark, million, threads):
    distribution, capacity, tokens = million
    plan = benchmark.pedantic(
        pack, args=(tokens,), kwargs={"capacity": capacity, "threads": threads}, rounds=5
    )
    benchmark.extra_info.update(_quality(plan.num_bins, tokens, capacity), algorithm=plan.algorithm)
    print(f"\ncore {distribution} {capacity} threads={threads}: {benchmark.extra_info}")


def test_numpy_ffd_reference_packs_one_million(benchmark, million):
    distribution, capacity, tokens = million
    bins = benchmark.pedantic(first_fit_decreasing_reference, args=(tokens, capacity), rounds=2)
    benchmark.extra_info.update(_quality(len(bins), tokens, capacity))
    print(f"\nnumpy FFD {distribution} {capacity}: {benchmark.extra_info}")


@pytest.mark.parametrize("patch_capacity", [8192, 16384])
def test_core_packs_with_a_patch_budget(benchmark, patch_capacity):
    """Two budgets (1M sft samples, 8192 tokens and `patch_capacity` ViT patches per bin): the
    default against first-fit decreasing and best-fit decreasing alone, bins over the bound that
    accounts for both budgets."""
    lengths = generate_lengths("sft", MILLION, seed=0, with_ids=False)
    budgets = {"capacity": 8192, "patch_capacity": patch_capacity}
    plan = benchmark.pedantic(pack, args=(lengths,), kwargs=budgets, rounds=3)
    stats = compute_stats(plan)
    alone = {
        name: pack(lengths, heuristics=(name,), **budgets).num_bins
        for name in ("first-fit-decreasing", "best-fit-decreasing")
    }
    assert plan.num_bins <= alone["first-fit-decreasing"]
    benchmark.extra_info.update(
        bins=plan.num_bins,
        first_fit_decreasing_bins=alone["first-fit-decreasing"],
        best_fit_decreasing_bins=alone["best-fit-decreasing"],
        lower_bound=stats.lower_bound_bins,
        lower_bound_terms=stats.lower_bound_terms,
        over_bound_percent=stats.bins_over_lower_bound_percent,
        rejected=stats.rejected,
        algorithm=plan.algorithm,
    )
    print(f"\ncore sft 8192 with {patch_capacity} patches per bin: {benchmark.extra_info}")


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_read_one_million_rows(benchmark, tmp_path_factory, suffix):
    lengths = generate_lengths("caption", MILLION, seed=0)
    if suffix == ".txt":
        lengths = type(lengths)(lengths.source, lengths.ids, lengths.tokens, None)
    path = tmp_path_factory.mktemp("inputs") / f"lengths{suffix}"
    write_lengths(path, lengths)
    read = benchmark.pedantic(read_lengths, args=(path,), rounds=3)
    assert len(read) == MILLION


# Peak RSS from /proc (VmHWM, reset by exec), not getrusage: a child's ru_maxrss starts at its
# parent's, and the parent here is a pytest process holding far larger arrays.
_MEMORY_PROBE = """
import re, sys, numpy as np
from ov_packing import pack
def peak_kib():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))
tokens = np.load(sys.argv[1])
before = peak_kib()
plan = pack(tokens, capacity=8192, threads=2)
print((peak_kib() - before) * 1024 / tokens.size)
"""


def test_peak_memory_per_sample(tmp_path):
    """Peak resident memory added by `pack` (input and plan output included), bytes per sample."""
    count = 5 * MILLION
    path = tmp_path / "tokens.npy"
    np.save(path, generate_lengths("caption", count, seed=0, with_ids=False).tokens)
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True
    )
    per_sample = float(out.stdout.strip())
    print(f"\npeak memory added by pack: {per_sample:.1f} bytes per sample ({count:,} samples)")
    assert per_sample > 0


@pytest.mark.slow
def test_core_packs_85_million_from_arrays(benchmark):
    base = generate_lengths("caption", MILLION, seed=0, with_ids=False).tokens
    rng = np.random.default_rng(0)
    tokens = np.concatenate([rng.permutation(base) for _ in range(85)])
    plan = benchmark.pedantic(
        pack, args=(tokens,), kwargs={"capacity": 8192, "threads": 2}, rounds=1
    )
    benchmark.extra_info.update(_quality(plan.num_bins, tokens, 8192))
    print(f"\ncore 85M caption 8192: {json.dumps(benchmark.extra_info)}")
