"""extract_choice: the MMMU parsing rules on the answer shapes models produce."""

import pytest

from ov_eval.metrics import extract_choice, option_letters
from ov_eval.metrics.choice import extract_mcq_answer

OPTIONS = ["a dog", "a cat", "a bird", "a fish"]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B. a cat", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("Answer: (C)", "C"),
        ("(A) is tempting but (C) is right", "C"),  # several brackets: the last one
        ("A is wrong, so B", "B"),  # several bare letters: the last one
        ("B C", "C"),
        ("D.", "D"),
    ],
)
def test_letter_forms(text, letter):
    assert extract_choice(text, OPTIONS) == letter


def test_option_text_is_matched_in_long_answers():
    assert extract_choice("I think the animal in this picture is a cat", OPTIONS) == "B"
    # several texts: the one that occurs last
    assert extract_choice("it looks like a dog at first but it is a fish", OPTIONS) == "D"


def test_option_text_is_not_matched_in_short_answers_as_in_the_official_rule():
    assert extract_choice("a cat", OPTIONS) is None


@pytest.mark.parametrize("text", ["", "I do not know", "b", "E", "(E)", "maybe"])
def test_unreadable_answers_give_none_instead_of_a_random_letter(text):
    assert extract_choice(text, OPTIONS) is None


def test_only_letters_of_existing_options_count():
    assert extract_choice("C", ["yes", "no"]) is None
    assert extract_choice("B", ["yes", "no"]) == "B"


def test_option_letters():
    assert option_letters(0) == []
    assert option_letters(3) == ["A", "B", "C"]
    assert option_letters(26)[-1] == "Z"
    with pytest.raises(ValueError, match="26"):
        option_letters(27)


def test_options_must_be_a_sequence_of_texts():
    with pytest.raises(TypeError):
        extract_choice("A", "AB")


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("  (B).\n", "B"),
        ("B. a cat", "B"),  # start outranks everything
        ("I think C", "C"),  # end
        ("The answer is probably C, I think so", "C"),  # phrase: a letter after it
        ("答案是D", "D"),
        ("(A) and (B)", "B"),  # last occurrence within one format
        ("So B: no, A. yes", "A"),  # "A." (period) outranks "B:" (colon)
        ("DATA", "A"),  # fallback: the letter latest in the text
        ("b", ""),  # letters are upper case
        ("Ｂ", ""),  # fullwidth letters are not read
        ("", ""),
        ("  \n", ""),
    ],
)
def test_extract_mcq_answer_is_lmms_evals_rule(response, letter):
    assert extract_mcq_answer(response, ["A", "B", "C", "D"]) == letter


def test_extract_mcq_answer_defaults_to_letters_a_to_h():
    assert extract_mcq_answer("H") == "H"
    assert extract_mcq_answer("H", ["A", "B"]) == ""
    assert extract_mcq_answer("H", []) == "H"  # an empty list means the default, as in lmms-eval
