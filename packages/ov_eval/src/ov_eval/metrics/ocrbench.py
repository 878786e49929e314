"""OCRBench's scoring rule: an item is right when one of its answers occurs in the prediction.

OCRBench (Liu et al.) has 1000 items in ten categories; the benchmark score is the number of right
items (often printed as a percentage, e.g. 829 -> 82.9). An item is right when, for at least one
reference answer, the answer is a substring of the prediction after this normalisation, exactly
as lmms-eval 0.7.3's `ocrbench_process_results` (tasks/ocrbench/utils.py) does it:

- handwritten mathematical expressions (items whose source dataset is "HME100k"): both strings
  are trimmed, newlines become spaces and then every space is removed; the comparison is
  case-sensitive (LaTeX cares);
- every other item: fullwidth ASCII (U+FF01..U+FF5E, e.g. "１２", "ＡＢＣ") is folded to ASCII and
  the ideographic space U+3000 to a space (lmms-eval's `_fold_fullwidth_ascii`, nothing broader
  such as NFKC), then both strings are lower-cased and trimmed, and newlines become spaces.

Only "\\n" becomes a space ("\\r" and tabs stay), and the answer is trimmed before its newlines
are replaced, in that order, as in the reference; the prediction is trimmed first (lmms-eval
trims every generated output before scoring).
"""

from collections.abc import Sequence

HME_DATASET = "HME100k"
_FULLWIDTH_FIRST, _FULLWIDTH_LAST = 0xFF01, 0xFF5E
_FULLWIDTH_OFFSET = 0xFEE0
_IDEOGRAPHIC_SPACE = "\u3000"


def fold_fullwidth_ascii(text: str) -> str:
    """`text` with fullwidth ASCII characters mapped to ASCII and U+3000 to a space."""
    folded = []
    for char in text:
        if _FULLWIDTH_FIRST <= ord(char) <= _FULLWIDTH_LAST:
            char = chr(ord(char) - _FULLWIDTH_OFFSET)
        elif char == _IDEOGRAPHIC_SPACE:
            char = " "
        folded.append(char)
    return "".join(folded)


def ocrbench_match(prediction: str, answers: Sequence[str], dataset: str) -> float:
    """Return 1.0 if an answer occurs in `prediction` under OCRBench's rule for `dataset`."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("OCRBench scoring needs at least one reference answer")
    prediction = prediction.strip()
    if dataset == HME_DATASET:
        predicted = prediction.strip().replace("\n", " ").replace(" ", "")
        normalised = [answer.strip().replace("\n", " ").replace(" ", "") for answer in answers]
    else:
        predicted = fold_fullwidth_ascii(prediction).lower().strip().replace("\n", " ")
        normalised = [
            fold_fullwidth_ascii(answer).lower().strip().replace("\n", " ") for answer in answers
        ]
    return 1.0 if any(answer in predicted for answer in normalised) else 0.0
