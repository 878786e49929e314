"""Which option a free-form answer picks: `extract_choice`, the MMMU rule without its dice.

Multiple-choice benchmarks label the options A, B, C... and ask for the letter, but models answer
"B", "(B)", "B.", "The answer is B", "B. a cat", or restate the option's text. The official MMMU
parser (also used by lmms-eval for MMMU and by many other benchmarks) reads the letter back with
these rules, tried in order until one finds candidates:

1. bracketed letters: "(B)";
2. bare letters: the letter followed by a space, after the response is padded with one space on
   each side and stripped of leading/trailing , . ! ? ; : ' ("B", "B is right", "answer: B.");
3. letters followed by a period: "B." inside the text ("B.sun");
4. option text, only for responses of more than five words: an option whose text occurs in the
   response, compared case-insensitively ("I believe the animal in the picture is a cat").

One candidate is the answer. Several (say "A is wrong, so B") are resolved by position: the one
whose marker occurs last in the response wins, for text matches the option text that occurs last.

Where the official parser finds nothing it picks a random letter, which makes scores depend on a
seed and credits an unparseable answer with 1/n of a point on average. `extract_choice` returns
None instead and the benchmark counts the item wrong: this is the one deliberate difference.
Letters are matched case-sensitively and, as in the official rule, a capital letter that ends a
word also counts in rule 2 ("DATA " contains "A "); short outputs that follow the prompts'
"answer with the option's letter" instruction are not affected by that.
"""

from collections.abc import Sequence

_STRIPPED_EDGE_CHARACTERS = (",", ".", "!", "?", ";", ":", "'")
_MIN_WORDS_FOR_TEXT_MATCH = 6


def option_letters(count: int) -> list[str]:
    """Return the labels of `count` options: A, B, C, ... (at most 26)."""
    if not 0 <= count <= 26:
        raise ValueError(f"between 0 and 26 options can be labelled A-Z, got {count}")
    return [chr(ord("A") + index) for index in range(count)]


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """Return the letter of the option that `text` picks, or None when no rule finds one.

    `options` are the option texts in order; they are labelled A, B, C... .
    """
    if isinstance(options, str):
        raise TypeError("options must be a sequence of option texts, not a single string")
    letters = option_letters(len(options))
    response = text
    for character in _STRIPPED_EDGE_CHARACTERS:
        response = response.strip(character)
    response = f" {response} "

    candidates = [letter for letter in letters if f"({letter})" in response]
    if candidates:
        return _last(candidates, lambda letter: response.rfind(f"({letter})"))
    candidates = [letter for letter in letters if f"{letter} " in response]
    if not candidates:
        candidates = [letter for letter in letters if f"{letter}." in response]
    if candidates:
        return _last(candidates, lambda letter: response.rfind(f" {letter} "))
    if len(response.split()) >= _MIN_WORDS_FOR_TEXT_MATCH:
        lowered = response.lower()
        by_letter = dict(zip(letters, options, strict=True))
        candidates = [letter for letter in letters if by_letter[letter].lower() in lowered]
        if candidates:
            return _last(candidates, lambda letter: lowered.rfind(by_letter[letter].lower()))
    return None


def _last(candidates: list[str], position) -> str:
    # max() keeps the first of equal positions, as the official parser's argmax does.
    return candidates[0] if len(candidates) == 1 else max(candidates, key=position)
