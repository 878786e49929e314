"""Exact blocked top-K retrieval with a running merge and deterministic tie-breaking.

For a block of images X (B x d) and the concepts C (V x d), both L2-normalised, the top-K concepts
of each image by cosine similarity are found without ever holding the B x V score matrix: the
concepts are walked in blocks of `concept_block` rows, each block's scores S = X C_b^T are reduced
to a few candidates per image, and the candidates are merged into a running top-K. Memory is
B x concept_block scores plus B x K state, whatever V is.

Ties are broken by concept id (lower wins), so the result is one well-defined list: the first K of
all V block scores sorted by (-score, id), whichever `concept_block` or `tie_margin` is used.

What "exact" means: exact with respect to the block scores, the numbers the matmul
`X @ C_b.T` produced for that block. A different block width or image-block height may run another
matmul kernel, whose fp32 sums can differ in the last bit; two concepts whose true cosines are
closer than that rounding (about 1e-7 in fp32, 4e-3 in bf16) can then swap places. Nothing is
approximate beyond that: no candidate is dropped, no score is recomputed differently. This is why
`assign` pins `image_block`, `concept_block`, precision and device in its resume check.

1. Per block, `torch.topk` takes the M = K + `tie_margin` largest scores. Its order among equal
   scores is unspecified, so the candidates are re-sorted by (-score, id) with two cheap sorts on
   B x M elements (by id, then a stable sort by score).
2. If the M-th candidate still equals the K-th, the tie group at the boundary may continue outside
   the candidates, and some of its lower ids may have been cut. Those rows ("risky": rare with
   float scores, common only for duplicated vectors) are redone exactly: each score is mapped to an
   integer key (2 above the boundary, 1 at it, 0 below, times the block width, plus the reversed
   column), so one integer top-K returns all the larger scores and the lowest-id ties.
3. Running merge: because blocks are visited in increasing id order, every running id is lower than
   every new candidate id, so a stable sort by score of [running, candidates] already orders ties by
   id; its first K are the new running top-K.

No host synchronisation per concept block: finding the risky rows with `nonzero` would make the host
wait for every block (a GPU stall per block). Instead each block redoes a fixed number of rows
(`exact_rows`, default 64: the rows `topk` ranks first by their risky flag) with the exact path
and keeps the exact result only where the row was risky, all with fixed shapes on the device. A
device flag records whether any block had more risky rows than that; `blocked_topk` reads it once,
at the end (one sync per call, i.e. per image block), and only then recomputes the whole call
with the per-block path (`block_candidates`, identical results, same matmul shapes). The fixed part
costs `exact_rows` x block width integer work per block, about 1.6% of a 4,096-row block's scores.

Cost: the matmul (2 B V d flops) dominates for d >= 256; top-K reads the scores once more. bf16 on
CUDA halves the bytes of both; scores are then bf16-rounded (about 3 significant digits), so ranks
within ~0.004 of each other follow bf16 values and, on ties, ids. fp32 on CPU is exact with respect
to the fp32 block scores.
"""

import torch

DEFAULT_TIE_MARGIN = 8
DEFAULT_EXACT_ROWS = 64
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


def block_candidates_deferred(
    scores: torch.Tensor,
    first_id: int,
    k: int,
    tie_margin: int = DEFAULT_TIE_MARGIN,
    exact_rows: int = DEFAULT_EXACT_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`block_candidates` without a host sync: fixed shapes only, whatever the data.

    Returns (float32 scores, int64 ids, overflow): overflow is a 0-d bool tensor on the device, True
    when more than `exact_rows` rows were risky, i.e. when some risky row may be wrong and the
    caller must redo the block with `block_candidates`.
    """
    if tie_margin < 1:
        raise ValueError(f"tie_margin must be >= 1 to detect boundary ties, got {tie_margin}")
    if exact_rows < 1:
        raise ValueError(f"exact_rows must be >= 1, got {exact_rows}")
    rows, width = scores.shape
    kept = min(k, width)
    wanted = min(kept + tie_margin, width)
    values, columns = torch.topk(scores, wanted, dim=1, largest=True, sorted=True)
    overflow = torch.zeros((), dtype=torch.bool, device=scores.device)
    risky = values[:, wanted - 1] == values[:, kept - 1] if wanted > kept else None
    values, columns = sort_by_score_then_id(values.float(), columns)
    values, columns = values[:, :kept].contiguous(), columns[:, :kept].contiguous()
    if risky is not None:  # decided by shapes, not by data
        chosen = min(exact_rows, rows)
        picked = torch.topk(risky.to(torch.int32), chosen).indices  # every risky row if <= chosen
        exact_values, exact_columns = _exact_with_ties(
            scores[picked], values[picked, kept - 1], kept
        )
        use = risky[picked][:, None]
        values[picked] = torch.where(use, exact_values, values[picked])
        columns[picked] = torch.where(use, exact_columns, columns[picked])
        overflow = risky.sum() > chosen
    return values, columns + first_id, overflow


def blocked_topk_deferred(
    images: torch.Tensor,
    concepts: torch.Tensor,
    k: int,
    concept_block: int = 16384,
    tie_margin: int = DEFAULT_TIE_MARGIN,
    exact_rows: int = DEFAULT_EXACT_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The blocked top-k, queued on the device without any host sync.

    Returns (scores, ids, overflow); the result is exact only where `overflow` (a 0-d bool tensor)
    is False. `blocked_topk` checks it and falls back; call this directly only to overlap work.
    """
    _check_arguments(images, concepts, k, concept_block)
    running = None
    overflow = torch.zeros((), dtype=torch.bool, device=images.device)
    for first in range(0, concepts.shape[0], concept_block):
        scores = images @ concepts[first : first + concept_block].T
        values, ids, block_overflow = block_candidates_deferred(
            scores, first, k, tie_margin, exact_rows
        )
        running = merge_running(running, (values, ids), k)
        overflow = overflow | block_overflow
    assert running is not None
    return running[0], running[1], overflow


def blocked_topk(
    images: torch.Tensor,
    concepts: torch.Tensor,
    k: int,
    concept_block: int = 16384,
    tie_margin: int = DEFAULT_TIE_MARGIN,
    exact_rows: int = DEFAULT_EXACT_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k concepts of each image row by dot product, best first, ties by lower concept id.

    `images` (B x d) and `concepts` (V x d) must share dtype and device; no B x V matrix is formed.
    Returns (float32 scores, int64 ids), each B x k: the first k of each row's block scores sorted
    by (-score, id), exactly (see the module docstring for what the block scores are). One host
    sync per call, none per concept block.
    """
    scores, ids, overflow = blocked_topk_deferred(
        images, concepts, k, concept_block, tie_margin, exact_rows
    )
    if bool(overflow):  # the only host sync: more boundary ties than the fixed exact rows
        return blocked_topk_per_block(images, concepts, k, concept_block, tie_margin)
    return scores, ids


def blocked_topk_per_block(
    images: torch.Tensor,
    concepts: torch.Tensor,
    k: int,
    concept_block: int = 16384,
    tie_margin: int = DEFAULT_TIE_MARGIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result as `blocked_topk`, deciding per block which rows need the exact path.

    Syncs with the host once per concept block (to find the risky rows); the fallback of
    `blocked_topk` when a block has more risky rows than its fixed exact rows.
    """
    _check_arguments(images, concepts, k, concept_block)
    running = None
    for first in range(0, concepts.shape[0], concept_block):
        scores = images @ concepts[first : first + concept_block].T
        running = merge_running(running, block_candidates(scores, first, k, tie_margin), k)
    assert running is not None
    return running


def _check_arguments(
    images: torch.Tensor, concepts: torch.Tensor, k: int, concept_block: int
) -> None:
    if images.ndim != 2 or concepts.ndim != 2 or images.shape[1] != concepts.shape[1]:
        raise ValueError(f"shapes {tuple(images.shape)} and {tuple(concepts.shape)} do not match")
    if not 1 <= k <= concepts.shape[0]:
        raise ValueError(f"k must be in 1..{concepts.shape[0]}, got {k}")
    if concept_block < 1:
        raise ValueError(f"concept_block must be >= 1, got {concept_block}")


def brute_force_topk(
    images: torch.Tensor, concepts: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the full score matrix, fully sorted by (-score, id). For tests and benchmarks."""
    scores = images @ concepts.T
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order).float(), order
