"""Concept frequencies and the rules that turn them into per-image weights.

count_j is the number of images whose top-K holds concept j (an image counts once per concept).
Each image's weight combines the inverse frequencies count_j^-alpha of its concepts S_i:

- `mean` (default): mean_j count_j^-alpha. An image is as rare as its concepts are on average, so
  one rare entity lifts an image of common background concepts, but K-1 common ones dilute it; the
  weight does not grow with the number of concepts kept (images whose min-similarity filter left
  fewer concepts are not favoured).
- `sum`: sum_j count_j^-alpha. Like mean, but images with more surviving concepts weigh more.
- `max`: max_j count_j^-alpha. Only the rarest concept matters: the strongest push towards the tail,
  and the most sensitive to a single spurious rare match.
- `metaclip`: MetaCLIP's curation (Xu et al. 2023). Each concept passes with probability
  p_j = min(1, t / count_j); an image is kept if any of its concepts passes, i.e. with probability
  P_i = 1 - prod_j (1 - p_j). The weight is P_i. Concepts rarer than t are never thinned; a concept
  with count c contributes about t images whatever c is. `alpha` does not apply. When t is not
  given it is solved (bisection on log t, one pass over the assignments per step) so that the
  expected kept count sum_i P_i equals the target, which is how MetaCLIP chose t for a target size.

alpha tempers the inverse frequency: 0 gives uniform weights (plain random sampling), 1 is the
classic inverse frequency, larger pushes harder towards the tail.

Images with no concept (every score below the minimum similarity) get weight 0 and are never drawn,
as MetaCLIP drops pairs that match no metadata entry.
"""

import math
from typing import Literal

import numpy as np

from ov_concepts.errors import BalanceError
from ov_concepts.progress import progress_bar
from ov_concepts.sampling import REDUCTION_BLOCK, block_sum, blocks, exact_total

Rule = Literal["mean", "sum", "max", "metaclip"]
RULES: tuple[Rule, ...] = ("mean", "sum", "max", "metaclip")
_BISECTION_STEPS = 60
_RELATIVE_TOLERANCE = 1e-6


def _check_ids(block: np.ndarray, first_row: int, concepts: int) -> None:
    low, high = int(block.min()), int(block.max())
    if low < -1 or high >= concepts:
        bad = np.flatnonzero(((block < -1) | (block >= concepts)).any(axis=1))[0]
        raise BalanceError(
            f"assignment row {first_row + bad} holds concept id {block[bad].tolist()} outside "
            f"-1..{concepts - 1}"
        )


def concept_counts(
    ids: np.ndarray, concepts: int, chunk_rows: int, *, progress: bool = False, desc: str = "tally"
) -> np.ndarray:
    """Images per concept (int64, length `concepts`) over assignment rows `ids` (images x K)."""
    counts = np.zeros(concepts, dtype=np.int64)
    with progress_bar(len(ids), desc, progress) as bar:
        for start in range(0, len(ids), chunk_rows):
            block = np.asarray(ids[start : start + chunk_rows])
            _check_ids(block, start, concepts)
            counts += np.bincount(block[block >= 0], minlength=concepts)
            bar.update(len(block))
    return counts


def selection_counts(
    ids: np.ndarray, selected: np.ndarray, concepts: int, chunk_rows: int, *, progress: bool = False
) -> np.ndarray:
    """Images per concept over the selected rows, counting a row once per time it was drawn."""
    counts = np.zeros(concepts, dtype=np.int64)
    with progress_bar(len(selected), "tally selection", progress) as bar:
        for start in range(0, len(selected), chunk_rows):
            rows = np.asarray(selected[start : start + chunk_rows])
            block = np.asarray(ids[rows])
            counts += np.bincount(block[block >= 0], minlength=concepts)
            bar.update(len(rows))
    return counts


def concept_table(
    counts: np.ndarray, rule: Rule, alpha: float, threshold: float | None
) -> np.ndarray:
    """Per-concept factor: count^-alpha, or MetaCLIP's pass probability min(1, t / count)."""
    safe = np.maximum(counts, 1).astype(np.float64)
    if rule == "metaclip":
        if threshold is None:
            raise BalanceError("the metaclip rule needs a threshold")
        table = np.minimum(1.0, threshold / safe)
    else:
        table = safe ** (-alpha)
    return np.where(counts > 0, table, 0.0)


def image_weights(ids: np.ndarray, table: np.ndarray, rule: Rule) -> np.ndarray:
    """Weights (float64) of the images whose top-K rows are `ids`, from a `concept_table`.

    Columns are combined one at a time in a fixed order, so a row's weight never depends on which
    other rows share its block.
    """
    ids = np.asarray(ids)
    valid = ids >= 0
    factors = np.where(valid, table[np.where(valid, ids, 0)], 0.0)
    if rule == "metaclip":
        missed = np.ones(len(ids))
        for column in range(ids.shape[1]):
            missed = missed * np.where(valid[:, column], 1.0 - factors[:, column], 1.0)
        return 1.0 - missed
    if rule == "max":
        return factors.max(axis=1, initial=0.0)
    total = np.zeros(len(ids))
    for column in range(ids.shape[1]):
        total = total + factors[:, column]
    if rule == "sum":
        return total
    kept = valid.sum(axis=1)
    return np.divide(total, kept, out=np.zeros(len(ids)), where=kept > 0)


def expected_metaclip_size(
    ids: np.ndarray, counts: np.ndarray, threshold: float, chunk_rows: int
) -> float:
    """sum_i P_i: the expected size of MetaCLIP's Bernoulli curation at threshold t."""
    table = concept_table(counts, "metaclip", 1.0, threshold)
    partials = []
    for start in range(0, len(ids), chunk_rows):
        weights = image_weights(ids[start : start + chunk_rows], table, "metaclip")
        partials.extend(block_sum(weights[a:b]) for a, b in blocks(len(weights)))
    return exact_total(partials)


def solve_metaclip_threshold(
    ids: np.ndarray, counts: np.ndarray, target: int, chunk_rows: int, *, progress: bool = False
) -> float:
    """The t at which MetaCLIP's expected kept count equals `target` (bisection on log t)."""
    if chunk_rows % REDUCTION_BLOCK:
        raise BalanceError(f"chunk_rows must be a multiple of {REDUCTION_BLOCK}")
    high = float(counts.max())
    if high <= 0:
        raise BalanceError("no image has a concept: nothing to balance")
    if expected_metaclip_size(ids, counts, high, chunk_rows) <= target:
        return high
    low = high
    while expected_metaclip_size(ids, counts, low, chunk_rows) > target:
        low /= 1024.0
    with progress_bar(_BISECTION_STEPS, "metaclip threshold", progress, unit="step") as bar:
        for _ in range(_BISECTION_STEPS):
            middle = math.sqrt(low * high)
            size = expected_metaclip_size(ids, counts, middle, chunk_rows)
            bar.update(1)
            if abs(size - target) <= _RELATIVE_TOLERANCE * target:
                return middle
            if size > target:
                high = middle
            else:
                low = middle
    return math.sqrt(low * high)
