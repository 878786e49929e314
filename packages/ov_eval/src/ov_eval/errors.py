"""Exceptions of ov_eval. Each names the file, row, task or value that is wrong, so the CLI can
print it as a one-line error and a user can go straight to the offending input."""


class EvalError(ValueError):
    """Base class of every error ov_eval raises on bad input, bad files or bad names."""


class DatasetError(EvalError):
    """A benchmark directory or one of its files/rows is missing, malformed or inconsistent."""


class UnknownTaskError(EvalError):
    """A task name that the registry does not know (the message lists the known names)."""


class ResultsError(EvalError):
    """A results directory, results JSON or predictions JSONL is missing or malformed."""


class RunMismatchError(ResultsError):
    """An existing results directory was produced by a different run (model, settings, task);
    resuming into it would mix two runs' predictions. The message names every difference."""


class DeviceError(EvalError):
    """The requested device does not exist on this machine (e.g. `cuda` without CUDA)."""
