"""`evaluate`: tasks x model -> predictions JSONL (resumable), run fingerprints and results.json.

Order of a run, chosen so that every refusal comes before anything expensive:

1. The device is checked (`--device cuda` on a machine without CUDA fails in a second, with one
   line, before any data or weights are read).
2. The model folder is hashed and each task's run fingerprint is built (`ov_eval.fingerprint`);
   every task whose `OUT/predictions/<task>.jsonl` already holds predictions must have been
   written by the same run, else the run is refused naming each difference (before the model is
   loaded).
3. The model is loaded; then, task by task: load the benchmark from `DATA_DIR/<task>` (or
   `DATA_DIR` itself when that folder does not exist); write the fingerprint; skip the samples
   already in the predictions file (a finished sample is a complete line; a torn last line from
   a killed run is cut off); answer the rest in batches of `batch_size` in sample order,
   appending each prediction as soon as its batch is done.
4. At the end of each task every stored prediction text is scored again by the installed task
   (`task.score`), never taken from the file, and the file is rewritten atomically in sample
   order with those scores; the task's numbers are aggregated from them. `results.json` is
   written last, atomically.

Bad input fails as little as it can. A sample whose image cannot be decoded (or used by the
processor) is recorded as a prediction with `error` set (the message names the file, row and
sample), scored 0, counted in the task's `num_errors` and passed to `on_error`; the batch's other
samples are answered one by one (predictions are batch-size invariant, so this changes nothing
else). A task whose data cannot be loaded (a missing folder, an empty or malformed file, a
resume whose stored prompts no longer match) is recorded in `RunResults.failed` with its one-line
error, and the other tasks still run: a typo in one benchmark's folder does not throw away hours
of the others, and a rerun after the fix resumes them at no cost.

A resumed run must be the same run: the fingerprint covers the model and settings, and a stored
prediction whose prompt differs from the prompt the task builds now (different data) is an error.
"""

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ov_eval import __version__
from ov_eval.errors import DeviceError, EvalError, ResultsError
from ov_eval.fingerprint import (
    FileDigest,
    RunFingerprint,
    RunSetup,
    check_resumable,
    fingerprint_file,
    fingerprint_hash,
    identify_model,
    make_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from ov_eval.generation import ModelAnswerer, Question
from ov_eval.results import (
    FORMAT_VERSION,
    PREDICTIONS_DIR,
    Prediction,
    RunResults,
    RunSettings,
    TaskFailure,
    TaskResult,
    encode_prediction,
    predictions_file,
    read_predictions,
    write_predictions,
    write_results,
)
from ov_eval.sample import Sample
from ov_eval.tasks import SampleScore, Task, get_task
from rice_vit import ImageError
from rice_vit.cli_conventions import progress_bar

ErrorSink = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """One evaluation run (the `ov-eval run` options)."""

    model: Path
    tasks: tuple[str, ...]
    data_dir: Path
    out: Path
    limit: int | None = None
    batch_size: int = 8
    min_pixels: int | None = None
    max_pixels: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""
    max_new_tokens: int | None = None
    """Overrides every task's generation budget (recorded in the results); None keeps them."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("name at least one task")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def resolve_device(device: str) -> str:
    """The device to run on for `device` (auto: CUDA when available); DeviceError (one line)
    when it names a CUDA device this machine does not have. Touches no data and no weights."""
    if device == "cpu":
        return device
    import torch

    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if available else "cpu"
    if device.startswith("cuda"):
        if not available:
            raise DeviceError(f"--device {device}: no CUDA device is available on this machine")
        index = device.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s)")
    return device


def task_data_dir(data_dir: Path, task: Task) -> Path:
    """Where `task` reads its benchmark from."""
    own = data_dir / task.name
    return own if own.exists() else data_dir


def _resume(path: Path) -> dict[str, Prediction]:
    """Finished predictions of an earlier run, after cutting off a torn last line (by
    truncating the file in place: one system call, so a kill now cannot lose finished lines)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        os.truncate(path, len(complete))
    return {p.sample_id: p for p in read_predictions(path)}


@dataclass(frozen=True)
class _Failure:
    """A sample the answerer could not use, and why."""

    error: str


def _answer(
    answerer: ModelAnswerer, batch: list[Question], *, max_new_tokens: int, stop_strings
) -> list[str | _Failure]:
    """The answers to `batch`; a sample whose images cannot be used becomes a _Failure. Only a
    failing batch is split (into single samples), so good batches pay nothing for the check."""
    try:
        return answerer.answer(batch, max_new_tokens=max_new_tokens, stop_strings=stop_strings)
    except ImageError as error:
        if len(batch) == 1:
            return [_Failure(str(error))]
    outcomes: list[str | _Failure] = []
    for question in batch:
        outcomes += _answer(
            answerer, [question], max_new_tokens=max_new_tokens, stop_strings=stop_strings
        )
    return outcomes


def _prediction(task: Task, question: Question, outcome: str | _Failure) -> Prediction:
    sample_id = question.sample.id
    if isinstance(outcome, _Failure):
        return Prediction(sample_id, question.prompt, "", None, 0.0, error=outcome.error)
    scored = task.score(question.sample, outcome)
    return Prediction(sample_id, question.prompt, outcome, scored.extracted, scored.score)


def rescore(task: Task, sample: Sample, stored: Prediction) -> Prediction:
    """`stored` with `extracted` and `score` computed again by `task` from its text (an error
    scores 0 and extracts nothing), whatever the file said."""
    if stored.error is not None:
        scored = SampleScore(0.0, None)
    else:
        scored = task.score(sample, stored.prediction)
    return Prediction(
        stored.sample_id,
        stored.prompt,
        stored.prediction,
        scored.extracted,
        scored.score,
        error=stored.error,
    )


def load_task(task: Task, config: EvalConfig) -> tuple[list[Question], dict[str, Prediction]]:
    """The task's questions and its finished predictions in `config.out`; EvalError (one line,
    naming the file) when the data cannot be loaded or the stored predictions do not fit it."""
    samples = task.load(task_data_dir(config.data_dir, task), limit=config.limit)
    path = config.out / predictions_file(task.name)
    done = _resume(path)
    stray = sorted(set(done) - {sample.id for sample in samples})
    if stray:
        raise ResultsError(f"{path}: predictions for samples not in the task: {stray[:5]}")
    questions = [Question(sample, task.build_prompt(sample)) for sample in samples]
    for question in questions:
        stored = done.get(question.sample.id)
        if stored is not None and stored.prompt != question.prompt:
            raise ResultsError(
                f"{path}: {question.sample.name} was answered for a different prompt; "
                "start the task afresh (--overwrite, or remove the file)"
            )
    return questions, done


def run_task(
    task: Task,
    questions: Sequence[Question],
    done: dict[str, Prediction],
    answerer: ModelAnswerer,
    config: EvalConfig,
    fingerprint: RunFingerprint,
    on_error: ErrorSink | None = None,
) -> TaskResult:
    """Answer the questions not in `done`, store, rescore and aggregate (module docstring)."""
    relative = predictions_file(task.name)
    path = config.out / relative
    write_fingerprint(config.out / fingerprint_file(task.name), fingerprint)
    pending = [q for q in questions if q.sample.id not in done]
    bar = progress_bar(
        total=len(questions),
        initial=len(questions) - len(pending),
        desc=task.name,
        unit="sample",
        enabled=config.progress,
    )
    with path.open("ab") as sink, bar:
        for start in range(0, len(pending), config.batch_size):
            batch = pending[start : start + config.batch_size]
            outcomes = _answer(
                answerer,
                batch,
                max_new_tokens=fingerprint.max_new_tokens,
                stop_strings=task.stop_strings,
            )
            for question, outcome in zip(batch, outcomes, strict=True):
                prediction = _prediction(task, question, outcome)
                if prediction.error is not None and on_error is not None:
                    on_error(f"{task.name}: {prediction.error}")
                done[prediction.sample_id] = prediction
                sink.write(encode_prediction(prediction))
            sink.flush()
            bar.update(len(batch))
    samples = [question.sample for question in questions]
    final = [rescore(task, sample, done[sample.id]) for sample in samples]
    write_predictions(path, final)  # sample order, scores as computed now
    scored = [(s, SampleScore(p.score, p.extracted)) for s, p in zip(samples, final, strict=True)]
    return TaskResult(
        task=task.name,
        version=task.version,
        prompt_hash=task.prompt_hash,
        max_new_tokens=fingerprint.max_new_tokens,
        num_samples=len(samples),
        metric=task.metric,
        metrics=task.aggregate(scored),
        predictions=relative,
        reference=task.reference,
        fingerprint=fingerprint_hash(fingerprint),
        num_errors=sum(p.error is not None for p in final),
    )


def _known_digests(out: Path, model: Path) -> dict[str, FileDigest]:
    """Model-file digests recorded by earlier runs of the same model folder in `out`."""
    known: dict[str, FileDigest] = {}
    folder = str(Path(model).resolve())
    for path in sorted((out / PREDICTIONS_DIR).glob("*.fingerprint.json")):
        try:
            recorded = read_fingerprint(path)
        except ResultsError:
            continue  # only a cache here; check_resumable reports an unreadable fingerprint
        if recorded.model == folder:
            known |= recorded.model_files
    return known


def evaluate(
    config: EvalConfig, answerer: ModelAnswerer | None = None, on_error: ErrorSink | None = None
) -> RunResults:
    """Run every task of `config`; return (and write to `config.out`) the results. `on_error`
    receives a one-line message for each sample or task that could not be evaluated."""
    device = resolve_device(config.device)
    tasks: Sequence[Task] = [get_task(name) for name in config.tasks]  # unknown names fail first
    setup = RunSetup(
        model=identify_model(config.model, _known_digests(config.out, config.model)),
        dtype=config.dtype,
        device=device,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        max_new_tokens=config.max_new_tokens,
    )
    fingerprints = {task.name: make_fingerprint(task, setup) for task in tasks}
    for task in tasks:  # every task is checked before the model loads
        check_resumable(
            config.out / fingerprint_file(task.name),
            config.out / predictions_file(task.name),
            fingerprints[task.name],
        )
    if answerer is None:
        answerer = ModelAnswerer(
            config.model,
            dtype=config.dtype,
            device=device,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )
    results: list[TaskResult] = []
    failed: list[TaskFailure] = []
    for task in tasks:
        try:
            questions, done = load_task(task, config)
        except EvalError as error:
            failed.append(TaskFailure(task=task.name, error=str(error)))
            if on_error is not None:
                on_error(f"{task.name}: not run: {error}")
            continue
        results.append(
            run_task(task, questions, done, answerer, config, fingerprints[task.name], on_error)
        )
    run = RunResults(
        format_version=FORMAT_VERSION,
        ov_eval_version=__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        settings=RunSettings(
            model=str(config.model),
            batch_size=config.batch_size,
            min_pixels=answerer.min_pixels,
            max_pixels=answerer.max_pixels,
            limit=config.limit,
            dtype=config.dtype,
            device=device,
            model_sha256=setup.model.sha256,
        ),
        tasks=results,
        failed=failed,
    )
    write_results(config.out, run)
    return run
