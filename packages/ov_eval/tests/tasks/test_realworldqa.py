"""realworldqa: question as the whole prompt; lmms-eval's `realworldqa_process_results` (letter
extraction for letter answers, exact match otherwise)."""

import pytest

from ov_eval.tasks import get_task

QUESTION = (
    "In which direction is the front wheel of the car on the right side facing?\n"
    "A. Left\nB. Straight\nC. Right\n"
    "Please answer directly with only the letter of the correct option and nothing else."
)


def rows(make_image_cell):
    return [
        {"question": QUESTION + "  ", "answer": "C", "image": make_image_cell()},
        {
            "question": "How many cars are there?\n"
            "Please answer directly with a single word or number.",
            "answer": "3",
            "image": make_image_cell(),
        },
    ]


def test_prompt_is_the_trimmed_question(tmp_path, make_parquet, make_image_cell):
    make_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", rows(make_image_cell))
    task = get_task("realworldqa")
    choice, count = task.load(tmp_path)
    assert choice.options == ("Left", "Straight", "Right")
    assert count.options == ()
    assert task.build_prompt(choice) == QUESTION
    assert task.max_new_tokens == 16


@pytest.mark.parametrize(
    ("prediction", "score", "extracted"),
    [
        ("C", 1.0, "C"),
        (" C.\n", 1.0, "C"),
        ("(C)", 1.0, "C"),
        ("The answer is C", 1.0, "C"),
        ("c.", 0.0, None),  # lmms-eval reads upper-case letters only
        ("Right", 0.0, None),  # ... and never option texts (its YAML sets no filters)
        ("B", 0.0, "B"),
        ("Right, C", 1.0, "C"),
    ],
)
def test_multiple_choice_extraction(
    tmp_path, make_parquet, make_image_cell, prediction, score, extracted
):
    make_parquet(tmp_path / "data" / "test-0.parquet", rows(make_image_cell)[:1])
    task = get_task("realworldqa")
    (sample,) = task.load(tmp_path)
    result = task.score(sample, prediction)
    assert (result.score, result.extracted) == (score, extracted)


@pytest.mark.parametrize(
    ("prediction", "score"),
    [("3", 1.0), (" 3.\n", 1.0), ("3..", 1.0), ("Three", 0.0), ("3 cars", 0.0), ("(3)", 0.0)],
)
def test_free_form_answers_are_exact_after_trimming_trailing_periods(
    tmp_path, make_parquet, make_image_cell, prediction, score
):
    make_parquet(tmp_path / "data" / "test-0.parquet", rows(make_image_cell)[1:])
    task = get_task("realworldqa")
    (sample,) = task.load(tmp_path)
    assert task.score(sample, prediction).score == score
