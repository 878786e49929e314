"""Type stub of the compiled `ov_packing._core` extension (see csrc/)."""

import numpy.typing as npt

def lower_bound_bins(lengths: npt.ArrayLike, capacity: int) -> int:
    """ceil(sum(lengths) / capacity); ValueError for a non-positive or over-capacity length."""
