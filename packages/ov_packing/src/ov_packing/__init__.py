"""ov_packing: offline packing of variable-length samples into fixed-capacity bins.

The heavy lifting happens in the compiled `ov_packing._core` extension (C++17, pybind11); the
modules here are a thin, typed Python API over it.
"""

from importlib.metadata import version

from ov_packing.bounds import lower_bound_bins

__version__ = version("ov-packing")
__all__ = ["__version__", "lower_bound_bins"]
