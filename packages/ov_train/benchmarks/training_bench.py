"""What the CPU training benchmarks share: their recipe, small models, a rank's timed steps and
its memory as /proc reports it.

The data-parallel and the tensor/context-parallel benchmarks each start forked workers (the
harness of tests/distributed) that build a parallelized model, run the real `train_step` a few
times between barriers and report the fastest step after the first (the first pays for
allocations and the process group's warm-up). Keeping that loop here keeps their timings
comparable. Loaded by path like the harness (`--import-mode=importlib` gives the benchmark files
no package), and not collected itself: pytest collects `bench_*.py` only.
"""

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ov_model import PRESETS, LlavaOV
from ov_train.config_io import apply_overrides
from ov_train.memory_loader import PackedMicroBatch
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import World, forward_autocast, parallelize
from ov_train.recipes import RECIPES
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan
from ov_train.train_step import StepResult, train_step


def recipe(*overrides: str):
    """`stage2-tiny` in fp32 with no progress bar and no loss plot, then `overrides`."""
    return apply_overrides(
        RECIPES["stage2-tiny"],
        ["logging.progress_bar=false", "logging.plot=false", "train.dtype=fp32", *overrides],
    )


def small_model(**text) -> LlavaOV:
    """The tiny preset with its decoder's config fields replaced by `text`, drawn from seed 0."""
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    return LlavaOV(config.replace(text=dataclasses.replace(config.text, **text)))


def training_state(model_factory: Callable[[], LlavaOV], recipe, world: World):
    """A new model from `model_factory` in train mode, frozen and parallelized as `recipe`
    says, with its optimizer and scheduler."""
    model = model_factory().train()
    freeze(model, recipe.model.trainable)
    model = parallelize(model, recipe, world)
    optimizer = build_optimizer(model, recipe)
    return model, optimizer, build_scheduler(optimizer, recipe)


def timed_steps(
    model,
    optimizer,
    scheduler,
    recipe,
    world: World,
    step_batches: Iterable[list[PackedMicroBatch]],
    *,
    first_step: contextlib.AbstractContextManager | None = None,
) -> tuple[float, StepResult]:
    """`train_step` over `step_batches` (this rank's micro-batches of each step), each step
    timed between barriers, the first inside `first_step` (a measurement, if given); the
    seconds of the fastest step after the first (of the only one when there is one) and the
    last step's result."""
    times = []
    for step, batches in enumerate(step_batches, 1):
        world.barrier()
        begin = time.perf_counter()
        with first_step if step == 1 and first_step is not None else contextlib.nullcontext():
            result = train_step(
                model,
                optimizer,
                scheduler,
                StepPlan.of(batches),
                world=world,
                device=world.device,
                autocast=forward_autocast(recipe, world),
                clip_grad_norm=recipe.train.clip_grad_norm,
                step=step,
            )
        world.barrier()
        times.append(time.perf_counter() - begin)
    return (min(times[1:]) if len(times) > 1 else times[0]), result


def memory_kib(field: str) -> int:
    """A memory line of /proc/self/status in KiB (VmRSS, VmHWM, RssAnon, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
