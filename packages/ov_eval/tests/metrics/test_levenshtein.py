"""levenshtein_distance on hand-counted edits."""

import pytest

from ov_eval.metrics import levenshtein_distance


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "abc", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("abc", "acb", 2),  # no transpositions in plain Levenshtein
        ("über", "uber", 1),
        ("2018", "2019", 1),
    ],
)
def test_distance_counts_insertions_deletions_and_substitutions(a, b, distance):
    assert levenshtein_distance(a, b) == distance
    assert levenshtein_distance(b, a) == distance
