"""Checked conversion of user lengths to the int32 arrays the C++ core reads."""

import numpy as np
import numpy.typing as npt


def as_int32(values: npt.ArrayLike, name: str) -> np.ndarray:
    """`values` as a contiguous 1-D int32 array; ValueError naming the first sample whose value
    is not an integer in the int32 range (the C++ core takes int32 lengths)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    int32 = np.iinfo(np.int32)
    out_of_range = np.flatnonzero((array > int32.max) | (array < int32.min))
    if out_of_range.size:
        first = int(out_of_range[0])
        raise ValueError(f"sample {first} has {array[first]} {name}, outside the int32 range")
    return np.ascontiguousarray(array, dtype=np.int32)
