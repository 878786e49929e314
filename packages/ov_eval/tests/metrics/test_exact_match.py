"""exact_match as lmms-eval scores it: case and punctuation optional, whitespace kept."""

import pytest

from ov_eval.metrics import exact_match


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("B", "B", 1.0),
        ("b", "B", 1.0),
        ("(B)", "B", 1.0),
        ("b.", "B", 1.0),
        ("B", "C", 0.0),
        (" B", "B", 0.0),  # whitespace is not trimmed
        ("B\n", "B", 0.0),
        ("", "", 1.0),
        ("", "B", 0.0),
        ("New York!", "new york", 1.0),
    ],
)
def test_default_ignores_case_and_punctuation(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_normalisations_can_be_turned_off():
    assert exact_match("b", "B", ignore_case=False) == 0.0
    assert exact_match("(B)", "B", ignore_punctuation=False) == 0.0
    assert exact_match("B", "B", ignore_case=False, ignore_punctuation=False) == 1.0
