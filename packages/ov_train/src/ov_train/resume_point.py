"""Which checkpoint a run resumes from, decided once by rank 0 and agreed by every rank.

Ranks must never resume from different steps (one would train on stale weights and the run
would diverge silently), and looking at the folder from several ranks at once races with the
renames below. So rank 0 decides and broadcasts the step through `World.sum`:

- `--resume-from STEP` (`resume_from`): exactly that checkpoint; an error listing the ones
  there are when it is absent or fails `verify_checkpoint` (an explicit choice never falls back).
  Newer checkpoints are set aside as `.discarded-step_X` (kept for the user, ignored by
  readers): the run recomputes those steps and will save them again.
- otherwise the newest complete checkpoint that passes `verify_checkpoint`; a newer one that
  fails (truncated `.distcp`, unreadable `trainer_state.json`, missing rank file) is set aside
  as `.corrupt-step_X` with a warning naming the reason, and the run falls back to the one
  before it (an error when none is left: a fresh start must be asked for, in a new folder).
- `resume=False` refuses a folder that has checkpoints.

An error on rank 0 is broadcast as well, so every rank stops at once (the others with a
pointer to rank 0's message) instead of waiting on a collective until the timeout.
"""

import logging
import os
from pathlib import Path

import torch

from ov_train.checkpointing import (
    STEP_PREFIX,
    checkpoint_name,
    list_checkpoints,
    verify_checkpoint,
)
from ov_train.errors import CheckpointError
from ov_train.parallel import World, is_main

LOGGER = logging.getLogger("ov_train")
CORRUPT_PREFIX = ".corrupt-"
DISCARDED_PREFIX = ".discarded-"
_NONE, _FAILED = 0, -1


def choose_resume_checkpoint(
    root: str | Path,
    world: World,
    *,
    resume: bool = True,
    resume_from: int | None = None,
    run_dir: Path | None = None,
) -> Path | None:
    """The checkpoint every rank resumes from (None: a fresh start); collective. See the
    module docstring for the rule; CheckpointError on every rank when rank 0 refuses."""
    root = Path(root)
    code, error = _NONE, None
    if is_main(world):
        try:
            chosen = _choose(root, resume, resume_from, run_dir or root)
            code = _NONE if chosen is None else chosen + 1
        except CheckpointError as caught:
            code, error = _FAILED, caught
    agreed = int(world.sum(torch.tensor([code], dtype=torch.int64, device=world.device)).item())
    if error is not None:
        raise error
    if agreed == _FAILED:
        raise CheckpointError(f"rank 0 could not choose a checkpoint in {root}; see its error")
    return None if agreed == _NONE else root / checkpoint_name(agreed - 1)


def _choose(root: Path, resume: bool, resume_from: int | None, run_dir: Path) -> int | None:
    found = list_checkpoints(root)
    steps = [int(path.name.removeprefix(STEP_PREFIX)) for path in found]
    if found and not resume:
        raise CheckpointError(
            f"{run_dir} already has checkpoints ({found[-1].name}); resume it, or choose "
            "another run folder"
        )
    if resume_from is not None:
        if resume_from not in steps:
            raise CheckpointError(
                f"{root}: no complete checkpoint of step {resume_from} (there are "
                f"{steps or 'none'})"
            )
        verify_checkpoint(root / checkpoint_name(resume_from))
        for step, path in zip(steps, found, strict=True):
            if step > resume_from:
                aside = _set_aside(path, DISCARDED_PREFIX)
                LOGGER.warning(
                    "resuming from step %d: set %s aside as %s", resume_from, path, aside
                )
        return resume_from
    for step, path in reversed(list(zip(steps, found, strict=True))):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            aside = _set_aside(path, CORRUPT_PREFIX)
            LOGGER.warning(
                "checkpoint %s is unusable (%s); set aside as %s, falling back to the one "
                "before it",
                path,
                error,
                aside.name,
            )
            continue
        return step
    if found:
        raise CheckpointError(
            f"{root}: every checkpoint is unusable (set aside with the prefix "
            f"{CORRUPT_PREFIX}); start a new run folder"
        )
    return None


def _set_aside(path: Path, prefix: str) -> Path:
    """Rename `path` to a hidden name readers ignore (never overwriting an earlier one)."""
    target = path.with_name(prefix + path.name)
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{prefix}{path.name}.{number}")
    os.rename(path, target)
    return target
