"""`evaluate`: tasks x model -> predictions JSONL (resumable) and results.json.

For each task: load the benchmark from `DATA_DIR/<task>` (or `DATA_DIR` itself when that folder
does not exist), skip the samples already in `OUT/predictions/<task>.jsonl` (a finished sample is
a complete line; a torn last line from a killed run is cut off), answer the rest in batches of
`batch_size` in sample order, append each prediction as soon as its batch is done, then aggregate
the task's metric from the predictions file. `results.json` is written at the end, atomically.

A resumed run must be the same run: a stored prediction whose prompt differs from the prompt the
task builds now (a changed task or different data) is an error, not silently mixed in.
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ov_eval import __version__
from ov_eval.errors import ResultsError
from ov_eval.generation import ModelAnswerer, Question
from ov_eval.results import (
    FORMAT_VERSION,
    Prediction,
    RunResults,
    RunSettings,
    TaskResult,
    encode_prediction,
    predictions_file,
    read_predictions,
    write_results,
)
from ov_eval.tasks import SampleScore, Task, get_task
from rice_vit.cli_conventions import progress_bar


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


def task_data_dir(data_dir: Path, task: Task) -> Path:
    """Where `task` reads its benchmark from."""
    own = data_dir / task.name
    return own if own.exists() else data_dir


def _resume(path: Path) -> dict[str, Prediction]:
    """Finished predictions of an earlier run, after cutting off a torn last line."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        path.write_bytes(complete)
    return {p.sample_id: p for p in read_predictions(path)}


def run_task(task: Task, answerer: ModelAnswerer, config: EvalConfig, out: Path) -> TaskResult:
    """Predict, store and score one task (see the module docstring)."""
    samples = task.load(task_data_dir(config.data_dir, task), limit=config.limit)
    relative = predictions_file(task.name)
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(path)
    known = {sample.id for sample in samples}
    stray = sorted(set(done) - known)
    if stray:
        raise ResultsError(f"{path}: predictions for samples not in the task: {stray[:5]}")
    questions = [Question(sample, task.build_prompt(sample)) for sample in samples]
    for question in questions:
        stored = done.get(question.sample.id)
        if stored is not None and stored.prompt != question.prompt:
            raise ResultsError(
                f"{path}: sample {question.sample.id!r} was answered for a different prompt; "
                "remove the file to start the task afresh"
            )
    pending = [q for q in questions if q.sample.id not in done]
    budget = config.max_new_tokens or task.max_new_tokens
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
            answers = answerer.answer(batch, max_new_tokens=budget, stop_strings=task.stop_strings)
            for question, text in zip(batch, answers, strict=True):
                scored = task.score(question.sample, text)
                prediction = Prediction(
                    sample_id=question.sample.id,
                    prompt=question.prompt,
                    prediction=text,
                    extracted=scored.extracted,
                    score=scored.score,
                )
                done[prediction.sample_id] = prediction
                sink.write(encode_prediction(prediction))
            sink.flush()
            bar.update(len(batch))
    ordered = [done[sample.id] for sample in samples]
    path.write_bytes(b"".join(encode_prediction(p) for p in ordered))  # sample order on disk
    scored_pairs = [
        (s, SampleScore(p.score, p.extracted)) for s, p in zip(samples, ordered, strict=True)
    ]
    return TaskResult(
        task=task.name,
        version=task.version,
        prompt_hash=task.prompt_hash,
        max_new_tokens=budget,
        num_samples=len(samples),
        metric=task.metric,
        metrics=task.aggregate(scored_pairs),
        predictions=relative,
    )


def evaluate(config: EvalConfig, answerer: ModelAnswerer | None = None) -> RunResults:
    """Run every task of `config`; return (and write to `config.out`) the results."""
    tasks: Sequence[Task] = [get_task(name) for name in config.tasks]  # unknown names fail first
    if answerer is None:
        answerer = ModelAnswerer(
            config.model,
            dtype=config.dtype,
            device=config.device,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )
    results = [run_task(task, answerer, config, config.out) for task in tasks]
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
            device=config.device,
        ),
        tasks=results,
    )
    write_results(config.out, run)
    return run
