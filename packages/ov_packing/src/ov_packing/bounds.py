"""Lower bounds on the number of bins: the yardstick every packing is measured against.

The simplest bound, ceil(total tokens / capacity), is what "bins over the lower bound" means in the
stats and benchmarks. It is computed in C++ (one pass, int64 sum, GIL released) so it costs nothing
even for 85M samples.
"""

import numpy.typing as npt

from ov_packing import _core
from ov_packing.int32_array import as_int32


def lower_bound_bins(lengths: npt.ArrayLike, capacity: int) -> int:
    """Return ceil(sum(lengths) / capacity), the fewest bins any packing can use.

    Raises ValueError if the capacity is not positive or a length is not in [1, capacity].
    """
    return _core.lower_bound_bins(as_int32(lengths, "lengths"), int(capacity))
