"""The runner: batched greedy evaluation through ov_model, batch-size invariant, resumable, and
unable to mix runs: fingerprints refuse another model or setting, scores are recomputed from the
stored text, bad images fail only their sample, bad data fails only its task.

Tests where the model is not the point use `FakeAnswerer` (deterministic answers, images decoded
as the real answerer does) and a fake model folder (hashed, never loaded)."""

import json

import msgspec
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ov_eval.cli import main
from ov_eval.errors import DeviceError, RunMismatchError
from ov_eval.fingerprint import fingerprint_file
from ov_eval.generation import ModelAnswerer, cut_at_stop_strings
from ov_eval.report import build_report
from ov_eval.results import encode_prediction, read_predictions, read_results
from ov_eval.runner import EvalConfig, evaluate
from ov_eval.tasks import get_task


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


class FakeAnswerer:
    """Answers "red" to even-numbered samples and "blue" to the others; decodes every image
    first, as ModelAnswerer does (so a corrupt image raises ImageError); records its batches."""

    min_pixels, max_pixels = 3136, 12544

    def __init__(self, stop_after_batches=None):
        self.batches = []
        self.stop_after_batches = stop_after_batches

    def answer(self, questions, *, max_new_tokens, stop_strings=()):
        if self.stop_after_batches is not None and len(self.batches) >= self.stop_after_batches:
            raise KeyboardInterrupt  # the run is killed here
        for question in questions:
            question.sample.open_images()
        self.batches.append([q.sample.id for q in questions])
        return ["red" if int(q.sample.id[1:]) % 2 == 0 else "blue" for q in questions]

    @property
    def answered(self):
        return [sample_id for batch in self.batches for sample_id in batch]


def make_fake_model(folder, weights=b"weights-1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llava_onevision"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def fake_model(tmp_path):
    return make_fake_model(tmp_path / "model-a")


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


def test_stored_answer_to_a_different_prompt_fails_the_task(fake_model, benchmark_dir, tmp_path):
    out = tmp_path / "out"
    evaluate(_config(fake_model, benchmark_dir, out, limit=2), FakeAnswerer())
    samples = benchmark_dir / "jsonl" / "samples.jsonl"
    samples.write_text(samples.read_text().replace("What colour", "Which colour"))
    results = evaluate(_config(fake_model, benchmark_dir, out, limit=2), FakeAnswerer())
    assert results.tasks == []
    assert "sample 'q0' was answered for a different prompt" in results.failed[0].error


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


def test_resuming_with_another_model_is_refused_naming_each_difference(
    fake_model, benchmark_dir, tmp_path
):
    out = tmp_path / "out"
    evaluate(_config(fake_model, benchmark_dir, out, limit=3), FakeAnswerer())
    other = make_fake_model(tmp_path / "model-b", weights=b"weights-2")
    answerer = FakeAnswerer()
    with pytest.raises(RunMismatchError) as refused:
        evaluate(_config(other, benchmark_dir, out), answerer)
    message = str(refused.value)
    assert "\n" not in message
    assert f"model: '{fake_model}' -> '{other}'" in message
    assert "model_sha256: " in message
    assert "(files: model.safetensors)" in message
    assert "--overwrite" in message
    assert answerer.batches == []  # refused before answering anything
    assert len(read_predictions(out / "predictions" / "jsonl.jsonl")) == 3  # untouched


def test_rewritten_weights_or_other_settings_are_refused_naming_the_fields(
    fake_model, benchmark_dir, tmp_path
):
    out = tmp_path / "out"
    evaluate(_config(fake_model, benchmark_dir, out, limit=3), FakeAnswerer())
    (fake_model / "model.safetensors").write_bytes(b"weights-2")  # same folder, new weights
    with pytest.raises(RunMismatchError, match=r"model_sha256: \w+ -> \w+ \(files: model\.saf"):
        evaluate(_config(fake_model, benchmark_dir, out), FakeAnswerer())
    (fake_model / "model.safetensors").write_bytes(b"weights-1")
    changed = {"dtype": "bfloat16", "max_new_tokens": 8, "max_pixels": 50_000}
    with pytest.raises(RunMismatchError) as refused:
        evaluate(_config(fake_model, benchmark_dir, out, **changed), FakeAnswerer())
    message = str(refused.value)
    assert "dtype: 'float32' -> 'bfloat16'" in message
    assert "max_new_tokens: 12 -> 8" in message
    assert "max_pixels: None -> 50000" in message
    assert "model" not in message.split("written by a different run")[1].split(";")[0]


def test_a_copied_checkpoint_resumes_and_only_the_rest_is_generated(
    fake_model, benchmark_dir, tmp_path
):
    out = tmp_path / "out"
    first = FakeAnswerer()
    evaluate(_config(fake_model, benchmark_dir, out, limit=3, batch_size=2), first)
    assert first.answered == ["q0", "q1", "q2"]
    for path in fake_model.iterdir():  # new modification times, same content: rehashed, equal
        path.write_bytes(path.read_bytes())
    rest = FakeAnswerer()
    results = evaluate(_config(fake_model, benchmark_dir, out, batch_size=4), rest)
    assert rest.answered == [f"q{i}" for i in range(3, 10)]
    assert results.tasks[0].num_samples == 10
    assert results.tasks[0].reference == get_task("jsonl").reference
    assert results.tasks[0].metrics == {"score": 0.5}
    assert len(results.tasks[0].fingerprint) == 16
    assert results.settings.model_sha256 is not None
    build_report(out)  # the evidence checks pass


def test_predictions_without_a_fingerprint_are_refused(fake_model, benchmark_dir, tmp_path):
    out = tmp_path / "out"
    evaluate(_config(fake_model, benchmark_dir, out, limit=2), FakeAnswerer())
    (out / fingerprint_file("jsonl")).unlink()
    with pytest.raises(RunMismatchError, match="predictions without a fingerprint"):
        evaluate(_config(fake_model, benchmark_dir, out), FakeAnswerer())


def test_stored_scores_are_recomputed_from_the_prediction_text(fake_model, benchmark_dir, tmp_path):
    out = tmp_path / "out"
    honest = evaluate(_config(fake_model, benchmark_dir, out), FakeAnswerer())
    path = out / "predictions" / "jsonl.jsonl"
    original = path.read_bytes()
    tampered = [
        msgspec.structs.replace(p, score=1.0, extracted="red") for p in read_predictions(path)
    ]
    path.write_bytes(b"".join(encode_prediction(p) for p in tampered))
    again = FakeAnswerer()
    rescored = evaluate(_config(fake_model, benchmark_dir, out), again)
    assert again.batches == []
    assert rescored.tasks[0].metrics == honest.tasks[0].metrics == {"score": 0.5}
    assert path.read_bytes() == original  # the audit copy is rewritten too


def test_a_run_killed_mid_batch_resumes_to_byte_identical_predictions(
    fake_model, benchmark_dir, tmp_path
):
    whole = tmp_path / "whole"
    evaluate(_config(fake_model, benchmark_dir, whole, batch_size=3), FakeAnswerer())
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_config(fake_model, benchmark_dir, killed, batch_size=3), FakeAnswerer(2))
    path = killed / "predictions" / "jsonl.jsonl"
    assert len(read_predictions(path)) == 6
    assert not (killed / "results.json").exists()
    path.write_bytes(path.read_bytes() + b'{"sample_id": "q6", "pro')  # torn by the kill
    rest = FakeAnswerer()
    evaluate(_config(fake_model, benchmark_dir, killed, batch_size=3), rest)
    assert rest.answered == ["q6", "q7", "q8", "q9"]
    assert path.read_bytes() == (whole / "predictions" / "jsonl.jsonl").read_bytes()
    assert read_results(killed).tasks[0].metrics == read_results(whole).tasks[0].metrics


def test_a_corrupt_image_fails_its_sample_only_and_is_counted_and_reported(
    fake_model, benchmark_dir, tmp_path
):
    (benchmark_dir / "jsonl" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    messages = []
    answerer = FakeAnswerer()
    out = tmp_path / "out"
    results = evaluate(
        _config(fake_model, benchmark_dir, out, batch_size=4), answerer, messages.append
    )
    (result,) = results.tasks
    assert result.num_errors == 1
    assert result.num_samples == 10
    assert result.metrics == {"score": 0.4}  # q2 would have been right: scored 0, not dropped
    samples = benchmark_dir / "jsonl" / "samples.jsonl"
    assert messages == [
        f"jsonl: {samples}, line 3: sample 'q2': image 0: " + messages[0].split("image 0: ")[1]
    ]
    assert "\n" not in messages[0]
    (bad,) = [p for p in read_predictions(out / result.predictions) if p.error]
    assert (bad.sample_id, bad.prediction, bad.score) == ("q2", "", 0.0)
    assert answerer.answered == ["q0", "q1", "q3", "q4", "q5", "q6", "q7", "q8", "q9"]
    assert "| jsonl | score | 40.00 | 10 | 1 |" in build_report(out)


def test_a_task_whose_data_cannot_load_is_reported_and_the_others_run(
    fake_model, benchmark_dir, tmp_path
):
    messages = []
    config = _config(fake_model, benchmark_dir, tmp_path / "out", tasks=("chartqa", "jsonl"))
    results = evaluate(config, FakeAnswerer(), messages.append)
    assert [r.task for r in results.tasks] == ["jsonl"]
    assert [f.task for f in results.failed] == ["chartqa"]
    assert "no file matches" in results.failed[0].error
    assert messages == [f"chartqa: not run: {results.failed[0].error}"]
    assert read_results(tmp_path / "out").failed == results.failed


def test_an_empty_task_file_is_reported_naming_it(fake_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples.jsonl").write_text("\n")
    results = evaluate(_config(fake_model, data, tmp_path / "out"), FakeAnswerer())
    assert (
        results.failed[0].error
        == f"{data / 'samples.jsonl'}: no samples (the file has no non-blank line)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_before_loading_anything(benchmark_dir, tmp_path):
    config = _config(tmp_path / "no-such-model", benchmark_dir, tmp_path / "out", device="cuda")
    with pytest.raises(DeviceError, match=r"^--device cuda: no CUDA device is available"):
        evaluate(config)
    assert not (tmp_path / "out").exists()
    args = [
        "run",
        "--model",
        str(benchmark_dir),
        "--tasks",
        "jsonl",
        "--data-dir",
        str(benchmark_dir),
    ]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert result.exit_code == 2
    assert "'cuda': no CUDA device is available on this machine" in result.output
    assert not (tmp_path / "o").exists()


def test_the_cli_refuses_another_setting_in_one_line_and_overwrite_starts_over(
    tiny_model, benchmark_dir, tmp_path
):
    (benchmark_dir / "jsonl" / "img1.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    arguments = ["run", "--model", str(tiny_model), "--tasks", "jsonl", "--quiet"]
    arguments += ["--data-dir", str(benchmark_dir), "--out", str(out), "--limit", "2"]
    first = CliRunner().invoke(main, [*arguments, "--max-new-tokens", "4"])
    assert first.exit_code == 0, first.output
    assert "sample 'q1': image 0: not a decodable image" in first.stderr
    assert "| jsonl | score |" in first.stdout
    assert "| 2 | 1 |" in first.stdout
    refused = CliRunner().invoke(main, [*arguments, "--max-new-tokens", "5"])
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1
    assert "written by a different run (max_new_tokens: 4 -> 5)" in refused.stderr
    started_over = CliRunner().invoke(main, [*arguments, "--max-new-tokens", "5", "--overwrite"])
    assert started_over.exit_code == 0, started_over.output
    assert read_results(out).tasks[0].max_new_tokens == 5
