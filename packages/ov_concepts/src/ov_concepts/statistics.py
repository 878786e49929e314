"""Statistics of a concept-frequency vector: how concentrated is the corpus on a few concepts?

All statistics are over the whole vocabulary of V concepts, zeros included, so "before" and "after"
share one denominator even when balancing changes which concepts appear:

- coverage: concepts with at least one image, and that count over V;
- entropy H (nats) of the share distribution p_j = count_j / sum(count), and the effective number of
  concepts exp(H): the size of a uniform vocabulary with the same entropy (V if perfectly flat, 1 if
  one concept takes everything);
- Gini coefficient of the counts (0 = every concept equally frequent, -> 1 = one concept holds all);
- share of all assignments held by the top 1% most frequent concepts (ceil(V/100) of them) and by
  the bottom 50% (floor(V/2) least frequent, zeros included).
"""

import math

import msgspec
import numpy as np


class ConceptStats(msgspec.Struct, frozen=True):
    """Concentration statistics of one concept-frequency vector."""

    concepts: int
    assignments: int
    covered: int
    coverage: float
    entropy: float
    effective_concepts: float
    gini: float
    top1_share: float
    bottom50_share: float
    max_count: int


def concept_stats(counts: np.ndarray) -> ConceptStats:
    """Statistics of `counts` (one non-negative integer per vocabulary concept)."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty vector, got shape {counts.shape}")
    if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
        raise ValueError("counts must be non-negative integers")
    size = counts.size
    total = int(counts.sum())
    covered = int(np.count_nonzero(counts))
    if total == 0:
        return ConceptStats(size, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    ascending = np.sort(counts).astype(np.float64)
    shares = ascending[ascending > 0] / total
    entropy = float(-(shares * np.log(shares)).sum())
    ranks = np.arange(1, size + 1, dtype=np.float64)
    gini = float(2.0 * (ranks * ascending).sum() / (size * total) - (size + 1) / size)
    top = max(1, math.ceil(size / 100))
    bottom = size // 2
    return ConceptStats(
        concepts=size,
        assignments=total,
        covered=covered,
        coverage=covered / size,
        entropy=entropy,
        effective_concepts=math.exp(entropy),
        gini=max(0.0, gini),
        top1_share=float(ascending[size - top :].sum() / total),
        bottom50_share=float(ascending[:bottom].sum() / total),
        max_count=int(ascending[-1]),
    )
