"""Model outputs that stress multiple-choice answer extraction, for the lmms-eval parity tests.

`mc_outputs(options)` returns a few hundred outputs for a question with those option texts: the
letters A-F (beyond the options too) in every case and spacing and in every common wrapping
("(B)", "B.", "B)", "B:", ":B", "Answer: B", "The answer is B.", markdown **B**, fullwidth Ｂ,
quotes, brackets, trailing punctuation and newlines, leading whitespace, tabs), reasoning-tag
blocks, several letters, the option texts in several cases and sentences, numbers and words,
empty and whitespace-only outputs, and long rambling answers. The same list crossed with
several documents (different option counts, answers at different letters) is what each parity
test scores with lmms-eval and with ov_eval.

`assignments(n_docs, outputs, runs, seed)` draws whole "runs" (one output per document) for
comparing aggregations.
"""

import random
from collections.abc import Sequence

LETTERS = "ABCDEF"


def _letter_outputs(letter: str) -> list[str]:
    lower = letter.lower()
    fullwidth = chr(ord("Ａ") + ord(letter) - ord("A"))
    return [
        letter,
        lower,
        f" {letter}",
        f"{letter} ",
        f"  {letter}  ",
        f"\n{letter}",
        f"{letter}\n",
        f"{letter}\n\n",
        f"\t{letter}\t",
        f"{letter}.",
        f"{lower}.",
        f"{letter}.\n",
        f"{letter})",
        f"({letter})",
        f"({lower})",
        f"({letter}).",
        f"[{letter}]",
        f"{letter}:",
        f":{letter}",
        f"{letter},",
        f"{letter}!",
        f"{letter}?",
        f"{letter};",
        f"'{letter}'",
        f'"{letter}"',
        f"**{letter}**",
        f"**{letter}.**",
        fullwidth,
        f"{fullwidth}.",
        f"Answer: {letter}",
        f"answer: {lower}",
        f"Answer:{letter}",
        f"The answer is {letter}.",
        f"The answer is ({letter}).",
        f"the answer is {lower}",
        f"Option {letter}",
        f"option {lower}",
        f"I choose {letter}.",
        f"My answer is {letter}",
        f"The correct option is {letter}",
        f"答案是{letter}",
        f"{letter} - it fits",
        f"<think>Maybe A, maybe C.</think>{letter}",
        f"<think>\nlong thought\n</think>\n\n{letter}.",
        f"</think>{letter}",
        f"<analysis>The answer is A</analysis> {letter}",
        f"{letter}\n\nExplanation: the others do not match the image.",
    ]


def _text_outputs(letter: str, text: str) -> list[str]:
    return [
        text,
        text.lower(),
        text.upper(),
        text.title(),
        f"{text}.",
        f" {text}\n",
        f"{letter}. {text}",
        f"{letter.lower()}. {text}",
        f"{letter}) {text}",
        f"({letter}) {text}",
        f"{text} ({letter})",
        f"The answer is {text}.",
        f"Looking at the picture carefully, I would say it is {text.lower()} in this case.",
        f"The correct option is {letter}. {text}",
    ]


_GENERAL_OUTPUTS = [
    "",
    " ",
    "\n",
    "\n\n",
    ".",
    "A B",
    "A and B",
    "A, B",
    "A or C",
    "B C",
    "AB",
    "BC.",
    "(A) or (B)",
    "A. B.",
    "B or maybe D",
    "Both A and C are wrong; the answer is D.",
    "A is wrong, so B",
    "It could be B, but C is more likely.",
    "Not A. Answer: C",
    "1",
    "2",
    "3",
    "two",
    "Two",
    "3.5",
    "50%",
    "1,000",
    "１２",
    "Yes",
    "No",
    "yes",
    "None of the above.",
    "I don't know.",
    "I cannot tell from the image.",
    "A cat is shown.",
    "A",
    "DATA analysis suggests B",
    "The image shows a dog. Answer: B",
    "Answer: (B) the second one",
    "B - the second option",
    "Ｂ．",
    "**Answer:** C",
    "**C. the third option**",
    "Answer:\n\nD",
    "The best answer is E.",
    "Let me think step by step. The figure shows several objects arranged on a table, with a "
    "red one on the left and a blue one on the right. Comparing the options, A does not fit "
    "and B is too small, so the answer is C.",
    "Looking at the image, there are many details to consider: the lighting, the shapes, the "
    "colours and the relative positions of the objects. Without more context it is hard to "
    "say which option is correct, but overall I lean towards the last one.",
    "The question asks which option applies. After careful consideration of every option "
    "listed, I conclude that option D is the best choice here.",
]


def mc_outputs(options: Sequence[str]) -> list[str]:
    """The corpus for a question with these option texts (labelled A, B, C...), no duplicates,
    in a fixed order."""
    outputs: list[str] = []
    for letter in LETTERS:
        outputs.extend(_letter_outputs(letter))
    for index, text in enumerate(options):
        outputs.extend(_text_outputs(chr(ord("A") + index), text))
    outputs.extend(_GENERAL_OUTPUTS)
    return list(dict.fromkeys(outputs))


def assignments(
    n_docs: int, outputs: Sequence[str], runs: int = 40, seed: int = 0
) -> list[list[str]]:
    """`runs` lists of one output per document, drawn with a fixed seed."""
    generator = random.Random(seed)
    return [[generator.choice(outputs) for _ in range(n_docs)] for _ in range(runs)]
