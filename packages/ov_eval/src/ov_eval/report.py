"""`ov-eval report OUT`: a results directory as a Markdown table, checked before it is shown.

The report is what gets pasted into a model card or a pull request, so it carries everything a
reader needs to judge whether two numbers are comparable: the checkpoint, the image resolution
limits, the batch size, whether the run was limited, and per task its version, prompt hash and
generation budget. The "pinned" column compares each task's version and prompt hash with the task
definitions of the installed ov_eval, which flags numbers measured with an older prompt.

Before rendering, the predictions behind every number are checked: each task's predictions file
must exist, decode, and hold exactly as many samples as the result claims. A report is never
produced from a results file whose evidence is missing or truncated.
"""

from pathlib import Path

from ov_eval.errors import ResultsError
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
    count = len(read_predictions(path))
    if count != result.num_samples:
        raise ResultsError(
            f"{path}: {count} predictions, but results.json reports {result.num_samples} "
            f"samples for task {result.task}"
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
        f"- model: `{settings.model}`",
        f"- images: min_pixels {_or_default(settings.min_pixels)}, "
        f"max_pixels {_or_default(settings.max_pixels)}",
        f"- batch size {settings.batch_size}; "
        f"limit {'none' if settings.limit is None else f'{settings.limit} samples per task'}"
        + (f"; dtype {settings.dtype}" if settings.dtype else "")
        + (f"; device {settings.device}" if settings.device else ""),
        f"- ov-eval {results.ov_eval_version}, results format {results.format_version}, "
        f"written {results.created}",
        "",
        "| task | metric | score | samples | version | prompt hash | max new tokens | pinned |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for result in results.tasks:
        score = 100.0 * result.metrics[result.metric]
        lines.append(
            f"| {result.task} | {result.metric} | {score:.2f} | {result.num_samples} "
            f"| {result.version} | `{result.prompt_hash}` | {result.max_new_tokens} "
            f"| {pinned_status(result)} |"
        )
    lines += ["", "Scores are percentages of the headline metric.", "", "## All metrics", ""]
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
