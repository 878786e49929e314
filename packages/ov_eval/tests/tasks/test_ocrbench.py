"""ocrbench: trimmed question as prompt, containment scoring, count and per-category numbers."""

import pytest

from ov_eval.tasks import get_task


def test_load_prompt_score_and_aggregate(tmp_path, make_parquet, make_image_cell):
    rows = [
        {
            "dataset": "IIIT5K",
            "question": " what is written in the image? ",
            "question_type": "Regular Text Recognition",
            "answer": ["CHAIR"],
            "image": make_image_cell(),
        },
        {
            "dataset": "HME100k",
            "question": "Please write out the expression of the formula in the image using LaTeX "
            "format.",
            "question_type": "Handwritten Mathematical Expression Recognition",
            "answer": ["x^{2}"],
            "image": make_image_cell(),
        },
    ]
    make_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    task = get_task("ocrbench")
    word, formula = task.load(tmp_path)
    assert word.answers == ("CHAIR",)
    assert formula.metadata["dataset"] == "HME100k"
    assert task.build_prompt(word) == "what is written in the image?"
    assert task.score(word, 'The text is "chair".').score == 1.0
    assert task.score(formula, "X ^ { 2 }").score == 0.0  # case-sensitive formula
    assert task.score(word, "ＣＨＡＩＲ").score == 1.0  # fullwidth folded, as in lmms-eval 0.7.3
    assert task.score(word, " chair\n").extracted == "chair"
    assert task.max_new_tokens == 128
    assert task.stop_strings == ()
    scored = [(word, task.score(word, "chair")), (formula, task.score(formula, "x ^ {2}"))]
    scored.append((word, task.score(word, "table")))
    numbers = task.aggregate(scored)
    assert numbers["ocrbench_accuracy"] == pytest.approx(2 / 3)
    assert numbers["correct"] == 2.0
    assert numbers["Regular Text Recognition"] == 0.5
    assert numbers["Handwritten Mathematical Expression Recognition"] == 1.0


def test_accuracy_divides_by_the_number_of_items_not_by_1000(
    tmp_path, make_parquet, make_image_cell
):
    # lmms-eval 0.7.3 divides the count by 1000 whatever the number of items (equal on the full
    # split); a 2-item run with 1 right is 0.5 here (lmms-eval would say 0.001).
    row = {
        "dataset": "IIIT5K",
        "question": "q",
        "question_type": "Regular Text Recognition",
        "answer": ["CHAIR"],
        "image": make_image_cell(),
    }
    make_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [row, row])
    task = get_task("ocrbench")
    first, second = task.load(tmp_path)
    numbers = task.aggregate(
        [(first, task.score(first, "chair")), (second, task.score(second, ""))]
    )
    assert numbers["ocrbench_accuracy"] == 0.5
    assert numbers["correct"] == 1.0
