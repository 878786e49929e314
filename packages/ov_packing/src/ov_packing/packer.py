"""`pack`: samples into fixed-capacity bins, with the C++ core doing the work.

Algorithm (csrc/packing.cpp):

1. Reject what can never fit: a sample longer than the capacity, or (with a patch capacity) with
   more ViT patches than the patch capacity. Each is listed with its reason; nothing is dropped.
2. Sort the rest largest first (tokens, then patches, then input position): a stable counting sort,
   O(n + capacity).
3. Run two classic decreasing heuristics over that order and keep the one with fewer bins (ties
   go to first-fit):
   - first-fit decreasing (FFD): each sample goes to the lowest-numbered bin with room, found with a
     segment tree over bins keyed by remaining capacity, O(log bins) per sample;
   - best-fit decreasing (BFD): each sample goes to the bin with the least room that still fits,
     found with a 64-ary successor bitset over remaining capacities, O(log64 capacity) per sample
     (skipped above 2^24 tokens per bin, where its tables would cost too much memory).
   With patches and a patch capacity both heuristics check the two budgets together; with a sample
   cap a bin closes when it reaches the cap. Best-fit then finds its bin through a segment tree
   over remaining-token levels holding each level's best patch room, O(log capacity). First-fit
   keeps a segment tree of patch room over the bins whose token room is at least the current
   sample's tokens ("eligible"; since tokens only decrease, a bin that falls below waits in a
   bucket of its token room until the samples get that short), O(log bins) per sample.
4. List the winner's bins in a seeded pseudo-random order, so a reader walking the bins in sequence
   does not see every large sample first. Inside a bin, samples stay largest first.

Guarantees. No bin exceeds any budget; every input sample is in exactly one bin or rejected; the
bin count is never above FFD's, with one budget or two (FFD is always a complete candidate, and the
numpy reference in `reference.py` reproduces it exactly), hence at most 11/9 OPT + 6/9 bins in one
dimension (Dósa 2007), and in practice within a hair of the lower bound on realistic lengths (see
`bounds.py` and the benchmarks). The result depends only on the input and the seed: the two
candidates are sequential, deterministic computations and `threads >= 2` merely runs them at the
same time. Cost: O(n log n + capacity) time (a counting sort and O(log) searches), about 30 bytes
of working memory per sample (see the memory benchmark).
"""

import os
from collections.abc import Sequence

import numpy.typing as npt

from ov_packing import _core
from ov_packing.inputs import SampleLengths
from ov_packing.int32_array import as_int32
from ov_packing.plan import PackParams, PackPlan
from ov_packing.sample_ids import SampleIds

HEURISTICS = ("first-fit-decreasing", "best-fit-decreasing")


def pack(
    samples: SampleLengths | npt.ArrayLike,
    *,
    capacity: int,
    patch_capacity: int | None = None,
    max_per_bin: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    patches: npt.ArrayLike | None = None,
    ids: "SampleIds | Sequence[str] | None" = None,
    heuristics: Sequence[str] = HEURISTICS,
) -> PackPlan:
    """Pack samples into bins of at most `capacity` tokens and return the plan.

    `samples` is a `SampleLengths` (as read by `read_lengths`, carrying ids and patch counts) or an
    array of token counts, with `patches` and `ids` given separately. `patch_capacity` bounds the
    ViT patches per bin (needs patch counts), `max_per_bin` the samples per bin. `threads` (default:
    up to 2 CPUs) changes speed only, never the result. `heuristics` selects the candidates
    (default both; one alone reproduces that classic algorithm exactly).
    """
    unknown = set(heuristics) - set(HEURISTICS)
    if unknown or not heuristics:
        raise ValueError(f"heuristics must be a non-empty subset of {HEURISTICS}, got {heuristics}")
    if isinstance(samples, SampleLengths):
        if patches is not None or ids is not None:
            raise ValueError("give patches and ids through the SampleLengths, not separately")
        tokens, patches, ids = samples.tokens, samples.patches, samples.ids
    else:
        tokens = samples
    params = PackParams(
        capacity=capacity, patch_capacity=patch_capacity, max_per_bin=max_per_bin, seed=seed
    )
    tokens = as_int32(tokens, "tokens")
    patch_array = None if patches is None else as_int32(patches, "patches")
    if patch_array is not None and patch_array.shape != tokens.shape:
        raise ValueError(f"{patch_array.shape[0]} patch counts for {tokens.shape[0]} samples")
    if patch_capacity is not None and patch_array is None:
        raise ValueError("patch_capacity needs per-sample patch counts")
    if ids is not None:
        ids = SampleIds(ids)
        if len(ids) != tokens.shape[0]:
            raise ValueError(f"{len(ids)} ids for {tokens.shape[0]} samples")
        duplicate = ids.first_duplicate()  # before the core runs; cached for the PackPlan
        if duplicate is not None:
            first, second = duplicate
            raise ValueError(f"duplicate id {ids[second]!r}: samples {first} and {second}")
    if threads is None:
        threads = min(2, os.cpu_count() or 1)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    offsets, members, rejected, reasons, algorithm = _core.pack(
        tokens,
        patch_array,
        capacity,
        patch_capacity=patch_capacity or 0,
        max_per_bin=max_per_bin or 0,
        seed=seed,
        threads=threads,
        first_fit="first-fit-decreasing" in heuristics,
        best_fit="best-fit-decreasing" in heuristics,
    )
    return PackPlan(
        params=params,
        algorithm=algorithm,
        ids=ids,
        tokens=tokens,
        patches=patch_array,
        bin_offsets=offsets,
        bin_samples=members,
        rejected=rejected,
        rejected_reasons=reasons,
    )
