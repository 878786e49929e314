"""ai2d: options lettered in the prompt, lmms-eval's leading-letter filter, exact match."""

import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task


def row(make_image_cell, answer="1"):
    return {
        "question": "Which stage comes after the egg?",
        "options": ["adult", "larva", "pupa"],
        "answer": answer,
        "image": make_image_cell(),
    }


def test_load_prompt_and_score(tmp_path, make_parquet, make_image_cell):
    make_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [row(make_image_cell)])
    task = get_task("ai2d")
    (sample,) = task.load(tmp_path)
    assert sample.answers == ("B",)
    assert sample.options == ("adult", "larva", "pupa")
    assert task.build_prompt(sample) == (
        "Which stage comes after the egg?\nA. adult\nB. larva\nC. pupa\n"
        "Answer with the option's letter from the given choices directly."
    )


@pytest.mark.parametrize(
    ("prediction", "score", "extracted"),
    [
        ("B", 1.0, "B"),
        ("b", 1.0, "b"),
        ("(B)", 1.0, "(B)"),
        ("B. larva", 1.0, "B"),
        ("  B.", 1.0, "B"),
        (" (B)\n", 1.0, "(B)"),  # trimmed, as lmms-eval trims before its exact match
        ("<think>A?</think> B", 1.0, "B"),  # reasoning blocks removed, as lmms-eval's CLI does
        ("**B**", 1.0, "**B**"),  # punctuation ignored
        ("C", 0.0, "C"),
        ("The answer is B", 0.0, "The answer is B"),  # not read by lmms-eval's filter
        ("larva", 0.0, "larva"),
        ("", 0.0, ""),
    ],
)
def test_scoring_rule(tmp_path, make_parquet, make_image_cell, prediction, score, extracted):
    make_parquet(tmp_path / "data" / "test-0.parquet", [row(make_image_cell)])
    task = get_task("ai2d")
    (sample,) = task.load(tmp_path)
    result = task.score(sample, prediction)
    assert (result.score, result.extracted) == (score, extracted)


def test_answer_index_out_of_range_is_a_malformed_row(tmp_path, make_parquet, make_image_cell):
    path = make_parquet(tmp_path / "data" / "test-0.parquet", [row(make_image_cell, answer="3")])
    with pytest.raises(DatasetError, match=f"{path}, row 0: column 'answer': 3 is not an index"):
        get_task("ai2d").load(tmp_path)
