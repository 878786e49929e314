"""OCRBench's answer-containment rule, general and for handwritten formulas."""

import pytest

from ov_eval.metrics import ocrbench_match


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("The word is HELLO.", ["hello"], 1.0),  # contained, case-insensitive
        ("hello", ["  Hello  "], 1.0),  # answers trimmed
        ("line one\nline two", ["one line"], 1.0),  # newline -> space
        ("helo", ["hello"], 0.0),
        ("", ["hello"], 0.0),  # empty output
        ("cat", ["dog", "cat"], 1.0),  # any answer
        ("ＨＥＬＬＯ", ["hello"], 1.0),  # fullwidth ASCII folded (lmms-eval 0.7.3)
        ("１２３", ["123"], 1.0),
        ("hello", ["ｈｅｌｌｏ"], 1.0),  # in the answers too
        ("a\u3000b", ["a b"], 1.0),  # ideographic space -> space
        ("a\u00a0b", ["a b"], 0.0),  # but nothing broader than that (no NFKC)
        ("line one\r\nline two", ["one line"], 0.0),  # only "\n" becomes a space
    ],
)
def test_general_items(prediction, answers, expected):
    assert ocrbench_match(prediction, answers, "IIIT5K") == expected


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("x ^ { 2 } + y", ["x^{2}+y"], 1.0),  # spaces ignored
        ("X^{2}", ["x^{2}"], 0.0),  # case matters for formulas
        ("\\frac { a }\n{ b }", ["\\frac{a}{b}"], 1.0),
        ("ｘ^{2}", ["x^{2}"], 0.0),  # no fullwidth folding for formulas
    ],
)
def test_handwritten_formulas(prediction, answers, expected):
    assert ocrbench_match(prediction, answers, "HME100k") == expected


@pytest.mark.parametrize(("answers", "error"), [("abc", TypeError), ([], ValueError)])
def test_bad_answers_are_refused(answers, error):
    with pytest.raises(error):
        ocrbench_match("abc", answers, "IIIT5K")
