"""ChartQA relaxed accuracy: 5 % on numbers, exact (case-insensitive) text otherwise."""

import pytest

from ov_eval.metrics import relaxed_accuracy


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("100", "100", 1.0),
        ("105", "100", 1.0),  # 5 % off: still right
        ("105.1", "100", 0.0),  # just over 5 %
        ("95", "100", 1.0),
        ("-10.4", "-10", 1.0),  # 4 % of |answer|
        ("12%", "0.12", 1.0),  # percentages are divided by 100
        ("12%", "12%", 1.0),
        ("12", "12%", 0.0),  # 12 vs 0.12
        ("0.12", "12%", 1.0),
        ("12%\n", "0.12", 1.0),  # the prediction is trimmed first (lmms-eval trims outputs)
        ("12%", "12% ", 0.0),  # the answer is not ("12% " is no percentage)
        ("yes", " Yes", 0.0),
        ("12", " 12 ", 1.0),  # float() itself ignores the spaces
        ("１２", "12", 1.0),  # float() reads fullwidth digits
        ("1,000", "1000", 0.0),  # commas are not numbers under the official rule...
        ("1,000", "1,000", 1.0),  # ...so they fall back to string equality
        ("5 kg", "5", 0.0),  # units too
        ("$5", "5", 0.0),
        ("Yes", "yes", 1.0),  # text: case-insensitive equality
        ("Yes.", "yes", 0.0),
        ("0", "0", 1.0),  # a zero answer is only matched as text
        ("0.0", "0", 0.0),
        ("0.01", "0", 0.0),
        ("", "5", 0.0),  # empty output
        ("", "", 1.0),
    ],
)
def test_relaxed_accuracy_hand_worked(prediction, answer, expected):
    assert relaxed_accuracy(prediction, answer) == expected


def test_tolerance_is_a_parameter():
    assert relaxed_accuracy("108", "100") == 0.0
    assert relaxed_accuracy("108", "100", tolerance=0.1) == 1.0
    assert relaxed_accuracy("100.5", "100", tolerance=0.0) == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        relaxed_accuracy("1", "1", tolerance=-0.1)
