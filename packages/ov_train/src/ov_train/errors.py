"""Exceptions of ov_train's training side. Each names the key, file, step or value that is wrong."""


class OVTrainError(ValueError):
    """Base class of ov_train's errors about bad recipes, checkpoints and training states."""


class RecipeError(OVTrainError):
    """An invalid recipe: unknown key, wrong type, value out of range, unreadable TOML."""


class CheckpointError(OVTrainError):
    """A training checkpoint that cannot be written, found or loaded as it is."""


class TrainingError(OVTrainError):
    """Training cannot go on: a non-finite loss, a step without supervised tokens, no data."""
