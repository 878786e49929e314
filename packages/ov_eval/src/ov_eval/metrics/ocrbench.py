"""OCRBench's scoring rule: an item is right when one of its answers occurs in the prediction.

OCRBench (Liu et al.) has 1000 items in ten categories; the benchmark score is the number of right
items (often printed as a percentage, e.g. 829 -> 82.9). An item is right when, for at least one
reference answer, the answer is a substring of the prediction after this normalisation:

- handwritten mathematical expressions (items whose source dataset is "HME100k"): newlines and
  spaces are removed from both strings, and the comparison is case-sensitive (LaTeX cares);
- every other item: both strings are lower-cased and trimmed, and newlines become spaces.

This is the rule of the official OCRBench scorer and of current lmms-eval (older lmms-eval
versions lower-cased HME100k predictions too, which wrongly failed answers with capitals).
"""

from collections.abc import Sequence

HME_DATASET = "HME100k"


def ocrbench_match(prediction: str, answers: Sequence[str], dataset: str) -> float:
    """Return 1.0 if an answer occurs in `prediction` under OCRBench's rule for `dataset`."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("OCRBench scoring needs at least one reference answer")
    prediction = prediction.strip()
    if dataset == HME_DATASET:
        predicted = prediction.replace("\n", " ").replace(" ", "")
        normalised = [answer.strip().replace("\n", " ").replace(" ", "") for answer in answers]
    else:
        predicted = prediction.lower().replace("\n", " ")
        normalised = [answer.lower().strip().replace("\n", " ") for answer in answers]
    return 1.0 if any(answer in predicted for answer in normalised) else 0.0
