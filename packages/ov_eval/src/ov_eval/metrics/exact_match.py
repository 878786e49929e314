"""Exact match as lmms-eval scores AI2D, RealWorldQA and similar tasks.

lmms-eval's `exact_match` metric (a port of Hugging Face `evaluate`'s) lower-cases both strings
when asked to ignore case, deletes every ASCII punctuation character (`string.punctuation`) when
asked to ignore punctuation, and then compares. It does not trim whitespace, and neither does this
function: "B" matches "(B)" and "b." but not " B" or "B\\n". The task files run their own answer
extraction (for example "B. sun" -> "B") before calling it.
"""

import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(
    prediction: str, answer: str, *, ignore_case: bool = True, ignore_punctuation: bool = True
) -> float:
    """Return 1.0 if `prediction` equals `answer` after the chosen normalisations, else 0.0."""
    if ignore_case:
        prediction, answer = prediction.lower(), answer.lower()
    if ignore_punctuation:
        prediction, answer = prediction.translate(_PUNCTUATION), answer.translate(_PUNCTUATION)
    return 1.0 if prediction == answer else 0.0
