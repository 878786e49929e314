"""ov_packing: offline packing of variable-length samples into fixed-capacity bins.

The heavy lifting happens in the compiled `ov_packing._core` extension (C++17, pybind11); the
modules here are a thin, typed Python API over it:

- `inputs`: read and write per-sample lengths (Parquet, JSONL, `name:length` text, .npy,
  optionally .zst), whole or block by block; ids as one Arrow string column (`sample_ids`);
- `packer`: `pack(...) -> PackPlan`;
- `plan`: the `PackPlan` and its versioned file format;
- `stats`, `verify`: numbers about a plan and an independent check of its invariants;
- `shards`: packed webdataset shards written from a plan, and read back;
- `shard_table`: the bin table written with the shards (random access, caller columns);
- `reference`, `synthetic`: the numpy FFD oracle and realistic length generators.
"""

from importlib.metadata import version

from ov_packing.bounds import LowerBound, lower_bound_bins, packing_lower_bound
from ov_packing.errors import (
    InputFormatError,
    PackingError,
    PlanFileError,
    PlanVerificationError,
    ShardError,
)
from ov_packing.inputs import (
    SampleLengths,
    iter_lengths,
    read_counts,
    read_ids,
    read_lengths,
    write_lengths,
)
from ov_packing.packer import pack
from ov_packing.plan import PackParams, PackPlan, RejectReason
from ov_packing.sample_ids import SampleIds
from ov_packing.stats import PackStats, compute_stats
from ov_packing.verify import verify_plan

__version__ = version("ov-packing")
__all__ = [
    "InputFormatError",
    "LowerBound",
    "PackParams",
    "PackPlan",
    "PackStats",
    "PackingError",
    "PlanFileError",
    "PlanVerificationError",
    "RejectReason",
    "SampleIds",
    "SampleLengths",
    "ShardError",
    "__version__",
    "compute_stats",
    "iter_lengths",
    "lower_bound_bins",
    "pack",
    "packing_lower_bound",
    "read_counts",
    "read_ids",
    "read_lengths",
    "verify_plan",
    "write_lengths",
]
