"""How packed data fits a run of a recipe: the packing capacity against the micro-batch budget,
and how many epochs of the data a run goes through.

A run of a recipe takes `steps x grad_accumulation` micro-batches (over all ranks), each cut
from whole bins up to `train.micro_batch_tokens` (`bin_order`): at most `steps x
grad_accumulation x micro_batch_tokens` tokens. How many micro-batches one epoch of the data
makes is not a division of token totals (bins are never split, so a budget that is not a
multiple of the capacity leaves room unused): it is counted exactly by cutting epoch 0 the way
the loader will, with the recipe's seed (later epochs are other permutations, and may differ by
a micro-batch or so). Epochs per run = micro-batches per run / micro-batches per epoch.

Warnings, for a capacity that does not match the budget:
- capacity above the budget: a bin fuller than the budget is a micro-batch of its own, over
  the budget (memory planned for `micro_batch_tokens` is exceeded; under pipeline parallelism the
  row no longer fits the static length);
- a budget that is not a multiple of the capacity: a micro-batch holds at most
  `budget // capacity` full bins, and the rest of the budget stays unused.
The capacity matches when it divides the budget (the release: 8K bins, 8K or 32K budgets).
"""

from dataclasses import dataclass, field

import msgspec
import numpy as np

from ov_train.data.bin_order import plan_epoch


@dataclass(frozen=True, kw_only=True)
class RunFit:
    """The packed data against one run of a recipe (see the module docstring)."""

    recipe: str
    capacity: int
    micro_batch_tokens: int
    steps: int
    grad_accumulation: int
    bins: int
    samples: int
    """Packed copies in the bins."""
    tokens: int
    """LLM tokens in the bins."""
    micro_batches_per_epoch: int
    micro_batches_per_run: int
    tokens_per_run_at_most: int
    epochs_per_run: float
    warnings: list[str] = field(default_factory=list)

    def to_builtins(self) -> dict:
        """Plain values for report.json."""
        return msgspec.to_builtins(self)

    def summary(self) -> str:
        """One line for a person: what a run consumes and how many epochs that is."""
        return (
            f"a run of {self.recipe}: {self.steps:,} steps x {self.grad_accumulation:,} "
            f"micro-batches of <= {self.micro_batch_tokens:,} tokens "
            f"(<= {self.tokens_per_run_at_most:,} tokens); the data: {self.samples:,} samples, "
            f"{self.tokens:,} tokens in {self.bins:,} bins = {self.micro_batches_per_epoch:,} "
            f"micro-batches per epoch -> {self.epochs_per_run:,.2f} epochs per run"
        )


def run_fit(
    bin_tokens: np.ndarray,
    samples: int,
    *,
    capacity: int,
    recipe_name: str,
    steps: int,
    grad_accumulation: int,
    micro_batch_tokens: int,
    seed: int,
) -> RunFit:
    """The fit of packed bins (`bin_tokens`: LLM tokens per bin) to a run of `steps` steps of
    `grad_accumulation` micro-batches of at most `micro_batch_tokens` tokens, the data order
    drawn from `seed` (a recipe's `train` values)."""
    bin_tokens = np.asarray(bin_tokens, dtype=np.int64)
    if bin_tokens.shape[0] == 0:
        raise ValueError("run_fit needs at least one bin")
    per_epoch = len(plan_epoch(bin_tokens, seed, 0, micro_batch_tokens))
    per_run = steps * grad_accumulation
    return RunFit(
        recipe=recipe_name,
        capacity=capacity,
        micro_batch_tokens=micro_batch_tokens,
        steps=steps,
        grad_accumulation=grad_accumulation,
        bins=int(bin_tokens.shape[0]),
        samples=samples,
        tokens=int(bin_tokens.sum()),
        micro_batches_per_epoch=per_epoch,
        micro_batches_per_run=per_run,
        tokens_per_run_at_most=per_run * micro_batch_tokens,
        epochs_per_run=round(per_run / per_epoch, 4),
        warnings=capacity_warnings(bin_tokens, capacity, micro_batch_tokens, recipe_name),
    )


def capacity_warnings(
    bin_tokens: np.ndarray, capacity: int, micro_batch_tokens: int, recipe_name: str
) -> list[str]:
    """What is wrong with packing at `capacity` for a budget of `micro_batch_tokens` (see the
    module docstring); empty when the capacity divides the budget."""
    budget = f"{recipe_name}'s train.micro_batch_tokens {micro_batch_tokens:,}"
    if capacity > micro_batch_tokens:
        over = int(np.count_nonzero(bin_tokens > micro_batch_tokens))
        return [
            f"packing capacity {capacity:,} is above {budget}: a bin of more tokens is a "
            f"micro-batch of its own, over the budget ({over:,} of {bin_tokens.shape[0]:,} bins "
            f"here); pack with --capacity {micro_batch_tokens} (or a divisor of it), or raise "
            "train.micro_batch_tokens"
        ]
    if micro_batch_tokens % capacity:
        full = micro_batch_tokens // capacity
        unused = micro_batch_tokens - full * capacity
        return [
            f"{budget} is not a multiple of packing capacity {capacity:,}: a micro-batch holds "
            f"at most {full} full bins ({full * capacity:,} tokens), {unused:,} tokens "
            f"({100 * unused / micro_batch_tokens:.0f}%) of the budget unused; pack with "
            f"--capacity {largest_divisor_below(micro_batch_tokens, capacity)} or set "
            f"train.micro_batch_tokens to {full * capacity}"
        ]
    return []


def largest_divisor_below(budget: int, capacity: int) -> int:
    """The largest capacity of at most `capacity` tokens that divides `budget`."""
    parts = -(-budget // capacity)
    while budget % parts:
        parts += 1
    return budget // parts
