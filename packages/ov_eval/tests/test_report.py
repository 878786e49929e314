"""ov-eval report: the Markdown table, the pinned column, and the checks on predictions."""

import pytest

from ov_eval.errors import ResultsError
from ov_eval.report import build_report
from ov_eval.results import (
    FORMAT_VERSION,
    Prediction,
    RunResults,
    RunSettings,
    TaskResult,
    encode_prediction,
    predictions_file,
    write_results,
)
from ov_eval.tasks import get_task


def task_result(name, version=None, prompt_hash=None, samples=2, metrics=None):
    task = get_task(name) if name != "retired_task" else None
    return TaskResult(
        task=name,
        version=version or (task.version if task else 1),
        prompt_hash=prompt_hash or (task.prompt_hash if task else "0123456789ab"),
        max_new_tokens=task.max_new_tokens if task else 16,
        num_samples=samples,
        metric=task.metric if task else "score",
        metrics=metrics or {(task.metric if task else "score"): 0.8429},
        predictions=predictions_file(name),
    )


def write_run(directory, results, predictions_per_task=2):
    write_results(directory, results)
    (directory / "predictions").mkdir(exist_ok=True)
    for result in results.tasks:
        lines = [
            encode_prediction(Prediction(str(i), "p", "x", "x", 1.0))
            for i in range(predictions_per_task)
        ]
        (directory / result.predictions).write_bytes(b"".join(lines))


def run(tasks, **settings):
    return RunResults(
        format_version=FORMAT_VERSION,
        ov_eval_version="0.1.0",
        created="2025-01-01T00:00:00Z",
        settings=RunSettings(model="/ckpt/tiny", batch_size=8, **settings),
        tasks=tasks,
    )


def test_report_table_and_settings(tmp_path):
    ocr = task_result(
        "ocrbench", metrics={"ocrbench_accuracy": 0.829, "correct": 829.0, "Doc-oriented VQA": 0.9}
    )
    write_run(tmp_path, run([task_result("docvqa_val"), ocr], max_pixels=3_240_000))
    markdown = build_report(tmp_path)
    assert "- model: `/ckpt/tiny`" in markdown
    assert "- images: min_pixels model default, max_pixels 3240000" in markdown
    assert "- batch size 8; limit none" in markdown
    assert "| docvqa_val | anls | 84.29 | 2 | 1 | `e65ce3bc78ec` | 128 | yes |" in markdown
    assert "| ocrbench | ocrbench_accuracy | 82.90 | 2 | 1 |" in markdown
    assert (
        "- **ocrbench**: ocrbench_accuracy 0.8290, correct 829, Doc-oriented VQA 0.9000" in markdown
    )


def test_pinned_column_flags_other_prompts_and_unknown_tasks(tmp_path):
    tasks = [
        task_result("chartqa", prompt_hash="aaaaaaaaaaaa"),
        task_result("ai2d", version=7),
        task_result("retired_task"),
    ]
    write_run(tmp_path, run(tasks, limit=2))
    markdown = build_report(tmp_path)
    assert "| no (installed: v1, `f9bbdfb3ba5c`) |" in markdown
    assert (
        "| ai2d | exact_match | 84.29 | 2 | 7 | `ccea24bbec4b` | 16 | no (installed: v1,"
        in markdown
    )
    assert "| retired_task | score |" in markdown
    assert "| unknown task |" in markdown
    assert "limit 2 samples per task" in markdown


def test_missing_or_short_predictions_refuse_a_report(tmp_path):
    results = run([task_result("chartqa", samples=3)])
    write_run(tmp_path, results, predictions_per_task=2)
    with pytest.raises(ResultsError, match=r"2 predictions, but results\.json reports 3 samples"):
        build_report(tmp_path)
    (tmp_path / "predictions" / "chartqa.jsonl").unlink()
    with pytest.raises(ResultsError, match="predictions of task chartqa are missing"):
        build_report(tmp_path)
