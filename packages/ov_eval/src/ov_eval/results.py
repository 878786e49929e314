"""The files an evaluation run leaves behind: `results.json` and one predictions JSONL per task.

Layout of a results directory OUT (format version 1):

    OUT/results.json               RunResults: the run's settings and one TaskResult per task
    OUT/predictions/<task>.jsonl   one Prediction per line, in sample order

Predictions are written one line per sample as they are generated, so an interrupted run keeps
everything it finished and a restart can resume from the file (a complete line is a finished
sample; a torn last line is not). `results.json` is written once the numbers are final, in one
atomic replace. Together they make a run auditable after the fact: every score can be traced to
the prompt the model saw and the text it produced, and every task result records the task
version and prompt hash it was measured with, which is what makes two runs comparable.

The structs are msgspec's: typed, validated when read (unknown fields are refused, so a typo or
a file from a newer format fails loudly), and fast enough that reading back 10^5 predictions is
instant. Any change to these structs must bump FORMAT_VERSION.
"""

import os
from pathlib import Path, PurePosixPath

import msgspec

from ov_eval.errors import ResultsError

FORMAT_VERSION = 1
RESULTS_FILE = "results.json"
PREDICTIONS_DIR = "predictions"


class Prediction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a predictions file: what the model was asked, what it said, how it scored."""

    sample_id: str
    prompt: str
    prediction: str
    extracted: str | None
    score: float


class RunSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the predictions were produced: everything needed to reproduce them."""

    model: str
    """Path of the evaluated checkpoint, as given."""
    batch_size: int
    min_pixels: int | None = None
    max_pixels: int | None = None
    limit: int | None = None
    """Samples per task when the run was limited (None: the whole benchmark)."""
    dtype: str | None = None
    device: str | None = None


class TaskResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The numbers of one task and the identity of the task definition that produced them."""

    task: str
    version: int
    prompt_hash: str
    max_new_tokens: int
    num_samples: int
    metric: str
    """The headline metric; a key of `metrics`."""
    metrics: dict[str, float]
    predictions: str
    """The predictions file, relative to the results directory (POSIX separators)."""

    def __post_init__(self) -> None:
        if self.metric not in self.metrics:
            raise ValueError(f"task {self.task}: headline metric {self.metric!r} is not in metrics")
        if self.num_samples < 0:
            raise ValueError(f"task {self.task}: num_samples must be non-negative")
        relative = PurePosixPath(self.predictions)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(
                f"task {self.task}: predictions must be a path inside the results directory, "
                f"got {self.predictions!r}"
            )


class RunResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Contents of `results.json`."""

    format_version: int
    ov_eval_version: str
    created: str
    """When the results were written, ISO 8601 in UTC."""
    settings: RunSettings
    tasks: list[TaskResult]


def predictions_file(task: str) -> str:
    """The predictions path of `task`, relative to the results directory."""
    return f"{PREDICTIONS_DIR}/{task}.jsonl"


def encode_prediction(prediction: Prediction) -> bytes:
    """One predictions-file line (JSON and a newline)."""
    return msgspec.json.encode(prediction) + b"\n"


def read_predictions(path: Path) -> list[Prediction]:
    """All predictions in `path`; raises ResultsError naming the file and line of a bad one."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResultsError(
            f"{path}: cannot read predictions ({error.strerror or error})"
        ) from error
    decoder = msgspec.json.Decoder(Prediction)
    predictions: list[Prediction] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prediction = decoder.decode(line)
        except msgspec.DecodeError as error:
            raise ResultsError(f"{path}, line {number}: {error}") from error
        if prediction.sample_id in seen:
            raise ResultsError(
                f"{path}, line {number}: sample {prediction.sample_id!r} already at line "
                f"{seen[prediction.sample_id]}"
            )
        seen[prediction.sample_id] = number
        predictions.append(prediction)
    return predictions


def write_results(directory: Path, results: RunResults) -> Path:
    """Write `results.json` into `directory` atomically; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    temporary = path.with_name(f".{RESULTS_FILE}.tmp")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")
    os.replace(temporary, path)
    return path


def read_results(directory: Path) -> RunResults:
    """Read and validate `directory/results.json`; raises ResultsError on any problem."""
    path = directory / RESULTS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ResultsError(
            f"{directory}: no {RESULTS_FILE} (not an ov-eval results directory)"
        ) from None
    except OSError as error:
        raise ResultsError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        version = msgspec.json.decode(data, type=_VersionOnly).format_version
    except msgspec.DecodeError as error:
        raise ResultsError(f"{path}: {error}") from error
    if version != FORMAT_VERSION:
        raise ResultsError(
            f"{path}: results format {version}, this ov-eval reads format {FORMAT_VERSION}"
        )
    try:
        return msgspec.json.decode(data, type=RunResults)
    except msgspec.DecodeError as error:
        raise ResultsError(f"{path}: {error}") from error


class _VersionOnly(msgspec.Struct):
    format_version: int
