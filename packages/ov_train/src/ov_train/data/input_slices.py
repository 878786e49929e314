"""Slices: the pieces of the input files that `prepare` measures as independent work units.

A slice is a contiguous run of rows of one file that can be read on its own, without reading
the rows before it: a byte range of a JSONL file starting at a line (and the number of that
line), a byte range of a JSON list holding whole elements (and the index of the first), a range
of row groups of a parquet file (and its first row number), or a whole webdataset tar. Each
source type plans its slices cheaply (`slices(unit_rows)`: parquet metadata, a newline count of
a JSONL file in blocks, one decode of a JSON list) and reads one back (`read_slice`), so the
slices of a job can be measured in any order, in any process, and give the rows they would give
in one sequential pass (sources are named by the same line, index or row numbers).
"""

from pathlib import Path
from typing import NamedTuple


class Slice(NamedTuple):
    """Rows of `path`: bytes or row groups `[start, stop)`, the first named `first`."""

    path: Path
    start: int
    stop: int
    first: int
