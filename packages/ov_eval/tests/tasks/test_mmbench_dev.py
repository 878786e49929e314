"""mmbench_dev: the MMBench prompt with and without hint, lmms-eval's offline option matching
(MMBench's `can_infer`, then `extract_mcq_answer`), and CircularEval over rotated copies."""

import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task
from ov_eval.tasks.mmbench_dev import infer_option


def question(make_image_cell, index, answer, options, hint=None):
    row = {
        "index": index,
        "question": "What is the main object?",
        "hint": hint,
        "answer": answer,
        "category": "image_topic",
        "L2-category": "coarse_perception",
        "image": make_image_cell(),
        "source": "test",
        "split": "dev",
        "comment": None,
    }
    for letter in "ABCD":
        row[letter] = None
    row.update(zip("ABCD", options, strict=False))
    return row


def load(tmp_path, make_parquet, rows):
    make_parquet(tmp_path / "en" / "dev-00000-of-00001.parquet", rows)
    return get_task("mmbench_dev").load(tmp_path)


def test_prompt_with_and_without_hint(tmp_path, make_parquet, make_image_cell):
    rows = [
        question(make_image_cell, 1, "A", ["cat", "dog", "bird"], hint="A pet photo."),
        question(make_image_cell, 2, "B", ["cat", "dog"], hint="nan"),
    ]
    with_hint, without = load(tmp_path, make_parquet, rows)
    task = get_task("mmbench_dev")
    assert with_hint.options == ("cat", "dog", "bird")
    assert task.build_prompt(with_hint) == (
        "A pet photo. What is the main object? There are several options:\n"
        "A. cat\nB. dog\nC. bird\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.build_prompt(without) == (
        "What is the main object? There are several options:\nA. cat\nB. dog\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.stop_strings == ("ASSISTANT:",)


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("B. dog", "B"),
        ("(B)", "B"),
        ("The answer is B.", "B"),
        ("Answer:B", None),  # one word "Answer:B": no form matches
        ("answer :B", "B"),
        ("A dog sits on the mat", "B"),  # "A" read as an article, then option text
        ("dog", "B"),
        ("a cat and a dog", None),  # two option texts
        ("A or B", None),  # two bare letters
        ("E", "E"),  # letters A-E are tried, whatever the options
        ("", None),
    ],
)
def test_mmbench_option_matching(answer, letter):
    assert infer_option(answer, {"A": "cat", "B": "dog", "C": "bird"}) == letter


def test_circular_eval_needs_every_rotation_right(tmp_path, make_parquet, make_image_cell):
    rows = [
        question(make_image_cell, 7, "A", ["cat", "dog"]),
        question(make_image_cell, 1_000_007, "B", ["dog", "cat"]),  # rotated copy of 7
        question(make_image_cell, 8, "A", ["red", "blue"]),
        question(make_image_cell, 1_000_008, "B", ["blue", "red"]),
    ]
    samples = load(tmp_path, make_parquet, rows)
    task = get_task("mmbench_dev")
    outputs = ["A", "B", "A", "A"]  # question 7 right twice; question 8 wrong once
    scored = [(s, task.score(s, o)) for s, o in zip(samples, outputs, strict=True)]
    assert task.aggregate(scored) == {
        "circular_accuracy": 0.5,
        "accuracy": 0.75,
        "category/image_topic": 0.5,
        "l2_category/coarse_perception": 0.5,
    }


def test_copies_without_their_main_row_are_not_counted(tmp_path, make_parquet, make_image_cell):
    rows = [
        question(make_image_cell, 7, "A", ["cat", "dog"]),
        question(make_image_cell, 1_000_008, "B", ["blue", "red"]),  # main row 8 absent
    ]
    samples = load(tmp_path, make_parquet, rows)
    task = get_task("mmbench_dev")
    scored = [(s, task.score(s, "A")) for s in samples]
    numbers = task.aggregate(scored)
    assert (numbers["circular_accuracy"], numbers["accuracy"]) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("output", "letter"),
    [
        (" B\n", "B"),  # trimmed first
        ("Answer:B", "B"),  # can_infer reads nothing; extract_mcq_answer reads B
        ("**B**", "B"),
        ("A or B", "A"),  # two bare letters: extract_mcq_answer's start rule outranks its end
        ("<think>A</think>B", "B"),
        ("Failed to obtain answer via API: B", "B"),  # can_infer refuses it, the fallback not
        ("I do not know", None),
    ],
)
def test_unmatched_outputs_fall_back_to_extract_mcq_answer(
    tmp_path, make_parquet, make_image_cell, output, letter
):
    (sample,) = load(tmp_path, make_parquet, [question(make_image_cell, 1, "B", ["cat", "dog"])])
    assert get_task("mmbench_dev").score(sample, output).extracted == letter


def test_answer_outside_the_options_is_a_malformed_row(tmp_path, make_parquet, make_image_cell):
    with pytest.raises(DatasetError, match="row 0: column 'answer': 'C' is not one of the options"):
        load(tmp_path, make_parquet, [question(make_image_cell, 1, "C", ["cat", "dog"])])
