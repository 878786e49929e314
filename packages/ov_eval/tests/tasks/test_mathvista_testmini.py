"""mathvista_testmini: the bare-answer prompt per answer type, and MathVista's extraction and
normalisation (lmms-eval 0.7.3's) with rule-based extraction where lmms-eval asks GPT."""

import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task


def problem(make_image_cell, pid, **fields):
    base = {
        "pid": pid,
        "question": "What is the value?",
        "image": f"images/{pid}.jpg",
        "decoded_image": make_image_cell(),
        "choices": None,
        "unit": None,
        "precision": None,
        "answer": "3",
        "question_type": "free_form",
        "answer_type": "integer",
        "metadata": {"category": "math-targeted-vqa", "split": "testmini"},
        "query": "unused by this prompt variant",
    }
    return base | fields


def samples(tmp_path, make_parquet, make_image_cell):
    rows = [
        problem(
            make_image_cell,
            "1",
            question="Which shape is largest?",
            choices=["circle", "square", "triangle"],
            answer="square",
            question_type="multi_choice",
            answer_type="text",
        ),
        problem(make_image_cell, "2", unit="cm"),
        problem(make_image_cell, "3", answer="1.5", answer_type="float", precision=1.0),
        problem(make_image_cell, "4", answer="0.25", answer_type="float", precision=2.0),
        problem(make_image_cell, "5", answer="[2007, 2008]", answer_type="list"),
    ]
    make_parquet(tmp_path / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet", rows)
    return get_task("mathvista_testmini").load(tmp_path)


def test_prompts_per_answer_type(tmp_path, make_parquet, make_image_cell):
    choice, integer, one_place, two_places, python_list = samples(
        tmp_path, make_parquet, make_image_cell
    )
    task = get_task("mathvista_testmini")
    assert task.build_prompt(choice) == (
        "Which shape is largest?\nA. circle\nB. square\nC. triangle\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.build_prompt(integer) == (
        "What is the value? (Unit: cm)\nAnswer the question using a single integer number."
    )
    assert task.build_prompt(one_place) == (
        "What is the value?\n"
        "Answer the question using a single floating-point number with one decimal place."
    )
    assert task.build_prompt(two_places).endswith("with two decimal places.")
    assert task.build_prompt(python_list) == (
        "What is the value?\nAnswer the question using a Python list."
    )


@pytest.mark.parametrize(
    ("index", "prediction", "score", "extracted"),
    [
        (0, "B", 1.0, "square"),
        (0, "(B) square", 1.0, "square"),
        (0, "square", 1.0, "square"),
        (0, "The largest one is the squares", 1.0, "square"),  # nearest choice by edit distance
        (0, "A", 0.0, "circle"),
        (1, "3", 1.0, "3"),
        (1, "3.0", 1.0, "3"),
        (1, "The answer is 3 cm.", 1.0, "3"),  # the last number
        (1, "1,003", 0.0, "1003"),
        (1, "three", 0.0, None),
        (2, "1.5", 1.0, "1.5"),
        (2, "1.53", 1.0, "1.5"),  # rounded to the precision
        (3, "0.25", 1.0, "0.25"),
        (3, ".25", 1.0, "0.25"),
        (4, "[2007, 2008]", 1.0, "[2007, 2008]"),
        (4, "Between 2007 and 2008: [2007, 2008]", 1.0, "[2007, 2008]"),
        (4, "2007 and 2008", 0.0, "2007 and 2008"),
        (1, "", 0.0, None),
        (1, " 3\n", 1.0, "3"),  # trimmed first
        (1, "１２", 0.0, "12"),  # int() reads fullwidth digits, as in lmms-eval
        (1, "1_003", 0.0, "1003"),  # ... and underscores
        (1, 'The answer is "3".', 1.0, "3"),  # lmms-eval's quick_extract pattern
        (0, 'The answer is "B".', 1.0, "square"),
        (0, "", 0.0, "circle"),  # nearest choice to "": the shortest, first on ties
        (2, "1.45", 0.0, "1.4"),  # round() on the binary value: 1.4, not 1.5
    ],
)
def test_extraction_and_normalisation(
    tmp_path, make_parquet, make_image_cell, index, prediction, score, extracted
):
    sample = samples(tmp_path, make_parquet, make_image_cell)[index]
    result = get_task("mathvista_testmini").score(sample, prediction)
    assert (result.score, result.extracted) == (score, extracted)


def test_budget_and_stop_strings_follow_lmms_eval():
    task = get_task("mathvista_testmini")
    assert task.max_new_tokens == 16384  # mathvista_testmini_format.yaml, lmms-eval 0.7.3
    assert task.stop_strings == ()
    assert "mathvista_testmini_format" in task.reference


@pytest.mark.parametrize(
    ("index", "response", "direct"),
    [
        (0, "", ""),
        (0, "square", "square"),  # one of the choices
        (0, "B", None),  # lmms-eval asks its judge; here: rules
        (1, "3", "3"),
        (1, "3.0", None),  # int("3.0") fails: judge
        (2, "1.53", "1.53"),
        (2, "1e0", "1.0"),
        (4, "[2007, 2008]", None),  # lists always go to the judge
    ],
)
def test_judge_free_steps_are_lmms_evals(
    tmp_path, make_parquet, make_image_cell, index, response, direct
):
    from ov_eval.tasks.mathvista_testmini import extract_without_judge

    sample = samples(tmp_path, make_parquet, make_image_cell)[index]
    assert extract_without_judge(response, sample) == direct


def test_float_without_supported_precision_is_a_malformed_row(
    tmp_path, make_parquet, make_image_cell
):
    bad = problem(make_image_cell, "9", answer="1.234", answer_type="float", precision=3.0)
    path = make_parquet(tmp_path / "data" / "testmini-0.parquet", [bad])
    with pytest.raises(DatasetError, match=f"{path}, row 0: column 'precision'"):
        get_task("mathvista_testmini").load(tmp_path)


def test_multiple_choice_with_a_numeric_answer_type_is_a_malformed_row(
    tmp_path, make_parquet, make_image_cell
):
    bad = problem(make_image_cell, "9", choices=["1", "2"], question_type="multi_choice")
    make_parquet(tmp_path / "data" / "testmini-0.parquet", [bad])
    with pytest.raises(DatasetError, match="row 0: question_type 'multi_choice' with answer_type"):
        get_task("mathvista_testmini").load(tmp_path)
