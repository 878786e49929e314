"""ANLS on hand-worked cases, including the official scorer's threshold and length details."""

import pytest

from ov_eval.metrics import anls


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Paris", ["Paris"], 1.0),
        ("  PARIS ", ["paris"], 1.0),  # case and surrounding whitespace ignored
        ("new   york", ["New York"], 1.0),  # inner whitespace runs collapse
        ("2019", ["2018"], 0.75),  # 1 edit / 4 characters
        ("1 may", ["May 1", "1 May"], 1.0),  # best of the answers
        ("ab", ["ax"], 0.5),  # similarity exactly at the threshold is kept
        ("abc", ["axy"], 0.0),  # 1 - 2/3 = 0.33 < 0.5 -> 0
        ("completely different", ["x"], 0.0),
        ("", ["answer"], 0.0),  # empty output
        ("", [""], 1.0),  # both empty: identical
    ],
)
def test_anls_hand_worked(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


def test_length_is_measured_on_the_unnormalised_strings_as_the_official_scorer_does():
    # distance("paris", "pariz") = 1; length = max(len("paris  "), len("pariz")) = 7
    assert anls("paris  ", ["pariz"]) == pytest.approx(1 - 1 / 7)


def test_threshold_is_a_parameter():
    assert anls("2019", ["2018"], threshold=0.8) == 0.0
    assert anls("abc", ["axy"], threshold=0.3) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("answers", "threshold", "error"),
    [("Paris", 0.5, TypeError), ([], 0.5, ValueError), (["Paris"], 1.5, ValueError)],
)
def test_bad_arguments_are_refused(answers, threshold, error):
    with pytest.raises(error):
        anls("Paris", answers, threshold=threshold)
