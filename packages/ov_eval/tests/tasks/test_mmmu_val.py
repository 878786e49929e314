"""mmmu_val: options parsed from their string form, images from the <image n> markers, both
prompt shapes, and MMMU's multiple-choice and open-answer parsing."""

import pyarrow as pa
import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task
from ov_eval.tasks.mmmu_val import open_answer_matches, parse_open_response

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [("id", pa.string()), ("question", pa.string()), ("options", pa.string())]
    + [("answer", pa.string()), ("question_type", pa.string()), ("subfield", pa.string())]
    + [(f"image_{n}", IMAGE) for n in range(1, 8)]
)


def row(make_image_cell, **fields):
    base = {
        "id": "validation_Art_Theory_1",
        "question": "<image 1> Which style is shown?",
        "options": "['Baroque', 'Cubism <image 2>', 'Pop art']",
        "answer": "B",
        "question_type": "multiple-choice",
        "subfield": "Art History",
        "image_1": make_image_cell(),
        "image_2": make_image_cell(),
    }
    return {f"image_{n}": None for n in range(1, 8)} | base | fields


def load(tmp_path, make_parquet, rows):
    make_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", rows, SCHEMA)
    return get_task("mmmu_val").load(tmp_path)


def test_multiple_choice_prompt_images_and_scoring(tmp_path, make_parquet, make_image_cell):
    (sample,) = load(tmp_path, make_parquet, [row(make_image_cell, image_3=make_image_cell())])
    task = get_task("mmmu_val")
    assert sample.options == ("Baroque", "Cubism <image 2>", "Pop art")
    assert len(sample.images) == 2  # image_3 is not referred to
    assert sample.metadata["subject"] == "Art_Theory"
    assert task.build_prompt(sample) == (
        "<image 1> Which style is shown?\nA. Baroque\nB. Cubism <image 2>\nC. Pop art\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.score(sample, "B").score == 1.0
    assert task.score(sample, "(B)").score == 1.0
    assert task.score(sample, "The answer is B.").score == 1.0
    assert task.score(sample, "A").score == 0.0
    assert task.score(sample, " B\n").score == 1.0  # trimmed first, as lmms-eval does
    assert task.max_new_tokens == 128  # lmms-eval's MMMU template
    # lmms-eval picks a random letter here; ov_eval counts it wrong (deliberate difference).
    unreadable = task.score(sample, "hmm")
    assert (unreadable.score, unreadable.extracted) == (0.0, None)


def test_open_question_prompt_and_scoring(tmp_path, make_parquet, make_image_cell):
    open_row = row(
        make_image_cell,
        id="validation_Math_3",
        question="<image 1> What is x?",
        options="[]",
        answer="2.5",
        question_type="open",
    )
    (sample,) = load(tmp_path, make_parquet, [open_row])
    task = get_task("mmmu_val")
    assert sample.options == ()
    assert task.build_prompt(sample) == (
        "<image 1> What is x?\n\nAnswer the question using a single word or phrase."
    )
    assert task.score(sample, "2.5").score == 1.0
    assert task.score(sample, "x = 2.50").score == 1.0  # numbers compared as floats
    assert task.score(sample, "So the answer is 5/2").score == 0.0
    assert task.aggregate([(sample, task.score(sample, "2.5"))]) == {"mmmu_acc": 1.0}


def test_accuracy_is_reported_to_five_decimals(tmp_path, make_parquet, make_image_cell):
    (sample,) = load(tmp_path, make_parquet, [row(make_image_cell)])
    task = get_task("mmmu_val")
    scored = [(sample, task.score(sample, "B"))] + [(sample, task.score(sample, "A"))] * 2
    assert task.aggregate(scored) == {"mmmu_acc": 0.33333}  # lmms-eval's round(acc, 5)


@pytest.mark.parametrize(
    ("response", "answer", "right"),
    [
        ("Therefore, the answer is 1,200.", "1200", True),  # commas, trailing period
        ("The total is 12 dollars", "12", True),  # a number inside the key tail
        ("The area is 3.14159", "3.14", True),  # rounded to 2 decimals
        ("It is the mitochondria", "Mitochondria", True),  # text: answer contained
        ("It is the nucleus", "Mitochondria", False),
        ("The option is C", "C", True),  # one letter: must stand alone
        ("Cells", "C", False),
        ("", "5", False),
    ],
)
def test_open_answer_rule(response, answer, right):
    assert open_answer_matches(answer, parse_open_response(response)) is right


def test_a_marker_without_its_image_is_a_malformed_row(tmp_path, make_parquet, make_image_cell):
    bad = row(make_image_cell, image_2=None)
    with pytest.raises(DatasetError, match=r"row 0: the text refers to <image 2> but image_2"):
        load(tmp_path, make_parquet, [bad])


def test_options_that_are_not_a_list_literal_are_a_malformed_row(
    tmp_path, make_parquet, make_image_cell
):
    with pytest.raises(DatasetError, match="row 0: column 'options': not a Python list literal"):
        load(tmp_path, make_parquet, [row(make_image_cell, options="[Baroque, Cubism")])
