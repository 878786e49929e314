"""Streaming weighted sampling to an exact size, deterministic for a seed, with or without
replacement.

Both designs read the per-image weights (a memory-mapped float64 vector) in fixed blocks of
`REDUCTION_BLOCK` rows and write the selected indices, sorted, straight into a memory-mapped output;
memory is a block plus a 65,536-bin histogram, never the corpus.

Without replacement: inclusion probabilities proportional to weight. Each image is to be included
with probability lambda_i = min(1, c * w_i), with c chosen so that the lambdas sum to the target
(the classic capping iteration: raise c until the images it pushes to 1 stop changing; a handful of
passes). Exactly `target` images are then drawn by Pareto order sampling (Rosen 1997): image i gets
the key q_i = [u_i / (1 - u_i)] / [lambda_i / (1 - lambda_i)] with u_i uniform, and the `target`
smallest keys win; its inclusion probabilities match the lambdas closely (exactly as the sample
grows), images with lambda = 1 always get in, images with weight 0 never do. The `target` smallest
of N keys are found without sorting or holding them: a radix select over the keys' 64-bit patterns,
16 bits per pass (four histogram passes and one selection pass). Ties (only between lambda = 1
images) go to the lower index.

With replacement: the multiplicities follow Multinomial(target, w / sum(w)), drawn hierarchically
(block totals by sequential binomials, then one multinomial inside each block) so that the draw is
exact and streams. Selected indices repeat as often as drawn.

Determinism: the uniforms come from a counter-based generator (SplitMix64 of seed, stream and
image index), and every floating-point sum is taken over the same fixed blocks and combined with
`math.fsum`, so results are bit-identical for a seed however the caller chunks its work.
"""

import math
from collections.abc import Callable, Iterator

import numpy as np

from ov_concepts.progress import progress_bar

REDUCTION_BLOCK = 4096
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_PARETO_STREAM = 1
_BLOCK_TOTALS_STREAM = 2
_BLOCK_DRAW_STREAM = 3
_DIGITS = 1 << 16


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def uniforms(seed: int, stream: int, start: int, stop: int) -> np.ndarray:
    """Uniforms in (0, 1) for indices [start, stop): a pure function of (seed, stream, index)."""
    key = np.uint64(_splitmix64(_splitmix64(seed & _MASK64) ^ stream))
    z = (np.arange(start, stop, dtype=np.uint64) + np.uint64(1)) * _GOLDEN + key
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def blocks(total: int, block_rows: int = REDUCTION_BLOCK) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of `block_rows` covering 0..total."""
    for start in range(0, total, block_rows):
        yield start, min(start + block_rows, total)


def block_sum(values: np.ndarray) -> float:
    """Sum of at most one reduction block (the same bits wherever the block came from)."""
    return float(np.add.reduce(np.ascontiguousarray(values, dtype=np.float64)))


def exact_total(partials: list[float]) -> float:
    """Correctly rounded sum of block partial sums, independent of their grouping."""
    return math.fsum(partials)


def inclusion_scale(weights: np.ndarray, target: int, *, progress: bool = False) -> float:
    """The c for which sum_i min(1, c * w_i) == target (weights >= 0, target <= #positive)."""
    total = exact_total([block_sum(weights[a:b]) for a, b in blocks(len(weights))])
    positive = sum(int(np.count_nonzero(weights[a:b] > 0)) for a, b in blocks(len(weights)))
    if not 1 <= target <= positive:
        raise ValueError(f"target {target} outside 1..{positive} (images with positive weight)")
    scale = target / total
    capped = -1
    with progress_bar(None, "inclusion probabilities", progress, unit="pass") as bar:
        while True:
            now_capped = 0
            partials = []
            for a, b in blocks(len(weights)):
                block = np.asarray(weights[a:b], dtype=np.float64)
                over = block * scale >= 1.0
                now_capped += int(np.count_nonzero(over))
                partials.append(block_sum(np.where(over, 0.0, block)))
            bar.update(1)
            rest = exact_total(partials)
            if now_capped == capped or rest == 0.0 or now_capped >= target:
                return scale
            capped = now_capped
            scale = max(scale, (target - now_capped) / rest)


def _pareto_keys(weights: np.ndarray, scale: float, seed: int, start: int) -> np.ndarray:
    """Order keys, larger = earlier: 0 for lambda = 1, -inf for weight 0, else -q."""
    inclusion = np.minimum(1.0, np.asarray(weights, dtype=np.float64) * scale)
    keys = np.full(len(inclusion), -np.inf)
    partial = (inclusion > 0.0) & (inclusion < 1.0)
    u = uniforms(seed, _PARETO_STREAM, start, start + len(inclusion))[partial]
    lam = inclusion[partial]
    keys[partial] = -(u / (1.0 - u)) * ((1.0 - lam) / lam)
    keys[inclusion >= 1.0] = 0.0
    return keys + 0.0  # -0.0 -> +0.0, so equal keys have equal bit patterns


def _ordered_bits(keys: np.ndarray) -> np.ndarray:
    """Map float64 keys to uint64 so that integer order equals float order."""
    bits = keys.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def _top_threshold(
    total: int, target: int, ordered: Callable[[int, int], np.ndarray], bar
) -> tuple[int, int]:
    """Radix select: the target-th largest 64-bit key T and how many keys == T to take."""
    prefix = 0
    need = target
    for pass_index, shift in enumerate((48, 32, 16, 0)):
        histogram = np.zeros(_DIGITS, dtype=np.int64)
        for a, b in blocks(total):
            bits = ordered(a, b)
            if pass_index:
                bits = bits[(bits >> np.uint64(shift + 16)) == np.uint64(prefix)]
            digits = ((bits >> np.uint64(shift)) & np.uint64(_DIGITS - 1)).astype(np.intp)
            histogram += np.bincount(digits, minlength=_DIGITS)
            bar.update(b - a)
        from_top = np.cumsum(histogram[::-1])
        position = int(np.searchsorted(from_top, need))
        digit = _DIGITS - 1 - position
        need -= int(from_top[position] - histogram[digit])
        prefix = (prefix << 16) | digit
    return prefix, need


def pareto_sample_into(
    out: np.ndarray, weights: np.ndarray, scale: float, seed: int, *, progress: bool = False
) -> None:
    """Fill `out` (length = target) with the sorted indices of a Pareto πps sample."""
    target, total = len(out), len(weights)

    def ordered(a: int, b: int) -> np.ndarray:
        return _ordered_bits(_pareto_keys(weights[a:b], scale, seed, a))

    with progress_bar(5 * total, "sample", progress) as bar:
        threshold, ties_wanted = _top_threshold(total, target, ordered, bar)
        threshold_bits = np.uint64(threshold)
        written = 0
        for a, b in blocks(total):
            bits = ordered(a, b)
            chosen = np.flatnonzero(bits > threshold_bits)
            if ties_wanted:
                ties = np.flatnonzero(bits == threshold_bits)[:ties_wanted]
                ties_wanted -= len(ties)
                chosen = np.union1d(chosen, ties)
            out[written : written + len(chosen)] = chosen + a
            written += len(chosen)
            bar.update(b - a)
    if written != target:  # pragma: no cover - guarded by the radix select's arithmetic
        raise AssertionError(f"selected {written} of {target}")


def multinomial_sample_into(
    out: np.ndarray, weights: np.ndarray, seed: int, *, progress: bool = False
) -> None:
    """Fill `out` (length = target) with sorted indices drawn with replacement, p ∝ weights."""
    target, total = len(out), len(weights)
    sums = np.array([block_sum(weights[a:b]) for a, b in blocks(total)], dtype=np.float64)
    if not exact_total(list(sums)) > 0.0:
        raise ValueError("every weight is zero: nothing to sample")
    remaining_mass = np.cumsum(sums[::-1])[::-1]  # sequential, so the same bits every run
    totals_rng = np.random.Generator(np.random.PCG64([seed, _BLOCK_TOTALS_STREAM]))
    remaining = target
    written = 0
    with progress_bar(total, "sample", progress) as bar:
        for block_index, (a, b) in enumerate(blocks(total)):
            draws = 0
            if remaining and sums[block_index] > 0.0:
                share = min(1.0, sums[block_index] / remaining_mass[block_index])
                draws = int(totals_rng.binomial(remaining, share))
            if draws:
                block = np.asarray(weights[a:b], dtype=np.float64)
                positive = np.flatnonzero(block > 0.0)
                rng = np.random.Generator(np.random.PCG64([seed, _BLOCK_DRAW_STREAM, block_index]))
                counts = rng.multinomial(draws, block[positive] / sums[block_index])
                chosen = np.repeat(positive + a, counts)
                out[written : written + len(chosen)] = chosen
                written += len(chosen)
                remaining -= draws
            bar.update(b - a)
    if written != target:  # pragma: no cover - the last positive block takes the remainder
        raise AssertionError(f"drew {written} of {target}")
