"""Packing statistics: how full the bins are, and how much padding packing saves.

Padding is measured against two stated baselines, both over the packed (not rejected) samples:

- `pad_to_capacity`: every sample alone in a sequence of `capacity` tokens (what a trainer without
  packing and with a fixed sequence length does);
- `batched`: samples in input order, `batch_size` at a time, each batch padded to its longest sample
  (dynamic padding, the usual unpacked data loader).

The compression ratio is baseline padding / packed padding, where packed padding is
bins x capacity - packed tokens (None when packing leaves no padding at all).

The lower bound accounts for every budget of the plan (tokens, ViT patches, samples per bin; see
`bounds.packing_lower_bound`), and names the term that decides it.
"""

import msgspec
import numpy as np

from ov_packing.bounds import packing_lower_bound
from ov_packing.plan import PackPlan, RejectReason


class PackStats(msgspec.Struct, frozen=True):
    """Summary numbers of one plan (see the module docstring for the baselines)."""

    samples_in: int
    samples_packed: int
    rejected: dict[str, int]
    bins: int
    lower_bound_bins: int
    lower_bound_terms: dict[str, int]
    bins_over_lower_bound_percent: float
    capacity: int
    packed_tokens: int
    fill_efficiency: float
    samples_per_bin_min: int
    samples_per_bin_mean: float
    samples_per_bin_max: int
    max_bin_tokens: int
    max_bin_patches: int | None
    padding_tokens: int
    batch_size: int
    padding_pad_to_capacity: int
    padding_batched: int
    compression_vs_pad_to_capacity: float | None
    compression_vs_batched: float | None
    algorithm: str


def batched_padding(tokens: np.ndarray, batch_size: int) -> int:
    """Padding when `tokens` are batched in order, `batch_size` at a time, padded to the longest."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokens.size == 0:
        return 0
    starts = np.arange(0, tokens.size, batch_size)
    longest = np.maximum.reduceat(tokens.astype(np.int64), starts)
    sizes = np.diff(np.r_[starts, tokens.size])
    return int((longest * sizes).sum() - tokens.sum(dtype=np.int64))


def compute_stats(plan: PackPlan, batch_size: int = 8) -> PackStats:
    """Statistics of `plan`, with the batched baseline at `batch_size` samples per batch."""
    capacity = plan.params.capacity
    packed = np.zeros(plan.num_samples, dtype=bool)
    packed[plan.bin_samples] = True
    packed_lengths = plan.tokens[packed]  # input order, for the batched baseline
    packed_tokens = int(packed_lengths.sum(dtype=np.int64))
    bins = plan.num_bins
    per_bin = np.diff(plan.bin_offsets)
    bin_tokens = plan.bin_tokens()
    bin_patches = plan.bin_patches()
    padding = bins * capacity - packed_tokens
    pad_to_capacity = packed_lengths.size * capacity - packed_tokens
    batched = batched_padding(packed_lengths, batch_size)
    patch_capacity = plan.params.patch_capacity
    with_patches = plan.patches is not None and patch_capacity is not None
    bound = packing_lower_bound(
        packed_lengths,
        capacity,
        patches=plan.patches[packed] if with_patches else None,
        patch_capacity=patch_capacity if with_patches else None,
        max_per_bin=plan.params.max_per_bin,
    )
    lower_bound = bound.bins
    return PackStats(
        samples_in=plan.num_samples,
        samples_packed=int(packed_lengths.size),
        rejected={
            reason.label: int(np.count_nonzero(plan.rejected_reasons == reason))
            for reason in RejectReason
        },
        bins=bins,
        lower_bound_bins=lower_bound,
        lower_bound_terms=bound.terms,
        bins_over_lower_bound_percent=100.0 * (bins - lower_bound) / lower_bound
        if lower_bound
        else 0.0,
        capacity=capacity,
        packed_tokens=packed_tokens,
        fill_efficiency=packed_tokens / (bins * capacity) if bins else 1.0,
        samples_per_bin_min=int(per_bin.min()) if bins else 0,
        samples_per_bin_mean=float(per_bin.mean()) if bins else 0.0,
        samples_per_bin_max=int(per_bin.max()) if bins else 0,
        max_bin_tokens=int(bin_tokens.max()) if bins else 0,
        max_bin_patches=None if bin_patches is None else (int(bin_patches.max()) if bins else 0),
        padding_tokens=padding,
        batch_size=batch_size,
        padding_pad_to_capacity=pad_to_capacity,
        padding_batched=batched,
        compression_vs_pad_to_capacity=pad_to_capacity / padding if padding else None,
        compression_vs_batched=batched / padding if padding else None,
        algorithm=plan.algorithm,
    )


def _deciding(terms: dict[str, int]) -> str:
    best = max(terms.values(), default=0)
    return "/".join(name.replace("_", " ") for name, value in terms.items() if value == best)


def format_stats(stats: PackStats) -> str:
    """Human-readable multi-line summary."""

    def ratio(value: float | None) -> str:
        return "no padding left" if value is None else f"{value:,.1f}x"

    rejected = ", ".join(f"{name} {count:,}" for name, count in stats.rejected.items())
    lines = [
        f"samples      {stats.samples_in:,} in, {stats.samples_packed:,} packed, "
        f"rejected: {rejected}",
        f"bins         {stats.bins:,} (lower bound {stats.lower_bound_bins:,} from "
        f"{_deciding(stats.lower_bound_terms)}, +{stats.bins_over_lower_bound_percent:.3f}%) "
        f"by {stats.algorithm}",
        f"fill         {100 * stats.fill_efficiency:.3f}% of {stats.capacity:,} tokens per bin "
        f"(fullest bin {stats.max_bin_tokens:,})",
        f"per bin      {stats.samples_per_bin_min} min, {stats.samples_per_bin_mean:.2f} mean, "
        f"{stats.samples_per_bin_max} max samples",
        f"padding      {stats.padding_tokens:,} tokens; "
        f"{ratio(stats.compression_vs_pad_to_capacity)} less than padding every sample to capacity "
        f"({stats.padding_pad_to_capacity:,}), {ratio(stats.compression_vs_batched)} less than "
        f"input-order batches of {stats.batch_size} padded to the longest "
        f"({stats.padding_batched:,})",
    ]
    if stats.max_bin_patches is not None:
        lines.insert(3, f"patches      fullest bin {stats.max_bin_patches:,} ViT patches")
    return "\n".join(lines)
