"""The `ov-eval` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (pyarrow, Pillow, the
task modules) happen inside the commands so that `--help` answers instantly. Bad input ends the
command with a one-line error naming the file, row or task (exit status 2), never a traceback.

Commands: `list` (the benchmarks and their pinned prompts), `run` (a checkpoint over tasks,
resumable) and `report` (a results directory as Markdown).
"""

from pathlib import Path

import click

from ov_eval import __version__
from ov_eval.errors import EvalError
from rice_vit.cli_conventions import (
    Group,
    claim_output,
    device_option,
    dtype_option,
    out_option,
    overwrite_option,
    quiet_option,
)

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


def _usage_error(error: Exception) -> click.ClickException:
    """`error` as a one-line click error with exit status 2, the status of a bad invocation."""
    clean = click.ClickException(str(error))
    clean.exit_code = 2
    return clean


class _Group(Group):
    """Turns ov_eval's (and the model loader's) input errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EvalError as error:
            raise _usage_error(error) from error
        except ValueError as error:  # ov_model / rice_vit errors subclass ValueError
            if type(error).__module__.startswith(("ov_model", "rice_vit")):
                raise _usage_error(error) from error
            raise


@click.group(name="ov-eval", cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ov-eval")
def main() -> None:
    """Offline benchmark evaluation of LLaVA-OneVision-class checkpoints with the official
    metrics."""


@main.command(name="list")
@click.option("--prompts", is_flag=True, help="Also print every task's prompt templates.")
def list_tasks(prompts: bool) -> None:
    """List the tasks with their version, prompt hash, metric and generation budget."""
    from ov_eval.tasks import TASKS

    header = ("task", "version", "prompt hash", "metric", "max new tokens", "dataset")
    rows = [header]
    for cls in TASKS.values():
        task = cls()
        rows.append(
            (
                task.name,
                str(task.version),
                task.prompt_hash,
                task.metric,
                str(task.max_new_tokens),
                task.dataset,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
    if prompts:
        for cls in TASKS.values():
            click.echo(f"\n[{cls.name}] {cls.summary}")
            click.echo(f"  scored as: {cls.reference}")
            for key, template in cls.prompt_templates.items():
                click.echo(f"  {key}: {template!r}")


@main.command()
@click.argument("results_dir", metavar="RESULTS", type=click.Path(file_okay=False, path_type=Path))
@out_option(
    "Write the Markdown to this file instead of printing it.",
    folder=False,
    required=False,
    hidden_aliases=("--output",),
)
@overwrite_option()
def report(results_dir: Path, out: Path | None, overwrite: bool) -> None:
    """Render the results directory RESULTS (`ov-eval run --out`: results.json +
    predictions/*.jsonl) as Markdown.

    Every task's predictions file is checked against the results first.
    """
    from ov_eval.report import build_report

    if out is not None:
        claim_output(out, overwrite, folder=False)
    markdown = build_report(results_dir)
    if out is None:
        click.echo(markdown, nl=False)
    else:
        out.write_text(markdown, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)


@main.command()
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Checkpoint folder (onevision export or HF LLaVA-OV-1.5 layout).",
)
@click.option("--tasks", required=True, help="Comma-separated task names (see `ov-eval list`).")
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Benchmarks folder: each task reads DATA_DIR/<task> (or DATA_DIR itself).",
)
@out_option("Results folder; an existing one is resumed (finished samples are kept).")
@overwrite_option("Start over: remove the results an earlier run left in --out.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per task.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Samples per batch.")
@click.option("--min-pixels", type=click.IntRange(min=1), default=None, help="Image lower bound.")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Image upper bound. Default: the checkpoint's preprocessor_config.json.",
)
@dtype_option(
    "Compute dtype; auto: the checkpoint's stored dtype. float32 by default so that CPU and "
    "GPU scores agree.",
    default="float32",
)
@device_option()
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Override every task's generation budget. Default: each task's own.",
)
@quiet_option()
def run(
    model_dir: Path,
    tasks: str,
    data_dir: Path,
    out: Path,
    overwrite: bool,
    limit: int | None,
    batch_size: int,
    min_pixels: int | None,
    max_pixels: int | None,
    dtype: str,
    device: str,
    max_new_tokens: int | None,
    quiet: bool,
) -> None:
    """Evaluate a checkpoint on tasks with greedy decoding; write predictions and results.

    Rerunning into the same --out resumes: finished samples are kept (--overwrite starts over).
    A resume with another model or other settings is refused, naming each difference.
    A sample with an unreadable image is reported on stderr and scored 0 (the "errors" column);
    a task whose data cannot be loaded is reported and skipped, the others run, and the command
    then exits with status 1.
    """
    from ov_eval.report import render_report
    from ov_eval.runner import EvalConfig, evaluate
    from ov_eval.tasks import get_task

    names = tuple(name.strip() for name in tasks.split(",") if name.strip())
    config = EvalConfig(
        model=model_dir,
        tasks=names,
        data_dir=data_dir,
        out=out,
        limit=limit,
        batch_size=batch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        dtype=dtype,
        device=device,
        max_new_tokens=max_new_tokens,
        progress=not quiet,
    )
    for name in names:
        get_task(name)  # an unknown task fails before anything is removed
    claim_output(out, overwrite, resumable=True, keep=(model_dir, data_dir))
    results = evaluate(config, on_error=lambda message: click.echo(message, err=True))
    click.echo(render_report(results), nl=False)
    if results.failed:
        names = ", ".join(failure.task for failure in results.failed)
        raise click.ClickException(
            f"{len(results.failed)} task(s) could not run: {names} (reasons above and in "
            f"{out / 'results.json'})"
        )
