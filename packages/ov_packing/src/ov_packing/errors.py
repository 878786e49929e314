"""Exceptions of ov_packing. Each names the file, line, sample or bin that is wrong."""


class PackingError(ValueError):
    """Base class of every error ov_packing raises on bad input or bad files."""


class InputFormatError(PackingError):
    """A lengths input file is malformed (the message names the file and line)."""


class PlanFileError(PackingError):
    """A plan file is truncated, corrupt, of an unknown version or inconsistent."""


class PlanVerificationError(PackingError):
    """A plan breaks an invariant when checked against its input (see `verify_plan`)."""


class ShardError(PackingError):
    """Source or packed shards are unusable: missing samples, duplicate keys, unsafe names."""
