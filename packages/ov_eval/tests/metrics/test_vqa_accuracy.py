"""VQA accuracy: leave-one-annotator-out average of min(1, matches / 3), after normalisation."""

import pytest

from ov_eval.metrics import normalize_vqa_answer, vqa_accuracy


def references(matching: int, answer: str = "cat") -> list[str]:
    return [answer] * matching + ["dog"] * (10 - matching)


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # the 9 subsets without the match see it once: 9 * (1/3) / 10
        (2, 0.6),  # 2 * (1/3) + 8 * (2/3), over 10
        (3, 0.9),  # 3 * (2/3) + 7 * 1, over 10
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_accuracy_by_number_of_agreeing_annotators(matching, expected):
    assert vqa_accuracy("cat", references(matching)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("The dog.", "dog"),  # article dropped, final period removed
        ("a red car", "red car"),
        ("dont", "don't"),
        ("couldnt've", "couldn't've"),
        ("yes!", "yes"),
        ("3.5", "3.5"),  # a point before a digit stays
        ("1,000", "1000"),  # a comma between digits: punctuation is deleted
        ("red-white", "red white"),  # no space next to it: punctuation becomes a space
        ("red - white", "red white"),
        ("  Tab\tand\nnewline ", "tab and newline"),
    ],
)
def test_normalisation(text, normal):
    assert normalize_vqa_answer(text) == normal


def test_prediction_and_references_are_compared_after_normalisation():
    assert vqa_accuracy("Two dogs.", ["2 dogs"] * 10) == 1.0
    assert vqa_accuracy("", ["yes"] * 10) == 0.0


@pytest.mark.parametrize(("answers", "error"), [("cat", TypeError), (["cat"], ValueError)])
def test_bad_references_are_refused(answers, error):
    with pytest.raises(error):
        vqa_accuracy("cat", answers)
