"""Lower bounds on the number of bins: the yardstick every packing is measured against.

`lower_bound_bins` is the simplest bound, ceil(total tokens / capacity), computed in C++ (one pass,
int64 sum, GIL released) so it costs nothing even for 85M samples.

`packing_lower_bound` accounts for every budget a plan was packed under; each term alone is a valid
bound, so their maximum is one:

- `tokens`: ceil(total tokens / capacity);
- `patches`: ceil(total ViT patches / patch capacity);
- `large_tokens`: samples longer than half the capacity (no two of them share a bin), and likewise
  `large_patches` for samples with more than half the patch capacity;
- `samples`: ceil(samples / max per bin).

This is the "lower bound" `ov-pack stats` prints, with the term that decides it.
"""

import msgspec
import numpy as np
import numpy.typing as npt

from ov_packing import _core
from ov_packing.int32_array import as_int32


def lower_bound_bins(lengths: npt.ArrayLike, capacity: int) -> int:
    """Return ceil(sum(lengths) / capacity), the fewest bins any packing can use.

    Raises ValueError if the capacity is not positive or a length is not in [1, capacity].
    """
    return _core.lower_bound_bins(as_int32(lengths, "lengths"), int(capacity))


class LowerBound(msgspec.Struct, frozen=True):
    """The fewest bins any packing of some samples can use, and the bounds it is the maximum of."""

    bins: int
    terms: dict[str, int]
    """Each bound by name (see the module docstring); `bins` is their maximum."""

    @property
    def deciding_term(self) -> str:
        """The name of the largest term (the first in `terms` order on a tie)."""
        return max(self.terms, key=lambda name: self.terms[name]) if self.terms else "tokens"


def packing_lower_bound(
    tokens: npt.ArrayLike,
    capacity: int,
    *,
    patches: npt.ArrayLike | None = None,
    patch_capacity: int | None = None,
    max_per_bin: int | None = None,
) -> LowerBound:
    """The lower bound over every budget of a packing of `tokens` (samples that fit only).

    `patches`/`patch_capacity` add the patch terms (both or neither), `max_per_bin` the sample
    count term. Raises ValueError on a length outside [1, capacity] (see `lower_bound_bins`) or a
    patch count outside [0, patch_capacity].
    """
    token_array = as_int32(tokens, "tokens")
    terms = {
        "tokens": lower_bound_bins(token_array, capacity),
        "large_tokens": int(np.count_nonzero(token_array > capacity // 2)),
    }
    if (patches is None) != (patch_capacity is None):
        raise ValueError("give patches and patch_capacity together")
    if patches is not None and patch_capacity is not None:
        patch_array = as_int32(patches, "patches")
        if patch_array.shape != token_array.shape:
            raise ValueError(f"{patch_array.size} patch counts for {token_array.size} samples")
        if patch_capacity < 1:
            raise ValueError(f"patch_capacity must be positive, got {patch_capacity}")
        outside = np.flatnonzero((patch_array < 0) | (patch_array > patch_capacity))
        if outside.size:
            index = int(outside[0])
            raise ValueError(
                f"patch count at index {index} is {int(patch_array[index])}, outside "
                f"[0, {patch_capacity}]"
            )
        total = int(patch_array.sum(dtype=np.int64))
        terms["patches"] = -(-total // patch_capacity)
        terms["large_patches"] = int(np.count_nonzero(patch_array > patch_capacity // 2))
    if max_per_bin is not None:
        if max_per_bin < 1:
            raise ValueError(f"max_per_bin must be >= 1, got {max_per_bin}")
        terms["samples"] = -(-token_array.size // max_per_bin)
    return LowerBound(bins=max(terms.values()), terms=terms)
