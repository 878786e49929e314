"""Exceptions of ov_train's data pipeline.

Bad *samples* are never exceptions here: they are `BadSample` entries in the report. These are for
problems that make a whole job wrong: an input that does not exist, a configuration that cannot
work, packed shards that do not match what the loader was told, a state from another run.
"""


class DataError(ValueError):
    """Base class of ov_train's data errors; the message names the file, sample or value."""


class InputConfigError(DataError):
    """An input is missing or unusable as configured (no such file, no such column)."""


class PrepareError(DataError):
    """`prepare` cannot run or finish: a non-empty output folder, nothing to pack, a bad
    selection."""


class LoaderError(DataError):
    """Packed shards cannot be loaded as asked, or a loader state belongs to another run."""
