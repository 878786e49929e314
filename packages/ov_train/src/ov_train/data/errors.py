"""Exceptions of ov_train's data pipeline.

Bad *samples* are never exceptions here: they are `BadSample` entries in the report. These are for
problems that make a whole job wrong: an input that does not exist, a configuration that cannot
work, packed shards that do not match what the loader was told, a state from another run.
"""


class DataError(ValueError):
    """Base class of ov_train's data errors; the message names the file, sample or value."""


class InputConfigError(DataError):
    """An input is missing or unusable as configured (no such file, no such column)."""


class SourceFileError(DataError):
    """An input file is truncated or cannot be parsed (a JSON/JSONL line that is not JSON, a
    corrupt parquet row group, a tar cut short or without its end blocks). The message names the
    file and the position (line, row group, byte). It stops the job: the rows after the damage
    would otherwise be missing without a trace."""


class UnsafePathError(DataError):
    """An input names a file outside the folder it must stay in: an image path with a `..`
    component or (without `allow_absolute_paths`) an absolute one, a webdataset member whose name
    has a `..` component or is absolute. The message names the file, the row and the path."""


class PrepareError(DataError):
    """`prepare` cannot run or finish: a non-empty output folder, nothing to pack, a bad
    selection."""


class LoaderError(DataError):
    """Packed shards cannot be loaded as asked, or a loader state belongs to another run."""
