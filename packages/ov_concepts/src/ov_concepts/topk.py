"""Exact blocked top-K retrieval with a running merge and deterministic tie-breaking.

For a block of images X (B x d) and the concepts C (V x d), both L2-normalised, the top-K concepts
of each image by cosine similarity are found without ever holding the B x V score matrix: the
concepts are walked in blocks of `concept_block` rows, each block's scores S = X C_b^T are reduced
to a few candidates per image, and the candidates are merged into a running top-K. Memory is
B x concept_block scores plus B x K state, whatever V is.

Ties are broken by concept id (lower wins), so the result is one well-defined list, identical to a
brute-force "sort all V scores by (-score, id), keep K", whichever block sizes or kernels are used:

1. Per block, `torch.topk` takes the M = K + `tie_margin` largest scores. Its order among equal
   scores is unspecified, so the candidates are re-sorted by (-score, id) with two cheap sorts on
   B x M elements (by id, then a stable sort by score).
2. If the M-th candidate still equals the K-th, the tie group at the boundary may continue outside
   the candidates, and some of its lower ids may have been cut. Only those rows (rare with float
   scores, common only for duplicated vectors) are redone exactly: each score is mapped to an
   integer key (2 above the boundary, 1 at it, 0 below, times the block width, plus the reversed
   column), so one integer top-K returns all the larger scores and the lowest-id ties.
3. Running merge: because blocks are visited in increasing id order, every running id is lower than
   every new candidate id, so a stable sort by score of [running, candidates] already orders ties by
   id; its first K are the new running top-K.

Cost: the matmul (2 B V d flops) dominates for d >= 256; top-K reads the scores once more. bf16 on
CUDA halves the bytes of both; scores are then bf16-rounded (about 3 significant digits), so ranks
within ~0.004 of each other follow bf16 values and, on ties, ids. fp32 on CPU is exact with respect
to the fp32 scores.
"""

import torch

DEFAULT_TIE_MARGIN = 8
_EXACT_ROWS_PER_PASS = 256


def sort_by_score_then_id(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Order each row by descending score, ties by ascending id (ids distinct within a row)."""
    order = torch.argsort(ids, dim=1)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    order = torch.sort(-scores, dim=1, stable=True).indices
    return scores.gather(1, order), ids.gather(1, order)


def block_candidates(
    scores: torch.Tensor, first_id: int, k: int, tie_margin: int = DEFAULT_TIE_MARGIN
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-min(k, width) of a score block by (-score, id), sorted that way.

    Returns float32 scores and int64 concept ids (`first_id` + column).
    """
    if tie_margin < 1:
        raise ValueError(f"tie_margin must be >= 1 to detect boundary ties, got {tie_margin}")
    width = scores.shape[1]
    kept = min(k, width)
    wanted = min(kept + tie_margin, width)
    values, columns = torch.topk(scores, wanted, dim=1, largest=True, sorted=True)
    if wanted > kept:
        risky = torch.nonzero(values[:, wanted - 1] == values[:, kept - 1]).flatten()
    else:
        risky = torch.empty(0, dtype=torch.int64, device=scores.device)
    values, columns = sort_by_score_then_id(values.float(), columns)
    values, columns = values[:, :kept].contiguous(), columns[:, :kept].contiguous()
    if risky.numel():
        boundary = values[risky, kept - 1]
        for start in range(0, risky.numel(), _EXACT_ROWS_PER_PASS):
            part = risky[start : start + _EXACT_ROWS_PER_PASS]
            exact_values, exact_columns = _exact_with_ties(
                scores[part], boundary[start : start + _EXACT_ROWS_PER_PASS], kept
            )
            values[part], columns[part] = exact_values, exact_columns
    return values, columns + first_id


def _exact_with_ties(
    scores: torch.Tensor, boundary: torch.Tensor, kept: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`kept` of rows whose K-th score `boundary` is tied beyond the candidates."""
    width = scores.shape[1]
    boundary = boundary.to(scores.dtype)[:, None]
    level = (scores > boundary).to(torch.int64) * 2 + (scores == boundary).to(torch.int64)
    reversed_column = torch.arange(width - 1, -1, -1, device=scores.device, dtype=torch.int64)
    keys = level * width + reversed_column
    columns = torch.topk(keys, kept, dim=1).indices
    return sort_by_score_then_id(scores.gather(1, columns).float(), columns)


def merge_running(
    running: tuple[torch.Tensor, torch.Tensor] | None,
    candidates: tuple[torch.Tensor, torch.Tensor],
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge sorted candidates of a later (higher-id) block into the sorted running top-k."""
    if running is None:
        return candidates[0][:, :k], candidates[1][:, :k]
    scores = torch.cat([running[0], candidates[0]], dim=1)
    ids = torch.cat([running[1], candidates[1]], dim=1)
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


def blocked_topk(
    images: torch.Tensor,
    concepts: torch.Tensor,
    k: int,
    concept_block: int = 16384,
    tie_margin: int = DEFAULT_TIE_MARGIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k concepts of each image row by dot product, best first, ties by lower concept id.

    `images` (B x d) and `concepts` (V x d) must share dtype and device; no B x V matrix is formed.
    Returns (float32 scores, int64 ids), each B x k.
    """
    if images.ndim != 2 or concepts.ndim != 2 or images.shape[1] != concepts.shape[1]:
        raise ValueError(f"shapes {tuple(images.shape)} and {tuple(concepts.shape)} do not match")
    if not 1 <= k <= concepts.shape[0]:
        raise ValueError(f"k must be in 1..{concepts.shape[0]}, got {k}")
    if concept_block < 1:
        raise ValueError(f"concept_block must be >= 1, got {concept_block}")
    running = None
    for first in range(0, concepts.shape[0], concept_block):
        scores = images @ concepts[first : first + concept_block].T
        running = merge_running(running, block_candidates(scores, first, k, tie_margin), k)
    assert running is not None
    return running


def brute_force_topk(
    images: torch.Tensor, concepts: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the full score matrix, fully sorted by (-score, id). For tests and benchmarks."""
    scores = images @ concepts.T
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order).float(), order
