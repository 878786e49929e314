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

`extract_mcq_answer` is the other rule: lmms-eval's shared extractor
(`lmms_eval.tasks._task_utils.mcq_extract.extract_mcq_answer`, lmms-eval 0.7.3), which MMStar,
RealWorldQA and MMBench's offline path use. It collects every letter it can read, each with a
format and a position, and keeps the best by (format priority, position), highest first:

- 10, "start": the trimmed text starts with the letter not followed by another letter ("B",
  "B. cat", "B)"); 9, "end": it ends with the letter not preceded by a letter;
- 7, "phrase": after the first occurrence (case-insensitive) of each answer phrase ("the answer
  is", "i choose", "答案是", ...), the first occurrence of each letter anywhere after it (the
  letter itself is matched case-sensitively, even inside a word);
- 6 "(B)", 5 "B.", 4 "B:", 3 "B)", 2 "B " (letter and space), each at its last occurrence;
- 0, only when nothing else was found: the last occurrence of a letter anywhere ("DATA" reads
  as "A", the letter latest in the text).

The text is first trimmed of whitespace, then of , . ! ? ; : ' " at both ends, and padded with
a space on each side. Nothing found gives the empty string.
"""

from collections.abc import Sequence

_STRIPPED_EDGE_CHARACTERS = (",", ".", "!", "?", ";", ":", "'")
_MIN_WORDS_FOR_TEXT_MATCH = 6

_MCQ_DEFAULT_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
_MCQ_STRIPPED_EDGE_CHARACTERS = (",", ".", "!", "?", ";", ":", "'", '"')
_MCQ_ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
# Letter forms (template, priority) searched at their last occurrence.
_MCQ_MARKED_FORMS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))
_MCQ_PRIORITY_PHRASE = 7
_MCQ_PRIORITY_START = 10
_MCQ_PRIORITY_END = 9
_MCQ_PRIORITY_FALLBACK = 0


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


def extract_mcq_answer(response: str, letters: Sequence[str] | None = None) -> str:
    """The option letter lmms-eval's `extract_mcq_answer` reads from `response` ("" if none).

    `letters` are the valid letters (default A-H, as in lmms-eval).
    """
    if not response or not response.strip():
        return ""
    choices = tuple(letters) if letters else _MCQ_DEFAULT_LETTERS
    text = response.strip()
    for character in _MCQ_STRIPPED_EDGE_CHARACTERS:
        text = text.strip(character)
    text = f" {text} "

    # (letter, position, priority); the sort below is stable, as lmms-eval's.
    candidates: list[tuple[str, int, int]] = []
    for template, priority in _MCQ_MARKED_FORMS:
        for letter in choices:
            marked = template.format(letter)
            if marked in text:
                candidates.append((letter, text.rfind(marked), priority))
    lowered = text.lower()
    for phrase in _MCQ_ANSWER_PHRASES:
        found = lowered.find(phrase)
        if found != -1:
            for letter in choices:
                position = text.find(letter, found + len(phrase))
                if position != -1:
                    candidates.append((letter, position, _MCQ_PRIORITY_PHRASE))
    stripped = text.strip()
    for letter in choices:
        if stripped.startswith(letter) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((letter, 0, _MCQ_PRIORITY_START))
    for letter in choices:
        if stripped.endswith(letter) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((letter, len(text) - 1, _MCQ_PRIORITY_END))
    if not candidates:
        for letter in choices:
            if letter in text:
                candidates.append((letter, text.rfind(letter), _MCQ_PRIORITY_FALLBACK))
    if not candidates:
        return ""
    candidates.sort(key=lambda candidate: (candidate[2], candidate[1]), reverse=True)
    return candidates[0][0]
