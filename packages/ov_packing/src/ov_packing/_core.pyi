"""Type stub of the compiled `ov_packing._core` extension (see csrc/)."""

import numpy as np
import numpy.typing as npt

def lower_bound_bins(lengths: npt.ArrayLike, capacity: int) -> int:
    """ceil(sum(lengths) / capacity); ValueError for a non-positive or over-capacity length."""

def pack(
    tokens: npt.ArrayLike,
    patches: npt.ArrayLike | None,
    capacity: int,
    patch_capacity: int = 0,
    max_per_bin: int = 0,
    seed: int = 0,
    threads: int = 1,
    first_fit: bool = True,
    best_fit: bool = True,
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.uint8], str
]:
    """Pack samples into bins.

    Returns (bin_offsets, bin_samples, rejected, rejected_reasons, algorithm). ValueError names the
    sample for a non-positive token count or a negative patch count.
    """
