"""VQA accuracy (VQAv2, VizWiz, TextVQA style), with the standard answer normalisation.

VQAv2 asks ten people per question. An answer is fully right when at least three of them gave it:
Acc(a) = min(1, #humans who said a / 3). The official scorer averages this over the ten ways of
leaving one annotator out (each time counting matches among the other nine), which is what this
function returns; lmms-eval does the same. So with ten references an answer given by three
annotators scores 0.9, not 1.0 (7 subsets keep all three matches -> 1, 3 subsets keep two -> 2/3),
and one given by four or more scores 1.0. The leave-one-out average needs at least two references;
for single-reference data use `exact_match` instead.

Normalisation (the official `processPunctuation` + `processDigitArticle`, plus the lower-casing
that lmms-eval's EvalAI answer processor applies to model outputs) is applied to the prediction and
to every reference:

1. lower-case; tabs and newlines become spaces; trim;
2. punctuation: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted when the text has it
   next to a space, or has a comma between digits ("1,000"); otherwise it becomes a space;
   then every '.' that is not followed by a digit is deleted ("3.5" keeps its point);
3. words: number words zero..ten (and "none") become digits, the articles a/an/the are dropped,
   apostrophe-less contractions get their apostrophe back ("dont" -> "don't"), and words are
   joined by single spaces.

The official scorer normalises the references only when the annotators disagree; normalising them
always gives the same result on VQAv2's references (they are already in normal form) and makes the
function safe on references that are not.
"""

import itertools
import re
from collections.abc import Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
_PUNCTUATION += ("@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contractions in their written form; every spelling with some apostrophes missing maps back to
# it. (The official table also lists "Im", "Ive" and "Id've" with a capital I, which can never
# match lower-cased text, so they are left out here to the same effect.)
_CONTRACTIONS_WRITTEN = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't ow's'at shan't she'd've
she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's
someone'd someone'd've someone'll someone's something'd something'd've something'll that's
there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've
you'd you'd've you'll you're you've
"""


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for written in _CONTRACTIONS_WRITTEN.split():
        apostrophes = [i for i, char in enumerate(written) if char == "'"]
        for count in range(1, len(apostrophes) + 1):
            for dropped in itertools.combinations(apostrophes, count):
                spelling = "".join(c for i, c in enumerate(written) if i not in dropped)
                table.setdefault(spelling, written)
    return table


_CONTRACTIONS = _contraction_table()


def normalize_vqa_answer(text: str) -> str:
    """Return `text` in the normal form the VQA scorer compares (see the module docstring)."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    drop_outright = _COMMA_BETWEEN_DIGITS.search(text) is not None
    cleaned = text
    for mark in _PUNCTUATION:
        if drop_outright or f"{mark} " in text or f" {mark}" in text:
            cleaned = cleaned.replace(mark, "")
        else:
            cleaned = cleaned.replace(mark, " ")
    cleaned = _PERIOD_NOT_BEFORE_DIGIT.sub("", cleaned)
    words = [_NUMBER_WORDS.get(word, word) for word in cleaned.split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Return the VQA accuracy of `prediction` against the annotators' `answers` (in [0, 1])."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) < 2:
        raise ValueError(
            f"VQA accuracy needs at least 2 reference answers (VQAv2 has 10), got {len(answers)}; "
            "use exact_match for single-reference data"
        )
    predicted = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(answer) == predicted for answer in answers]
    total = sum(matches)
    # Leaving annotator i out removes their match, if they had one, from the count.
    per_subset = [min(1.0, (total - matched) / 3.0) for matched in matches]
    return sum(per_subset) / len(per_subset)
