"""Results directory formats: structs round-trip, and every malformed file is reported."""

import json

import msgspec
import pytest

from ov_eval.errors import ResultsError
from ov_eval.results import (
    FORMAT_VERSION,
    RESULTS_FILE,
    Prediction,
    RunResults,
    RunSettings,
    TaskFailure,
    TaskResult,
    encode_prediction,
    predictions_file,
    read_predictions,
    read_results,
    write_results,
)


def example_results() -> RunResults:
    return RunResults(
        format_version=FORMAT_VERSION,
        ov_eval_version="0.1.0",
        created="2025-01-01T00:00:00Z",
        settings=RunSettings(model="/ckpt/tiny", batch_size=8, max_pixels=3_240_000, limit=10),
        failed=[TaskFailure(task="jsonl", error="data/samples.jsonl: no samples")],
        tasks=[
            TaskResult(
                task="chartqa",
                version=1,
                prompt_hash="f9bbdfb3ba5c",
                max_new_tokens=16,
                num_samples=2,
                metric="relaxed_overall",
                metrics={"relaxed_overall": 0.5, "relaxed_human_split": 1.0},
                predictions=predictions_file("chartqa"),
                reference="lmms-eval 0.7.3, task chartqa",
                fingerprint="0123456789abcdef",
                num_errors=1,
            )
        ],
    )


def test_results_round_trip(tmp_path):
    path = write_results(tmp_path / "out", example_results())
    assert path == tmp_path / "out" / RESULTS_FILE
    assert read_results(tmp_path / "out") == example_results()
    recorded = json.loads(path.read_text())
    assert recorded["tasks"][0]["predictions"] == "predictions/chartqa.jsonl"
    assert recorded["tasks"][0]["reference"] == "lmms-eval 0.7.3, task chartqa"
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_predictions_round_trip_line_by_line(tmp_path):
    predictions = [
        Prediction(sample_id="0", prompt="Q?\nAnswer.", prediction="12", extracted="12", score=1.0),
        Prediction(sample_id="1", prompt="Ü?", prediction="", extracted=None, score=0.0),
        Prediction("2", "Q?", "", None, 0.0, error="data/x.parquet, row 2: sample '2': image 0"),
    ]
    path = tmp_path / "chartqa.jsonl"
    path.write_bytes(b"".join(encode_prediction(p) for p in predictions))
    assert path.read_bytes().count(b"\n") == 3
    assert path.read_bytes().count(b'"error"') == 1  # absent from lines without an error
    assert read_predictions(path) == predictions


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"sample_id": "0"}\n', "line 1: Object missing required field"),
        (b"garbage\n", "line 1: "),
        (
            b'{"sample_id":"0","prompt":"p","prediction":"x","extracted":null,"score":1.0}\n'
            b'{"sample_id":"0","prompt":"p","prediction":"y","extracted":null,"score":0.0}\n',
            "line 2: sample '0' already at line 1",
        ),
        (
            b'{"sample_id":"0","prompt":"p","prediction":"x","extracted":null,"score":1,"x":1}\n',
            "line 1: Object contains unknown field `x`",
        ),
    ],
)
def test_malformed_predictions_are_reported_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(ResultsError, match=f"{path}, {message}"):
        read_predictions(path)


def test_missing_results_and_other_format_versions_are_reported(tmp_path):
    with pytest.raises(ResultsError, match=r"no results\.json"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ResultsError, match="results format 99, this ov-eval reads format 2"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"format_version": 1, "tasks": []}))
    with pytest.raises(ResultsError, match=r"format 1, .*older ov-eval, without run fingerprints"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("{")
    with pytest.raises(ResultsError, match=r"results\.json: "):
        read_results(tmp_path)


def test_task_result_is_validated():
    good = msgspec.structs.asdict(example_results().tasks[0])
    with pytest.raises(ValueError, match="headline metric 'anls' is not in metrics"):
        TaskResult(**(good | {"metric": "anls"}))
    with pytest.raises(ValueError, match="num_errors must be within"):
        TaskResult(**(good | {"num_errors": 3}))
    for escaping in ("../elsewhere.jsonl", "/abs/p.jsonl", ""):
        with pytest.raises(ValueError, match="inside the results directory"):
            TaskResult(**(good | {"predictions": escaping}))
