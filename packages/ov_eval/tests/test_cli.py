"""The `ov-eval` entry point: help and version."""

import pathlib
import tomllib

from click.testing import CliRunner

from ov_eval import __version__
from ov_eval.cli import main

PYPROJECT = pathlib.Path(__file__).parents[1] / "pyproject.toml"


def test_version_flag_prints_the_version_declared_in_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ov-eval, version {declared}"
    assert __version__ == declared


def test_help_describes_the_package():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: ov-eval" in result.output


def test_list_shows_every_task_with_version_hash_metric_and_budget():
    from ov_eval.tasks import TASKS

    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["task", "version", "prompt"]
    for cls in TASKS.values():
        task = cls()
        (line,) = [line for line in lines if line.split()[0] == task.name]
        assert line.split()[1:5] == [
            str(task.version),
            task.prompt_hash,
            task.metric,
            str(task.max_new_tokens),
        ]


def test_list_prompts_prints_the_templates():
    result = CliRunner().invoke(main, ["list", "--prompts"])
    assert result.exit_code == 0, result.output
    assert "[chartqa] ChartQA test" in result.output
    assert "prompt: '{question}\\nAnswer the question with a single word.'" in result.output
    assert "  scored as: lmms-eval 0.7.3, task chartqa" in result.output


def test_report_prints_markdown_or_writes_a_file(tmp_path):
    from ov_eval.fingerprint import (
        ModelIdentity,
        RunSetup,
        fingerprint_file,
        fingerprint_hash,
        make_fingerprint,
        write_fingerprint,
    )
    from ov_eval.results import (
        FORMAT_VERSION,
        Prediction,
        RunResults,
        RunSettings,
        TaskResult,
        encode_prediction,
        write_results,
    )
    from ov_eval.tasks import get_task

    task = get_task("jsonl")
    model = ModelIdentity(path="/m", sha256="ab" * 32, files={})
    setup = RunSetup(
        model=model,
        dtype="float32",
        device="cpu",
        min_pixels=None,
        max_pixels=None,
        max_new_tokens=None,
    )
    fingerprint = make_fingerprint(task, setup)
    write_fingerprint(tmp_path / fingerprint_file("jsonl"), fingerprint)
    write_results(
        tmp_path,
        RunResults(
            format_version=FORMAT_VERSION,
            ov_eval_version=__version__,
            created="2025-01-01T00:00:00Z",
            settings=RunSettings(model="m", batch_size=1),
            tasks=[
                TaskResult(
                    task="jsonl",
                    version=task.version,
                    prompt_hash=task.prompt_hash,
                    max_new_tokens=128,
                    num_samples=1,
                    metric="score",
                    metrics={"score": 1.0},
                    predictions="predictions/jsonl.jsonl",
                    reference=task.reference,
                    fingerprint=fingerprint_hash(fingerprint),
                )
            ],
        ),
    )
    (tmp_path / "predictions" / "jsonl.jsonl").write_bytes(
        encode_prediction(Prediction("1", "q", "a", "a", 1.0))
    )
    printed = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    row = f"| jsonl | score | 100.00 | 1 | 0 | {task.version} | `{task.prompt_hash}` | 128 | yes |"
    assert row in printed.output
    target = tmp_path / "report.md"
    written = CliRunner().invoke(main, ["report", str(tmp_path), "-o", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == printed.output


def test_report_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        result.output == f"Error: {tmp_path}: no results.json (not an ov-eval results directory)\n"
    )
