"""The order in which a rank sees the packed bins, and how they group into micro-batches.

Everything here is a pure function of (number of bins, bin token counts, seed, epoch, rank,
world size, token budget), computed identically in every process, so no process ever has to
tell another what it read:

- **epoch order**: a permutation of all bins drawn from numpy's PCG64 seeded with
  (seed, epoch): every epoch is a new order, the same for every rank and every rerun;
- **rank split**: rank r of W takes the permuted positions r, r + W, r + 2W, ...; the ranks
  cover every bin exactly once per epoch, and hold floor or ceil(bins / W) bins each;
- **micro-batches**: the rank's bins, in order, are cut greedily: a micro-batch takes
  consecutive bins while their tokens fit `budget`, and always at least one (a bin larger than
  the budget is a micro-batch of its own; bins are never split). The cut depends only on the
  tokens from where it starts, so resuming at a micro-batch boundary gives the same cuts as never
  stopping.

Trade-off: micro-batches are built per rank, so ranks may run different numbers of micro-batches
per epoch (their bins differ). A trainer that runs a fixed number of steps on every rank and
continues into the next epoch when one ends (as `ov_train.source.StepBatches` does) never waits
for data; the ranks' epoch counters may then differ by one around an epoch's end.
"""

from collections.abc import Iterator

import numpy as np


def epoch_order(num_bins: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation (int64) of `range(num_bins)` used in `epoch`."""
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return generator.permutation(num_bins).astype(np.int64)


def rank_bins(num_bins: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """The bins rank `rank` reads in `epoch`, in order."""
    return epoch_order(num_bins, seed, epoch)[rank::world_size]


def bins_per_rank(num_bins: int, rank: int, world_size: int) -> int:
    """How many bins rank `rank` reads per epoch."""
    return len(range(rank, num_bins, world_size))


def micro_batch_spans(tokens: np.ndarray, budget: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """Greedy [begin, end) spans over `tokens[start:]`: as many consecutive entries as fit in
    `budget`, at least one."""
    begin, total = start, 0
    for position in range(start, len(tokens)):
        size = int(tokens[position])
        if position > begin and total + size > budget:
            yield begin, position
            begin, total = position, 0
        total += size
    if begin < len(tokens):
        yield begin, len(tokens)
