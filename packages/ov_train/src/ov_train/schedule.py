"""Learning rate: linear warmup, then cosine decay to `schedule.min_lr` (the release's schedule).

Step `s` (0-based, the optimizer steps already taken) of a run of `T` steps with `W` warmup
steps uses, for a group whose peak is `peak`:
- warmup, s < W: peak * (s + 1) / W, so the first update is not wasted at lr 0 and step W - 1
  reaches the peak;
- decay, s >= W: min_lr + (peak - min_lr) * (1 + cos(pi * p)) / 2 with
  p = (s - W) / (T - W - 1), from the peak at the first step after warmup to exactly min_lr at
  the last step (p is held at 1 beyond it).

`min_lr` is absolute and shared, as in Megatron: every module decays to it from its own peak.
The schedule is a `LambdaLR` with one multiplier per parameter group, so it is saved and
restored with the scheduler's state dict; the multipliers are plain functions of the recipe,
never stored, so a resumed run recomputes them from its recipe.
"""

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ov_train.config import Recipe


def learning_rate(step: int, *, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate of optimizer step `step` (see the module docstring)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = total - warmup - 1
    if span <= 0:  # a single decay step runs at the peak, any step after it at min_lr
        return peak if step == warmup else min_lr
    progress = min(1.0, (step - warmup) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _multiplier(peak: float, min_lr: float, warmup: int, total: int) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        return learning_rate(step, peak=peak, min_lr=min_lr, warmup=warmup, total=total) / peak

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> LambdaLR:
    """A LambdaLR giving each parameter group the recipe's warmup + cosine schedule; the
    groups are those of `optim.build_optimizer` (named `<module>.<decay>`)."""
    multipliers = [
        _multiplier(
            recipe.optim.lr_for(group["name"].split(".")[0]),
            recipe.schedule.min_lr,
            recipe.warmup_steps,
            recipe.train.steps,
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, multipliers)
