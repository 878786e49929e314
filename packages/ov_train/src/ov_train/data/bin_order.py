"""The global micro-batch stream: which bins form each micro-batch, and which rank reads which.

Everything here is a pure function of (bin token counts, seed, epoch, token budget), computed
identically in every process and independent of the world size, so no process ever has to tell
another what it read, and a run resumed on another number of ranks continues the same stream:

- **epoch order**: a permutation of all bins drawn from numpy's PCG64 seeded with
  (seed, epoch): every epoch is a new order, the same for every rank and every rerun;
- **micro-batches**: the epoch's bins, in order, are cut greedily: a micro-batch takes
  consecutive bins while their tokens fit `budget`, and always at least one (a bin larger than
  the budget is a micro-batch of its own; bins are never split). Epoch e's micro-batches are
  numbered 0 .. n_e - 1;
- **global stream**: the epochs' micro-batches concatenated, epoch 0 first. A position in it is
  a `StreamPosition` (epoch, index);
- **ranks**: with W data-parallel ranks, each round of the world reads W consecutive global
  micro-batches, rank r the r-th of them: from a world position p, rank r reads p + r,
  p + r + W, p + r + 2W, ... So an optimizer step of G micro-batches per rank consumes W x G
  consecutive global micro-batches, whatever W is, and the world's position after any number of
  rounds is one number pair that every rank agrees on: the loader state. Resuming that state at
  another world size W' continues at the same global micro-batch (rank r' reads p + r').

Trade-offs: a rank's share of an epoch is whatever global indices fall to it, so around an
epoch's end some ranks already read the next epoch's first micro-batches (the stream never
pauses at epoch ends, so no rank waits for data and no micro-batch is dropped or repeated).
Micro-batches are cut from the global order, so ranks' micro-batches have different token
counts; the trainer normalises by the whole step's supervised targets, not per rank. Cutting
an epoch costs one pass over its bins (0.5 s per million bins measured on a shared 2-core
machine) in every process that needs it; `EpochPlans` keeps the last few.
"""

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


def epoch_order(num_bins: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation (int64) of `range(num_bins)` used in `epoch`."""
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return generator.permutation(num_bins).astype(np.int64)


def micro_batch_spans(tokens: np.ndarray, budget: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """Greedy [begin, end) spans over `tokens[start:]`: as many consecutive entries as fit in
    `budget`, at least one."""
    begin, total = start, 0
    for position, size in enumerate(tokens[start:].tolist(), start):
        if position > begin and total + size > budget:
            yield begin, position
            begin, total = position, 0
        total += size
    if begin < len(tokens):
        yield begin, len(tokens)


@dataclass(frozen=True, order=True)
class StreamPosition:
    """A place in the global micro-batch stream: micro-batch `index` of `epoch`."""

    epoch: int
    index: int


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One epoch's micro-batches: micro-batch m is bins `order[cuts[m]:cuts[m + 1]]`."""

    epoch: int
    order: np.ndarray
    """int64 (bins,): the epoch's permutation of the bins."""
    cuts: np.ndarray
    """int64 (micro-batches + 1,): where each micro-batch starts in `order`."""

    def __len__(self) -> int:
        return int(self.cuts.shape[0] - 1)

    def bins(self, index: int) -> np.ndarray:
        """The bins of micro-batch `index`, in order."""
        return self.order[self.cuts[index] : self.cuts[index + 1]]


def plan_epoch(tokens: np.ndarray, seed: int, epoch: int, budget: int) -> EpochPlan:
    """Epoch `epoch`'s order and greedy micro-batch cuts (see the module docstring)."""
    order = epoch_order(int(tokens.shape[0]), seed, epoch)
    starts = [begin for begin, _ in micro_batch_spans(tokens[order], budget)]
    cuts = np.asarray([*starts, int(order.shape[0])], dtype=np.int64)
    return EpochPlan(epoch, order, cuts)


class EpochPlans:
    """The epoch plans of one data order (bin tokens, seed, budget), the last few cached, and
    position arithmetic over the global stream they form."""

    def __init__(self, tokens: np.ndarray, seed: int, budget: int, keep: int = 3) -> None:
        if tokens.shape[0] == 0:
            raise ValueError("the global stream needs at least one bin")
        self.tokens = tokens
        self.seed = seed
        self.budget = budget
        self._keep = keep
        self._plans: OrderedDict[int, EpochPlan] = OrderedDict()

    def __getitem__(self, epoch: int) -> EpochPlan:
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self._plans[epoch] = plan_epoch(self.tokens, self.seed, epoch, self.budget)
            while len(self._plans) > self._keep:
                self._plans.popitem(last=False)
        self._plans.move_to_end(epoch)
        return plan

    def advance(self, position: StreamPosition, steps: int) -> StreamPosition:
        """The position `steps` micro-batches after `position`, across epoch ends."""
        epoch, index = position.epoch, position.index + steps
        while index >= len(self[epoch]):
            index -= len(self[epoch])
            epoch += 1
        return StreamPosition(epoch, index)

    def rank_positions(
        self, world: StreamPosition, rank: int, world_size: int
    ) -> Iterator[StreamPosition]:
        """Rank `rank`'s micro-batches from world position `world` on, forever."""
        position = self.advance(world, rank)
        while True:
            yield position
            position = self.advance(position, world_size)
