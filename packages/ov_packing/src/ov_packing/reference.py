"""A plain numpy first-fit-decreasing packer: the independent oracle for tests and benchmarks.

It shares no code with the C++ core. It sorts the same way (tokens, then patches, largest first,
then input position) and places each sample in the lowest-numbered bin with room, so on every input
the core's bin count must be no larger than this one's, and when the core reports
"first-fit-decreasing" its bins must be exactly these.

One dimension without a sample cap runs vectorised per distinct length: for equal items, first fit
fills each bin that has room with as many copies as fit before moving on, so a whole run of equal
lengths is placed with one cumulative sum. Otherwise it places samples one at a time (fine for the
test sizes it is used at).
"""

import numpy as np
import numpy.typing as npt


def first_fit_decreasing_reference(
    tokens: npt.ArrayLike,
    capacity: int,
    *,
    patches: npt.ArrayLike | None = None,
    patch_capacity: int | None = None,
    max_per_bin: int | None = None,
) -> list[np.ndarray]:
    """Bins (arrays of input indices, in placement order) of FFD over the samples that fit."""
    tokens = np.asarray(tokens, dtype=np.int64)
    two_dimensions = patches is not None and patch_capacity is not None
    patch_values = np.asarray(patches, dtype=np.int64) if two_dimensions else np.zeros_like(tokens)
    fits = tokens <= capacity
    if two_dimensions:
        fits &= patch_values <= patch_capacity
    indices = np.flatnonzero(fits)
    order = indices[np.lexsort((indices, -patch_values[indices], -tokens[indices]))]
    if not two_dimensions and max_per_bin is None:
        return _one_dimensional(tokens, order, capacity)
    return _one_at_a_time(tokens, patch_values, order, capacity, patch_capacity, max_per_bin)


def _one_dimensional(tokens: np.ndarray, order: np.ndarray, capacity: int) -> list[np.ndarray]:
    remaining = np.zeros(0, dtype=np.int64)
    bin_of = np.empty(order.shape[0], dtype=np.int64)
    lengths = tokens[order]
    if lengths.size == 0:
        return []
    run_starts = np.flatnonzero(np.r_[True, lengths[1:] != lengths[:-1]])
    run_ends = np.r_[run_starts[1:], lengths.shape[0]]
    for start, end in zip(run_starts, run_ends, strict=True):
        length, count = int(lengths[start]), int(end - start)
        open_bins = np.flatnonzero(remaining >= length)
        room = remaining[open_bins] // length
        cumulative = np.cumsum(room)
        placed = min(count, int(cumulative[-1]) if cumulative.size else 0)
        slots = np.arange(placed)
        target = open_bins[np.searchsorted(cumulative, slots, side="right")]
        bin_of[start : start + placed] = target
        np.subtract.at(remaining, target, length)
        left = count - placed
        if left:
            per_bin = capacity // length
            new_bins = remaining.shape[0] + np.arange(left) // per_bin
            bin_of[start + placed : end] = new_bins
            fill = np.bincount(np.arange(left) // per_bin) * length
            remaining = np.concatenate([remaining, capacity - fill])
    return _group(order, bin_of, remaining.shape[0])


def _one_at_a_time(
    tokens: np.ndarray,
    patches: np.ndarray,
    order: np.ndarray,
    capacity: int,
    patch_capacity: int | None,
    max_per_bin: int | None,
) -> list[np.ndarray]:
    limit = len(order) + 1
    tokens_left = np.zeros(limit, dtype=np.int64)
    patches_left = np.zeros(limit, dtype=np.int64)
    slots_left = np.zeros(limit, dtype=np.int64)
    opened = 0
    bin_of = np.empty(order.shape[0], dtype=np.int64)
    for k, index in enumerate(order):
        fits = (tokens_left[:opened] >= tokens[index]) & (slots_left[:opened] > 0)
        if patch_capacity is not None:
            fits &= patches_left[:opened] >= patches[index]
        candidates = np.flatnonzero(fits)
        if candidates.size:
            target = int(candidates[0])
        else:
            target = opened
            opened += 1
            tokens_left[target] = capacity
            patches_left[target] = patch_capacity or 0
            slots_left[target] = max_per_bin or limit
        tokens_left[target] -= tokens[index]
        patches_left[target] -= patches[index]
        slots_left[target] -= 1
        bin_of[k] = target
    return _group(order, bin_of, opened)


def _group(order: np.ndarray, bin_of: np.ndarray, num_bins: int) -> list[np.ndarray]:
    by_bin = np.argsort(bin_of, kind="stable")
    bounds = np.searchsorted(bin_of[by_bin], np.arange(num_bins + 1))
    members = order[by_bin]
    return [members[bounds[b] : bounds[b + 1]] for b in range(num_bins)]
