"""ov-eval report: the Markdown table, the pinned column, and the checks on predictions."""

import msgspec
import pytest

from ov_eval.errors import ResultsError
from ov_eval.fingerprint import (
    RunFingerprint,
    fingerprint_file,
    fingerprint_hash,
    write_fingerprint,
)
from ov_eval.report import build_report
from ov_eval.results import (
    FORMAT_VERSION,
    Prediction,
    RunResults,
    RunSettings,
    TaskFailure,
    TaskResult,
    encode_prediction,
    predictions_file,
    write_results,
)
from ov_eval.tasks import get_task


def fingerprint_of(name) -> RunFingerprint:
    return RunFingerprint(
        format_version=FORMAT_VERSION,
        task=name,
        task_version=1,
        prompt_hash="0123456789ab",
        reference=f"lmms-eval 0.7.3, task {name}",
        model="/ckpt/tiny",
        model_sha256="ab" * 32,
        dtype="float32",
        device="cpu",
        min_pixels=None,
        max_pixels=None,
        max_new_tokens=16,
        stop_strings=[],
        decoding="greedy",
        model_files={},
    )


def task_result(name, version=None, prompt_hash=None, samples=2, metrics=None, errors=0):
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
        reference=f"lmms-eval 0.7.3, task {name}",
        fingerprint=fingerprint_hash(fingerprint_of(name)),
        num_errors=errors,
    )


def write_run(directory, results, predictions_per_task=2, errors=0):
    write_results(directory, results)
    (directory / "predictions").mkdir(exist_ok=True)
    for result in results.tasks:
        lines = [
            encode_prediction(Prediction(str(i), "p", "x", "x", 1.0))
            for i in range(predictions_per_task - errors)
        ]
        lines += [
            encode_prediction(Prediction(f"e{i}", "p", "", None, 0.0, error="unreadable"))
            for i in range(errors)
        ]
        (directory / result.predictions).write_bytes(b"".join(lines))
        write_fingerprint(directory / fingerprint_file(result.task), fingerprint_of(result.task))


def run(tasks, failed=(), **settings):
    return RunResults(
        failed=list(failed),
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
    docvqa = get_task("docvqa_val")
    assert (
        f"| docvqa_val | anls | 84.29 | 2 | 0 | {docvqa.version} | `{docvqa.prompt_hash}` "
        f"| {docvqa.max_new_tokens} | yes |"
    ) in markdown
    assert f"| ocrbench | ocrbench_accuracy | 82.90 | 2 | 0 | {get_task('ocrbench').version} |" in (
        markdown
    )
    assert "- **ocrbench**: lmms-eval 0.7.3, task ocrbench" in markdown
    assert "Errors are samples" not in markdown
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
    chartqa, ai2d = get_task("chartqa"), get_task("ai2d")
    assert f"| no (installed: v{chartqa.version}, `{chartqa.prompt_hash}`) |" in markdown
    assert (
        f"| ai2d | exact_match | 84.29 | 2 | 0 | 7 | `{ai2d.prompt_hash}` | {ai2d.max_new_tokens} "
        f"| no (installed: v{ai2d.version}," in markdown
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


def test_errors_and_tasks_that_could_not_run_are_reported(tmp_path):
    failure = TaskFailure(task="jsonl", error="data/samples.jsonl: no samples")
    write_run(tmp_path, run([task_result("chartqa", errors=1)], failed=[failure]), errors=1)
    markdown = build_report(tmp_path)
    assert "| chartqa | relaxed_overall | 84.29 | 2 | 1 |" in markdown
    assert "Errors are samples that could not be answered" in markdown
    assert "## Tasks that could not run\n\n- **jsonl**: data/samples.jsonl: no samples" in markdown


def test_a_report_refuses_predictions_whose_errors_or_fingerprint_do_not_match(tmp_path):
    write_run(tmp_path, run([task_result("chartqa", errors=0)]), errors=1)
    with pytest.raises(ResultsError, match=r"1 errors, but results\.json reports 0"):
        build_report(tmp_path)
    write_run(tmp_path, run([task_result("chartqa")]))
    other = msgspec.structs.replace(fingerprint_of("chartqa"), dtype="bfloat16")
    write_fingerprint(tmp_path / fingerprint_file("chartqa"), other)
    with pytest.raises(ResultsError, match=r"does not match the fingerprint results\.json records"):
        build_report(tmp_path)
    (tmp_path / fingerprint_file("chartqa")).unlink()
    with pytest.raises(ResultsError, match="run fingerprint of task chartqa is missing"):
        build_report(tmp_path)
