"""docvqa_val and infovqa_val: loading the Hub layout, the pinned prompt, ANLS scoring."""

import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task


def rows(make_image_cell):
    return [
        {
            "questionId": "49153",
            "question": "What is the date?",
            "question_types": ["handwritten"],
            "answers": ["June 1, 1998", "1 June 1998"],
            "image": make_image_cell(),
            "docId": 1,
        },
        {"questionId": "2", "question": "Who?", "answers": ["ITC"], "image": make_image_cell()},
    ]


@pytest.mark.parametrize(
    ("name", "folder", "budget"),
    [("docvqa_val", "DocVQA", 32), ("infovqa_val", "InfographicVQA", 32)],
)
def test_load_prompt_and_score(
    tmp_path, make_parquet, make_image_cell, make_png, name, folder, budget
):
    make_parquet(tmp_path / folder / "validation-00000-of-00001.parquet", rows(make_image_cell))
    # The other config's files in the same repository are not picked up.
    make_parquet(tmp_path / "other" / "validation-00000-of-00001.parquet", [{"x": 1}])
    task = get_task(name)
    first, second = task.load(tmp_path)
    assert first.id == "49153"
    assert first.answers == ("June 1, 1998", "1 June 1998")
    assert first.images == (make_png(),)
    assert second.id == "2"
    assert task.build_prompt(first) == (
        "What is the date?\nAnswer the question using a single word or phrase."
    )
    assert task.max_new_tokens == budget  # both yamls of lmms-eval 0.7.3 set 32
    assert task.stop_strings == ()
    assert task.score(first, "june 1, 1998").score == 1.0
    assert task.score(first, "June 1 1998").score == pytest.approx(1 - 1 / 12)
    assert task.score(first, "no idea").score == 0.0
    # lmms-eval trims the output first: the length ANLS divides by is the trimmed one's
    # (1 - 1/12, not 1 - 1/15 as for the untrimmed "  June 1 1998\n").
    assert task.score(first, "  June 1 1998\n").score == pytest.approx(1 - 1 / 12)
    assert task.score(first, "  June 1 1998\n").extracted == "June 1 1998"
    scored = [(first, task.score(first, "1 june 1998")), (second, task.score(second, "IBM"))]
    assert task.aggregate(scored) == {"anls": pytest.approx((1.0 + 0.0) / 2)}


def test_empty_answer_list_is_a_malformed_row(tmp_path, make_parquet, make_image_cell):
    bad = rows(make_image_cell)
    bad[1]["answers"] = []
    path = make_parquet(tmp_path / "DocVQA" / "validation-0.parquet", bad)
    with pytest.raises(
        DatasetError, match=f"{path}, row 1: column 'answers': expected a non-empty"
    ):
        get_task("docvqa_val").load(tmp_path)


def test_integer_question_ids_are_accepted(tmp_path, make_parquet, make_image_cell):
    row = {"questionId": 5, "question": "q", "answers": ["a"], "image": make_image_cell()}
    make_parquet(tmp_path / "DocVQA" / "validation-0.parquet", [row])
    (sample,) = get_task("docvqa_val").load(tmp_path)
    assert sample.id == "5"
