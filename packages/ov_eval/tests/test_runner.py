"""The runner: batched greedy evaluation through ov_model, batch-size invariant, resumable."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from ov_eval.cli import main
from ov_eval.errors import ResultsError
from ov_eval.generation import ModelAnswerer, cut_at_stop_strings
from ov_eval.results import read_predictions, read_results
from ov_eval.runner import EvalConfig, evaluate


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ov_model.tiny import create_tiny_model

    folder = tmp_path_factory.mktemp("model")
    create_tiny_model(folder, ["what colour is the shape? red blue green circle square"] * 8)
    return folder


@pytest.fixture(scope="module")
def answerer(tiny_model):
    return ModelAnswerer(tiny_model)


@pytest.fixture
def benchmark_dir(tmp_path):
    folder = tmp_path / "data" / "jsonl"
    folder.mkdir(parents=True)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    lines = []
    for index in range(10):
        image = folder / f"img{index}.png"
        Image.new("RGB", (40 + 10 * index, 50), colours[index % 3]).save(image)
        row = {"id": f"q{index}", "question": f"What colour is shape {index}?", "answers": ["red"]}
        row |= {"metric": "exact_match"}
        if index % 4 != 3:  # some text-only questions too
            row["image"] = image.name
        lines.append(json.dumps(row))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


def _config(tiny_model, data, out, **changes):
    settings = {"model": tiny_model, "tasks": ("jsonl",), "data_dir": data, "out": out}
    return EvalConfig(**(settings | {"progress": False, "max_new_tokens": 12} | changes))


def test_predictions_are_identical_for_batch_size_1_and_8(
    tiny_model, answerer, benchmark_dir, tmp_path
):
    one = evaluate(_config(tiny_model, benchmark_dir, tmp_path / "b1", batch_size=1), answerer)
    eight = evaluate(_config(tiny_model, benchmark_dir, tmp_path / "b8", batch_size=8), answerer)
    first = read_predictions(tmp_path / "b1" / "predictions" / "jsonl.jsonl")
    second = read_predictions(tmp_path / "b8" / "predictions" / "jsonl.jsonl")
    assert [p.sample_id for p in first] == [f"q{i}" for i in range(10)]
    assert first == second
    assert any(p.prediction for p in first)
    assert one.tasks[0].metrics == eight.tasks[0].metrics
    assert read_results(tmp_path / "b1").settings.batch_size == 1


def test_a_killed_run_resumes_without_redoing_finished_samples(
    tiny_model, answerer, benchmark_dir, tmp_path
):
    full = tmp_path / "full"
    evaluate(_config(tiny_model, benchmark_dir, full, batch_size=4), answerer)
    reference = (full / "predictions" / "jsonl.jsonl").read_bytes()

    partial = tmp_path / "partial"
    evaluate(_config(tiny_model, benchmark_dir, partial, limit=5), answerer)
    path = partial / "predictions" / "jsonl.jsonl"
    path.write_bytes(path.read_bytes() + b'{"sample_id": "q5", "pro')  # torn by a kill
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(answerer, name)

        def answer(self, questions, **kwargs):
            calls.extend(q.sample.id for q in questions)
            return answerer.answer(questions, **kwargs)

    evaluate(_config(tiny_model, benchmark_dir, partial, batch_size=4), Counting())
    assert calls == [f"q{i}" for i in range(5, 10)]
    assert path.read_bytes() == reference


def test_stored_answer_to_a_different_prompt_is_refused(
    tiny_model, answerer, benchmark_dir, tmp_path
):
    out = tmp_path / "out"
    evaluate(_config(tiny_model, benchmark_dir, out, limit=2), answerer)
    samples = benchmark_dir / "jsonl" / "samples.jsonl"
    samples.write_text(samples.read_text().replace("What colour", "Which colour"))
    with pytest.raises(ResultsError, match="different prompt"):
        evaluate(_config(tiny_model, benchmark_dir, out, limit=2), answerer)


def test_cli_run_writes_results_and_report(tiny_model, benchmark_dir, tmp_path):
    out = tmp_path / "cli"
    args = ["run", "--model", str(tiny_model), "--tasks", "jsonl", "--data-dir", str(benchmark_dir)]
    options = ["--out", str(out), "--limit", "3", "--max-new-tokens", "8"]
    result = CliRunner().invoke(main, [*args, *options])
    assert result.exit_code == 0, result.output
    assert "| jsonl |" in result.output
    assert read_results(out).tasks[0].num_samples == 3
    assert read_results(out).tasks[0].max_new_tokens == 8
    report = CliRunner().invoke(main, ["report", str(out)])
    assert report.exit_code == 0
    assert str(tiny_model) in report.output


def test_unknown_task_is_a_one_line_error(tiny_model, benchmark_dir, tmp_path):
    args = ["run", "--model", str(tiny_model), "--tasks", "nope", "--data-dir", str(benchmark_dir)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown task 'nope'" in result.output


def test_stop_strings_cut_the_output():
    assert cut_at_stop_strings("B. yes\nASSISTANT: more", ["ASSISTANT:"]) == "B. yes\n"
    assert cut_at_stop_strings("plain", ["x", ""]) == "plain"


def test_the_cli_resumes_its_out_and_starts_over_with_overwrite(
    tiny_model, benchmark_dir, tmp_path
):
    out = tmp_path / "out"
    arguments = ["run", "--model", str(tiny_model), "--tasks", "jsonl"]
    arguments += ["--data-dir", str(benchmark_dir), "--out", str(out), "--limit", "2"]
    arguments += ["--max-new-tokens", "4", "--device", "cpu"]
    first = CliRunner().invoke(main, arguments)
    assert first.exit_code == 0, first.output
    assert [line for line in first.stderr.splitlines() if line.startswith("jsonl: 100%")]
    (out / "notes.txt").write_text("from an earlier run\n")
    resumed = CliRunner().invoke(main, [*arguments, "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "notes.txt").is_file()
    assert "jsonl:" not in resumed.stderr
    started_over = CliRunner().invoke(main, [*arguments, "--quiet", "--overwrite"])
    assert started_over.exit_code == 0, started_over.output
    assert not (out / "notes.txt").exists()
    assert len(read_predictions(out / "predictions" / "jsonl.jsonl")) == 2
