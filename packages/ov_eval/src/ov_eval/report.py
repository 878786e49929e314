"""`ov-eval report OUT`: a results directory as a Markdown table, checked before it is shown.

The report is what gets pasted into a model card or a pull request, so it carries everything a
reader needs to judge whether two numbers are comparable: the checkpoint, the image resolution
limits, the batch size, whether the run was limited, and per task its version, prompt hash and
generation budget. The "pinned" column compares each task's version and prompt hash with the task
definitions of the installed ov_eval, which flags numbers measured with an older prompt.

Samples that could not be answered (an unreadable image: scored 0) are counted in an "errors"
column, and tasks that could not run at all are listed with their error under the table, so a
number measured on fewer usable samples never passes for a clean one.

Before rendering, the evidence behind every number is checked: each task's predictions file must
exist, decode, and hold exactly as many samples (and errors) as the result claims, and the run
fingerprint stored next to it must hash to the one recorded in results.json. A report is never
produced from a results file whose evidence is missing, truncated or from another run.
"""

from pathlib import Path

from ov_eval.errors import ResultsError
from ov_eval.fingerprint import fingerprint_file, fingerprint_hash, read_fingerprint
from ov_eval.results import RunResults, TaskResult, read_predictions, read_results
from ov_eval.tasks import TASKS


def build_report(directory: Path) -> str:
    """Read, check and render the results directory `directory` as Markdown."""
    results = read_results(directory)
    for result in results.tasks:
        _check_predictions(directory, result)
    return render_report(results)


def _check_predictions(directory: Path, result: TaskResult) -> None:
    path = directory / result.predictions
    if not path.is_file():
        raise ResultsError(f"{path}: predictions of task {result.task} are missing")
    predictions = read_predictions(path)
    if len(predictions) != result.num_samples:
        raise ResultsError(
            f"{path}: {len(predictions)} predictions, but results.json reports "
            f"{result.num_samples} samples for task {result.task}"
        )
    errors = sum(prediction.error is not None for prediction in predictions)
    if errors != result.num_errors:
        raise ResultsError(
            f"{path}: {errors} errors, but results.json reports {result.num_errors} "
            f"for task {result.task}"
        )
    fingerprint = directory / fingerprint_file(result.task)
    if not fingerprint.is_file():
        raise ResultsError(f"{fingerprint}: run fingerprint of task {result.task} is missing")
    if fingerprint_hash(read_fingerprint(fingerprint)) != result.fingerprint:
        raise ResultsError(
            f"{fingerprint}: does not match the fingerprint results.json records for task "
            f"{result.task} (the predictions were rewritten by another run)"
        )


def pinned_status(result: TaskResult) -> str:
    """'yes' when the installed task has the same version and prompt hash, else what differs."""
    task = TASKS.get(result.task)
    if task is None:
        return "unknown task"
    installed = task()
    if (installed.version, installed.prompt_hash) == (result.version, result.prompt_hash):
        return "yes"
    return f"no (installed: v{installed.version}, `{installed.prompt_hash}`)"


def render_report(results: RunResults) -> str:
    """The Markdown report of `results` (no file access)."""
    settings = results.settings
    lines = [
        "# ov-eval results",
        "",
        f"- model: `{settings.model}`"
        + (f" (content sha256 `{settings.model_sha256[:16]}`)" if settings.model_sha256 else ""),
        f"- images: min_pixels {_or_default(settings.min_pixels)}, "
        f"max_pixels {_or_default(settings.max_pixels)}",
        f"- batch size {settings.batch_size}; "
        f"limit {'none' if settings.limit is None else f'{settings.limit} samples per task'}"
        + (f"; dtype {settings.dtype}" if settings.dtype else "")
        + (f"; device {settings.device}" if settings.device else ""),
        f"- ov-eval {results.ov_eval_version}, results format {results.format_version}, "
        f"written {results.created}",
        "",
        "| task | metric | score | samples | errors | version | prompt hash | max new tokens "
        "| pinned |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for result in results.tasks:
        score = 100.0 * result.metrics[result.metric]
        lines.append(
            f"| {result.task} | {result.metric} | {score:.2f} | {result.num_samples} "
            f"| {result.num_errors} | {result.version} | `{result.prompt_hash}` "
            f"| {result.max_new_tokens} | {pinned_status(result)} |"
        )
    lines += ["", "Scores are percentages of the headline metric."]
    if any(result.num_errors for result in results.tasks):
        lines.append(
            "Errors are samples that could not be answered (e.g. an unreadable image), scored 0; "
            "each one's message is in its predictions line (`error`)."
        )
    if results.failed:
        lines += ["", "## Tasks that could not run", ""]
        lines += [f"- **{failure.task}**: {failure.error}" for failure in results.failed]
    lines += ["", "## Scorers", ""]
    lines += [f"- **{result.task}**: {result.reference}" for result in results.tasks]
    lines += ["", "## All metrics", ""]
    for result in results.tasks:
        details = ", ".join(
            f"{name} {_format_number(value)}" for name, value in result.metrics.items()
        )
        lines.append(f"- **{result.task}**: {details}")
    return "\n".join(lines) + "\n"


def _or_default(value: int | None) -> str:
    return "model default" if value is None else str(value)


def _format_number(value: float) -> str:
    # Counts (OCRBench's right items) print as integers, rates with four decimals.
    if float(value).is_integer() and abs(value) > 1:
        return str(int(value))
    return f"{value:.4f}"
