"""The files an evaluation run leaves behind: `results.json` and, per task, a predictions JSONL
and its run fingerprint.

Layout of a results directory OUT (format version 2):

    OUT/results.json                        RunResults: the run's settings, one TaskResult per
                                            task, and the tasks that could not run
    OUT/predictions/<task>.jsonl            one Prediction per line, in sample order
    OUT/predictions/<task>.fingerprint.json what produced them (`ov_eval.fingerprint`)

Predictions are written one line per sample as they are generated, so an interrupted run keeps
everything it finished and a restart can resume from the file (a complete line is a finished
sample; a torn last line is not). Whole-file writes (`results.json`, fingerprints, the final
sample-order rewrite of predictions) are atomic (`ov_eval.atomic`). Together they make a run
auditable after the fact: every score can be traced to the prompt the model saw and the text it
produced, and every task result records the task version, prompt hash, scorer reference and run
fingerprint it was measured with, which is what makes two runs comparable.

Numbers are never read back from a predictions file: the runner rescores every stored prediction
text with the installed task when it aggregates, and rewrites each line's `extracted` and `score`
with what it computed, so those two fields are an audit copy of the scoring behind
`results.json`, not an input to it. A sample whose input could not be used (an unreadable image)
is a prediction with `error` set, an empty `prediction` and score 0: it counts as wrong, is
counted in `TaskResult.num_errors`, and is never silently dropped.

The structs are msgspec's: typed, validated when read (unknown fields are refused, so a typo or
a file from a newer format fails loudly), and fast enough that reading back 10^5 predictions is
instant. Any change to these structs must bump FORMAT_VERSION; a results file of another format
is refused with a message saying so (format 1 files lack the fingerprint, so they cannot be
vouched for: rerun the evaluation).
"""

from pathlib import Path, PurePosixPath

import msgspec

from ov_eval.atomic import write_atomically
from ov_eval.errors import ResultsError

FORMAT_VERSION = 2
RESULTS_FILE = "results.json"
PREDICTIONS_DIR = "predictions"


class Prediction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One line of a predictions file: what the model was asked, what it said, how it scored."""

    sample_id: str
    prompt: str
    prediction: str
    extracted: str | None
    """What the scorer read out of `prediction` (audit copy, rewritten at aggregation)."""
    score: float
    """The sample's score (audit copy, rewritten at aggregation; never read back)."""
    error: str | None = None
    """Why the sample could not be answered (e.g. an unreadable image, naming file and sample);
    `prediction` is then empty and the score 0. Absent from the line when None."""


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
    model_sha256: str | None = None
    """The model's content hash (`ov_eval.fingerprint.identify_model`)."""


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
    reference: str
    """The scorer these numbers follow, with its version (`Task.reference`)."""
    fingerprint: str
    """Hash of the run fingerprint stored next to the predictions (`fingerprint_hash`)."""
    num_errors: int = 0
    """Samples that could not be answered (scored 0, counted in `num_samples`)."""

    def __post_init__(self) -> None:
        if self.metric not in self.metrics:
            raise ValueError(f"task {self.task}: headline metric {self.metric!r} is not in metrics")
        if self.num_samples < 0:
            raise ValueError(f"task {self.task}: num_samples must be non-negative")
        if not 0 <= self.num_errors <= self.num_samples:
            raise ValueError(f"task {self.task}: num_errors must be within 0..num_samples")
        relative = PurePosixPath(self.predictions)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(
                f"task {self.task}: predictions must be a path inside the results directory, "
                f"got {self.predictions!r}"
            )


class TaskFailure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A task that could not run, and the one-line reason (naming the file)."""

    task: str
    error: str


class RunResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Contents of `results.json`."""

    format_version: int
    ov_eval_version: str
    created: str
    """When the results were written, ISO 8601 in UTC."""
    settings: RunSettings
    tasks: list[TaskResult]
    failed: list[TaskFailure] = []
    """Tasks that could not run (their data could not be loaded); the other tasks ran."""


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
    data = msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n"
    return write_atomically(directory / RESULTS_FILE, data)


def write_predictions(path: Path, predictions: list[Prediction]) -> Path:
    """Replace the predictions file `path` with `predictions`, atomically."""
    return write_atomically(path, b"".join(encode_prediction(p) for p in predictions))


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
            + (
                " (written by an older ov-eval, without run fingerprints: rerun the evaluation)"
                if version < FORMAT_VERSION
                else " (written by a newer ov-eval)"
            )
        )
    try:
        return msgspec.json.decode(data, type=RunResults)
    except msgspec.DecodeError as error:
        raise ResultsError(f"{path}: {error}") from error


class _VersionOnly(msgspec.Struct):
    format_version: int
