"""What the training loop reads: micro-batches from any resumable source, one step at a time.

The loop depends on two small protocols, not on a loader class: a `MicroBatch` holds an
`ov_model.PackedBatch` (one packed row of several samples, no padding), and a
`MicroBatchSource` is iterable and has `state_dict()` / `load_state_dict()` that resume at the
exact next micro-batch. The packed-shard loader of `ov_train.data` and the in-memory
`memory_loader.InMemoryLoader` are both sources.

Contract with a source:
- `iter(source)` yields the rest of the current epoch from the position its state says, then
  ends; the next `iter(source)` is the next epoch (an epoch may be empty when a resumed state
  stands at its very end). A data-parallel source yields this rank's share of the epoch (the
  packed loader: its micro-batches of the global stream, see `ov_train.data.loader`), so ranks'
  epochs may differ in length by a micro-batch; `StepBatches` continues across epoch ends;
- `state_dict()` describes the position after the last micro-batch yielded, and is made of
  JSON values (dict, list, str, int, float, bool, None): a checkpoint stores it as JSON.
  The packed loader's state is the world's position, the same on every rank after a step and
  valid at any world size.

The loss of a step is normalised by the supervised targets of the whole step (over all ranks),
which must be known before the first backward. A source therefore also answers
`upcoming_supervised_targets(n)`: the counts of the next `n` micro-batches it will yield, read
from metadata (the packed data's bin table, or batches already in memory) without building them.
`StepBatches.next_step()` returns a `StepPlan`: those counts, and the micro-batches themselves
drawn one at a time as the step consumes them, so host memory holds one micro-batch (plus what
loader workers prefetch), whatever `grad_accumulation` is. A step never depends on how epochs
fall: it continues into the next epoch when one ends.

`supervised_targets` counts what the model will count: labels shifted by one inside each sample
(never across a boundary), so a sample's first token is never a target. Counting it here from
the batch rather than trusting a loader's field keeps the normaliser and the model's loss sum
about the same tokens.

`open_packed_shards` opens the real source, the packed-shard loader of `ov_train.data`.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ov_model.packing import IGNORE_INDEX, PackedBatch, shifted_targets
from ov_train.errors import RecipeError, TrainingError

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ov_model.processor import OVProcessor
    from ov_train.config import Recipe
    from ov_train.parallel import World


@runtime_checkable
class MicroBatch(Protocol):
    """One micro-batch: several samples packed into one row."""

    @property
    def batch(self) -> PackedBatch:
        """The packed row, as `LlavaOV.forward(**batch.model_inputs())` takes it."""
        ...


@runtime_checkable
class MicroBatchSource(Protocol):
    """An iterable of micro-batches whose position can be saved and restored."""

    def __iter__(self) -> Iterator[MicroBatch]:
        """The rest of the current epoch."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The position after the last micro-batch yielded (JSON values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position `state_dict` returned."""
        ...

    def upcoming_supervised_targets(self, count: int) -> list[int]:
        """Supervised next-token targets of each of the next `count` micro-batches this source
        will yield from its current position (continuing into the following epochs), known
        without building them."""
        ...


class StepPlan:
    """One optimizer step's micro-batches: their supervised-target counts up front, the
    micro-batches themselves drawn lazily, one per `next()` (iterate once)."""

    def __init__(self, supervised_targets: list[int], draw: Callable[[], MicroBatch]) -> None:
        self.supervised_targets = tuple(supervised_targets)
        self._draw = draw
        self._drawn = 0

    @classmethod
    def of(cls, micro_batches: Sequence[MicroBatch]) -> "StepPlan":
        """A plan over micro-batches already in hand (tests, notebooks): counted here."""
        pending = iter(micro_batches)
        return cls([supervised_targets(m.batch) for m in micro_batches], lambda: next(pending))

    def __len__(self) -> int:
        return len(self.supervised_targets)

    def __iter__(self) -> Iterator[MicroBatch]:
        while self._drawn < len(self.supervised_targets):
            self._drawn += 1
            yield self._draw()


class StepBatches:
    """The micro-batches of each optimizer step, drawn from a source across epoch ends."""

    def __init__(self, source: MicroBatchSource, per_step: int) -> None:
        self.source = source
        self.per_step = per_step
        self._iterator: Iterator[MicroBatch] | None = None

    def next_step(self) -> StepPlan:
        """The next `per_step` micro-batches: counts now, batches as the step draws them."""
        counts = self.source.upcoming_supervised_targets(self.per_step)
        if len(counts) != self.per_step:
            raise TrainingError(
                f"the data source {type(self.source).__name__} announced {len(counts)} "
                f"micro-batches where a step takes {self.per_step}"
            )
        return StepPlan(list(counts), self._next)

    def _next(self) -> MicroBatch:
        for _ in range(2):  # the current epoch, then a fresh one if it has ended
            if self._iterator is None:
                self._iterator = iter(self.source)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
        raise TrainingError(
            f"the data source {type(self.source).__name__} yielded no micro-batch in a whole "
            "epoch; is the data folder empty?"
        )


def supervised_targets(batch: PackedBatch) -> int:
    """Number of supervised next-token targets in the packed row (what the loss sums over)."""
    targets = shifted_targets(batch.labels, batch.cu_seqlens.to(batch.labels.device))
    return int((targets != IGNORE_INDEX).sum())


def model_inputs(batch: PackedBatch, device: torch.device) -> dict[str, Any]:
    """`batch.model_inputs()` with its tensors moved to `device` (non-blocking copies); the
    batch's host metadata (`ov_model.packed_metadata`) stays on the host, where the model reads
    it without a device sync."""
    return {
        name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for name, value in batch.model_inputs().items()
    }


def open_packed_shards(recipe: "Recipe", processor: "OVProcessor", world: "World") -> Any:
    """The packed-shard loader (`ov_train.data.loader.PackedDataLoader`) of `data.path` (an
    `ov-train prepare` output folder or its `shards/`: `prepare_output.resolve_shards_dir`), with
    the recipe's token budget, seed and workers, reading this rank's share of the global stream
    (`world.data_rank` of `world.data_size` data-parallel ranks: the tp, cp and pp ranks of one
    data-parallel rank read the same micro-batches). Rows without an image get a padding sample
    (the processor gives its image token and patch sizes), so every rank runs the vision tower
    on every micro-batch; rows are padded to the multiple sequence / context parallelism split
    evenly, and under pipeline parallelism to the one static length."""
    from ov_train.data.loader import PackedDataLoader
    from ov_train.data.prepare_output import resolve_shards_dir

    if recipe.data.path is None:
        raise RecipeError(
            "data.path is required: the packed shard folder of `ov-train prepare` "
            "(`ov-train run --data DIR`)"
        )
    loader = PackedDataLoader(
        resolve_shards_dir(recipe.data.path),
        processor,
        micro_batch_tokens=recipe.train.micro_batch_tokens,
        seed=recipe.train.seed,
        rank=world.data_rank,
        world_size=world.data_size,
        num_workers=recipe.data.num_workers,
        pad_multiple=recipe.parallel.row_multiple(),
        pad_length=recipe.parallel.static_row_tokens(recipe.train.micro_batch_tokens),
    )
    if world.rank == 0:  # the same numbers on every rank: said once
        _announce_epochs(loader, recipe)
    return loader


def _announce_epochs(loader: Any, recipe: "Recipe") -> None:
    """Say how many epochs of the data the run makes (epoch 0's micro-batches, cut as the loader
    cuts them), and warn about bins over the micro-batch budget: each is a micro-batch alone."""
    train = recipe.train
    per_epoch = loader.micro_batches_in_epoch(0)
    per_run = train.steps * train.grad_accumulation
    _logger.info(
        "data: %s bins, %s micro-batches of <= %s tokens per epoch; %s steps x %s micro-batches "
        "= %.2f epochs",
        f"{loader.num_bins:,}",
        f"{per_epoch:,}",
        f"{train.micro_batch_tokens:,}",
        f"{train.steps:,}",
        f"{train.grad_accumulation:,}",
        per_run / per_epoch,
    )
    over = int((loader.table.tokens > train.micro_batch_tokens).sum())
    if over:
        _logger.warning(
            "data: %s of %s bins hold more than train.micro_batch_tokens (%s) tokens and are "
            "micro-batches of their own, over the budget; prepare with --capacity %s or less",
            f"{over:,}",
            f"{loader.num_bins:,}",
            f"{train.micro_batch_tokens:,}",
            train.micro_batch_tokens,
        )
