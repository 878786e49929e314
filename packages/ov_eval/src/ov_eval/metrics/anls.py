"""ANLS, the Average Normalised Levenshtein Similarity of DocVQA and InfographicVQA.

For one question, each reference answer gives a similarity 1 - d / L, where d is the edit distance
between the answer and the prediction after both are lower-cased, trimmed and have their inner
whitespace runs collapsed to one space, and L is the length of the longer of the two strings
*as given* (before that normalisation). The question scores the best similarity over its answers,
or 0 when that is below the threshold (0.5): a prediction that is more than half wrong is treated
as a wrong answer rather than a misspelt right one. The benchmark score is the mean over questions.

Two details follow the official scorer (the DocVQA/InfographicVQA RRC script, which lmms-eval
copies) rather than the paper's formula, so that numbers match the leaderboards to the last digit:
L is measured on the un-normalised strings, and a similarity of exactly the threshold is kept (the
paper writes "0 if NL >= 0.5"; the script zeroes only similarities strictly below 0.5).
"""

from collections.abc import Sequence

from ov_eval.metrics.levenshtein import levenshtein_distance


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Return the ANLS of `prediction` against the reference `answers` (a value in [0, 1]).

    Raises ValueError when `answers` is empty and TypeError when it is a bare string (a common
    slip that would otherwise compare the prediction with single characters).
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("ANLS needs at least one reference answer")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    predicted = _normalise(prediction)
    best = 0.0
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        distance = levenshtein_distance(_normalise(answer), predicted)
        similarity = 1.0 if length == 0 else 1.0 - distance / length
        best = max(best, similarity)
    return best if best >= threshold else 0.0
