"""scienceqa_img: the context line, lettered choices, and the LLaVA letter rule."""

import pytest

from ov_eval.tasks import get_task


def rows(make_image_cell):
    return [
        {
            "image": make_image_cell(),
            "question": "Which is a solid?",
            "choices": ["milk", "rock"],
            "answer": 1,
            "hint": "Look at the picture.",
            "subject": "natural science",
        },
        {
            "image": None,
            "question": "Which word comes first?",
            "choices": ["apple", "pear", "zoo"],
            "answer": 0,
            "hint": "",
            "subject": "language science",
        },
    ]


def test_load_and_prompt_with_and_without_context(tmp_path, make_parquet, make_image_cell):
    make_parquet(tmp_path / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows(make_image_cell))
    task = get_task("scienceqa_img")
    solid, word = task.load(tmp_path)
    assert solid.answers == ("B",)
    assert len(solid.images) == 1
    assert word.images == ()
    assert task.build_prompt(solid) == (
        "Context: Look at the picture.\nWhich is a solid?\nA. milk\nB. rock\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.build_prompt(word) == (
        "Which word comes first?\nA. apple\nB. pear\nC. zoo\n"
        "Answer with the option's letter from the given choices directly."
    )


@pytest.mark.parametrize(
    ("prediction", "score"),
    [
        ("B", 1.0),
        ("B. rock", 1.0),
        ("B.", 1.0),
        ("A", 0.0),
        ("A. milk", 0.0),
        ("b", 1.0),  # lmms-eval compares the whole output ignoring case
        (" B\n", 1.0),  # ... after trimming it
        ("<think>A or B?</think>B", 1.0),  # ... and removing reasoning blocks
        ("b. rock", 0.0),  # the "X." rule needs an upper-case letter
        ("(B)", 0.0),
        ("The answer is B.", 0.0),
        ("rock", 0.0),
        ("", 0.0),
    ],
)
def test_llava_letter_rule_as_lmms_eval(tmp_path, make_parquet, make_image_cell, prediction, score):
    make_parquet(tmp_path / "ScienceQA-IMG" / "test-0.parquet", rows(make_image_cell)[:1])
    task = get_task("scienceqa_img")
    (sample,) = task.load(tmp_path)
    assert task.score(sample, prediction).score == score
