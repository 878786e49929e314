"""`InMemoryLoader`: a resumable micro-batch source over packed batches held in memory.

For data that fits in memory: tests, notebooks, small experiments built with
`PackedBatch.from_samples`. It follows the `source.MicroBatchSource` contract exactly: each
`iter()` is the rest of one epoch, epochs are seeded permutations (NumPy's generator keyed by
(seed, epoch), independent of the global RNG, so the order does not depend on what else drew
random numbers), and the state is two integers, the epoch and the position inside it.

The position advances when a micro-batch is handed out, so `state_dict()` taken after a step
resumes at the next micro-batch, whatever the caller did with the ones before.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ov_model.packing import PackedBatch
from ov_train.errors import TrainingError
from ov_train.source import MicroBatch, supervised_targets


@dataclass(frozen=True)
class PackedMicroBatch:
    """A micro-batch: one packed row (what the loaders yield)."""

    batch: PackedBatch

    @property
    def num_tokens(self) -> int:
        """Tokens in the row."""
        return int(self.batch.input_ids.numel())

    @property
    def num_supervised(self) -> int:
        """Supervised next-token targets in the row."""
        return supervised_targets(self.batch)


class InMemoryLoader:
    """Epochs over a list of micro-batches, shuffled per epoch from `seed` (see module doc)."""

    def __init__(self, micro_batches: Sequence[MicroBatch], *, seed: int = 0, shuffle: bool = True):
        if not micro_batches:
            raise TrainingError("InMemoryLoader needs at least one micro-batch")
        self.micro_batches = list(micro_batches)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return len(self.micro_batches)

    def order(self, epoch: int) -> list[int]:
        """Indices of the micro-batches in the order of `epoch`."""
        if not self.shuffle:
            return list(range(len(self.micro_batches)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self)).tolist()

    def __iter__(self) -> Iterator[MicroBatch]:
        order = self.order(self.epoch)
        while self.position < len(order):
            index = order[self.position]
            self.position += 1
            yield self.micro_batches[index]
        self.epoch += 1
        self.position = 0

    def upcoming_supervised_targets(self, count: int) -> list[int]:
        """Supervised targets of the next `count` micro-batches, across epoch ends."""
        counts: list[int] = []
        epoch, position = self.epoch, self.position
        while len(counts) < count:
            order = self.order(epoch)
            take = order[position : position + count - len(counts)]
            counts.extend(supervised_targets(self.micro_batches[i].batch) for i in take)
            epoch, position = epoch + 1, 0
        return counts

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the position inside it (plus the size and seed, checked on load)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "size": len(self),
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; refuses a state of another dataset size or seed."""
        expected = {"size": len(self), "seed": self.seed, "shuffle": self.shuffle}
        found = {key: state.get(key) for key in expected}
        if found != expected:
            raise TrainingError(
                f"loader state is for {found}, this loader is {expected}: not the same data"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
