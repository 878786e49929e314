"""Exceptions of ov_model. Each names the file, tensor, sample or value that is wrong."""


class OVModelError(ValueError):
    """Base class of ov_model's errors about bad input, configs and checkpoints."""


class ConfigError(OVModelError):
    """An invalid or unreadable model configuration."""


class CheckpointError(OVModelError):
    """A checkpoint folder that cannot be loaded as it is (missing/unexpected tensors, ...)."""


class InputError(OVModelError):
    """Model inputs that do not fit together (image tokens vs image features, shapes, ...)."""
