"""mmstar: the pinned prompt (no final period), lmms-eval's letter extraction, sub-category
averaging."""

import pytest

from ov_eval.tasks import get_task


def rows(make_image_cell):
    def one(index, answer, category, l2):
        return {
            "index": index,
            "question": "  Which option? Please answer yes or no.\n"
            "Options: A: x, B: y, C: z, D: w ",
            "image": make_image_cell(),
            "answer": answer,
            "category": category,
            "l2_category": l2,
            "meta_info": {"source": "s", "split": "val", "image_path": "p"},
        }

    return [
        one(0, "A", "math", "geometry"),
        one(1, "B", "math", "geometry"),
        one(2, "C", "math", "statistical reasoning"),
        one(3, "D", "coarse perception", "image emotion"),
    ]


def test_prompt_strips_the_question_and_removes_the_yes_no_instruction(
    tmp_path, make_parquet, make_image_cell
):
    make_parquet(tmp_path / "mmstar.parquet", rows(make_image_cell))
    task = get_task("mmstar")
    first = task.load(tmp_path)[0]
    assert first.id == "0"
    assert task.build_prompt(first) == (
        "Which option?\nOptions: A: x, B: y, C: z, D: w\n"
        "Answer with the option's letter from the given choices directly"
    )


@pytest.mark.parametrize(
    ("prediction", "score"),
    [
        ("A", 1.0),
        ("A: x", 1.0),
        ("(A)", 1.0),
        ("Option A", 1.0),
        ("The answer is A.", 1.0),
        ("\nA", 1.0),
        ("I think A", 1.0),  # a letter that ends the output
        ("B is wrong, the answer is A", 0.0),  # the start (B) outranks the answer phrase
        ("DATA", 1.0),  # fallback: the last letter anywhere
        ("a", 0.0),  # letters are upper case only
        ("B", 0.0),
        ("", 0.0),
    ],
)
def test_lmms_eval_letter_extraction(tmp_path, make_parquet, make_image_cell, prediction, score):
    make_parquet(tmp_path / "mmstar.parquet", rows(make_image_cell)[:1])
    task = get_task("mmstar")
    (sample,) = task.load(tmp_path)
    assert task.score(sample, prediction).score == score


def test_average_is_the_mean_of_sub_category_means(tmp_path, make_parquet, make_image_cell):
    make_parquet(tmp_path / "mmstar.parquet", rows(make_image_cell))
    task = get_task("mmstar")
    samples = task.load(tmp_path)
    answers = ["A", "C", "C", "D"]  # geometry 1/2, statistical reasoning 1/1, image emotion 1/1
    scored = [(s, task.score(s, a)) for s, a in zip(samples, answers, strict=True)]
    numbers = task.aggregate(scored)
    assert numbers["average"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)  # not 3/4
    assert numbers["math"] == pytest.approx((0.5 + 1.0) / 2)
    assert numbers["coarse perception"] == 1.0
