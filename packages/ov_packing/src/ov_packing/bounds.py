"""Lower bounds on the number of bins: the yardstick every packing is measured against.

The simplest bound, ceil(total tokens / capacity), is what "bins over the lower bound" means in the
stats and benchmarks. It is computed in C++ (one pass, int64 sum, GIL released) so it costs nothing
even for 85M samples.
"""

import numpy as np
import numpy.typing as npt

from ov_packing import _core


def lower_bound_bins(lengths: npt.ArrayLike, capacity: int) -> int:
    """Return ceil(sum(lengths) / capacity), the fewest bins any packing can use.

    Raises ValueError if the capacity is not positive or a length is not in [1, capacity].
    """
    array = np.asarray(lengths)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {array.dtype}")
    if array.size and (
        array.max() > np.iinfo(np.int32).max or array.min() < np.iinfo(np.int32).min
    ):
        raise ValueError("lengths must fit in int32")
    return _core.lower_bound_bins(np.ascontiguousarray(array, dtype=np.int32), int(capacity))
