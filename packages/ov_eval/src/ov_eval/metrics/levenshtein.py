"""Levenshtein (edit) distance: the number of single-character insertions, deletions and
substitutions that turn one string into the other.

Pure Python on purpose: the metrics that need it (ANLS, MathVista's nearest-option fallback)
compare short answers, a few thousand times per benchmark, so a C extension would be a dependency
without a measurable gain. The classic two-row dynamic programme costs O(len(a) * len(b)) time and
O(min(len(a), len(b))) memory.
"""


def levenshtein_distance(a: str, b: str) -> int:
    """Return the edit distance between `a` and `b` (0 when they are equal)."""
    if len(a) < len(b):
        a, b = b, a
    # `b` is now the shorter string: one row of len(b) + 1 cells.
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            substitution = previous[j - 1] + (char_a != char_b)
            current.append(min(previous[j] + 1, current[j - 1] + 1, substitution))
        previous = current
    return previous[-1]
