"""The training loop: a recipe, a micro-batch source and a run folder in; a trained model out.

`Trainer.run()` does, in this order (the order matters for exact resume and for the
distributed wrappers to come):

1. seed every generator from `train.seed`, enter deterministic mode if the recipe asks;
2. build the model (from `model.path`, or the seeded preset), fp32, on the device; freeze the
   modules the recipe does not train; `parallel.parallelize` (the identity in one process);
3. AdamW with per-module groups, the warmup + cosine LambdaLR;
4. resume when the run folder has a complete checkpoint (unless told not to): model, optimizer,
   scheduler, the source's position, then the RNG states, last, since building drew from them;
5. per step: draw the step's micro-batches, `train_step`, log, and save a checkpoint every
   `checkpoint.every` steps and after the last;
6. draw the loss curve.

Run folder:

    RUN/recipe.toml       the recipe (rewritten at every start)
    RUN/processor/        tokenizer, chat template, preprocessor config of the model
    RUN/metrics.jsonl     one record per step (see metrics_log.py)
    RUN/loss.png          the loss curve, at the end
    RUN/tensorboard/      when asked for and available
    RUN/checkpoints/      step_XXXXXXXX/ folders (see checkpointing.py)

Exact resume: with the same recipe, N steps, a kill (even during a save), and a resumed run to 2N
give the loss trace and, on CPU in deterministic mode, the bitwise parameters of 2N steps
uninterrupted: every state a step reads is in the checkpoint, and the metrics written after it
are dropped on resume.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_train.checkpointing import (
    PROCESSOR_DIR,
    RECIPE_FILE,
    BeforeCommit,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ov_train.config import ModelConfig, Recipe
from ov_train.config_io import load_recipe, recipe_to_dict, save_recipe
from ov_train.errors import CheckpointError
from ov_train.loss_plot import plot_run_loss
from ov_train.metrics_log import RunLog
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess, World, is_main, parallelize
from ov_train.precision import autocast_factory, resolve_device
from ov_train.rng import capture_rng_state, deterministic_mode, restore_rng_state, seed_everything
from ov_train.schedule import build_scheduler
from ov_train.source import MicroBatchSource, StepBatches
from ov_train.train_step import train_step

LOGGER = logging.getLogger("ov_train")
LOSS_PLOT = "loss.png"


@dataclass
class TrainerHooks:
    """Optional callbacks into the loop (the quickstart, tests)."""

    on_step_end: Callable[[int, dict[str, Any]], None] | None = None
    """Called with the step and its metrics record after it is logged (before any save)."""
    before_checkpoint_commit: BeforeCommit | None = None
    """Called with the temporary checkpoint folder and step, before it is renamed into place."""


@dataclass(frozen=True)
class TrainResult:
    """What a run did."""

    run_dir: Path
    start_step: int
    """The step it resumed from (0: a fresh start)."""
    final_step: int
    losses: list[tuple[int, float]] = field(repr=False)
    """(step, loss) of the steps this process ran."""
    tokens_per_second: float
    """Tokens (image tokens included) per second of training, over this process's steps."""
    last_checkpoint: Path | None
    metrics_path: Path
    plot_path: Path | None

    @property
    def final_loss(self) -> float | None:
        """Loss of the last step this process ran, or None when it ran none."""
        return self.losses[-1][1] if self.losses else None


def build_model(config: ModelConfig) -> LlavaOV:
    """The starting model in fp32: loaded from `config.path`, or the preset drawn at random
    from the current torch seed."""
    if config.path is not None:
        return LlavaOV.from_pretrained(config.path, dtype=torch.float32)
    from ov_model.config import PRESETS

    return LlavaOV(PRESETS[config.preset])


def load_processor(config: ModelConfig) -> OVProcessor | None:
    """The processor stored with `config.path`, or None without a path or a tokenizer there."""
    if config.path is None or not (Path(config.path) / "tokenizer.json").is_file():
        return None
    return OVProcessor.from_pretrained(config.path)


class Trainer:
    """Runs a recipe on a micro-batch source into a run folder (see the module docstring)."""

    def __init__(
        self,
        recipe: Recipe,
        source: MicroBatchSource,
        run_dir: str | Path,
        *,
        resume: bool = True,
        world: World | None = None,
        model: LlavaOV | None = None,
        processor: OVProcessor | None = None,
        hooks: TrainerHooks | None = None,
    ) -> None:
        """`model`/`processor` replace what `recipe.model` would load (the recipe still
        decides what trains); `resume=False` refuses a run folder that has checkpoints."""
        self.recipe = recipe
        self.source = source
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.world = world or SingleProcess()
        self.model = model
        self.processor = processor
        self.hooks = hooks or TrainerHooks()

    @property
    def checkpoint_root(self) -> Path:
        """Where the checkpoints go (`checkpoint.dir`, relative to the run folder)."""
        return self.run_dir / self.recipe.checkpoint.dir

    def run(self) -> TrainResult:
        """Train to `train.steps` (resuming when possible); returns what the run did."""
        with deterministic_mode(self.recipe.train.deterministic):
            return self._run()

    def _run(self) -> TrainResult:
        recipe, world = self.recipe, self.world
        latest = latest_checkpoint(self.checkpoint_root)
        if latest is not None and not self.resume:
            raise CheckpointError(
                f"{self.run_dir} already has checkpoints ({latest.name}); resume it, or choose "
                "another run folder"
            )
        seed_everything(recipe.train.seed)
        device = resolve_device(recipe.train.device)
        model = self.model if self.model is not None else build_model(recipe.model)
        model.to(device).train()
        if recipe.model.attention_backend is not None:
            model.set_attention_backend(recipe.model.attention_backend)
        freeze(model, recipe.model.trainable)
        model_config = model.config
        self.model = model
        model = parallelize(model, recipe, world)
        optimizer = build_optimizer(model, recipe)
        scheduler = build_scheduler(optimizer, recipe)
        processor_dir = self._write_run_files()
        start = 0
        if latest is not None:
            self._note_recipe_changes(latest)
            resumed = load_checkpoint(
                latest, model=model, optimizer=optimizer, scheduler=scheduler, world=world
            )
            self.source.load_state_dict(resumed.data_state)
            restore_rng_state(resumed.rng_state)
            start = resumed.step
            LOGGER.info("resumed from %s (step %d)", latest, start)
        autocast = autocast_factory(recipe.train.dtype, device)
        batches = StepBatches(self.source, recipe.train.grad_accumulation)
        log = RunLog(
            self.run_dir,
            total_steps=recipe.train.steps,
            start_step=start,
            progress_bar=recipe.logging.progress_bar,
            tensorboard=recipe.logging.tensorboard,
            enabled=is_main(world),
        )
        losses: list[tuple[int, float]] = []
        tokens = 0
        training_time = 0.0
        last_checkpoint = latest
        began = time.perf_counter()
        try:
            for step in range(start + 1, recipe.train.steps + 1):
                step_began = time.perf_counter()
                result = train_step(
                    model,
                    optimizer,
                    scheduler,
                    batches.next_step(),
                    world=world,
                    device=device,
                    autocast=autocast,
                    clip_grad_norm=recipe.train.clip_grad_norm,
                    step=step,
                )
                seconds = time.perf_counter() - step_began
                tokens += result.tokens
                training_time += seconds
                losses.append((step, result.loss))
                record = {
                    "step": step,
                    "loss": result.loss,
                    "grad_norm": result.grad_norm,
                    "lr": result.learning_rates,
                    "tokens": result.tokens,
                    "supervised_tokens": result.supervised_tokens,
                    "tokens_per_s": result.tokens / max(seconds, 1e-9),
                    "step_time_s": seconds,
                    "elapsed_s": time.perf_counter() - began,
                }
                log.log(record)
                if self.hooks.on_step_end is not None:
                    self.hooks.on_step_end(step, record)
                if step % recipe.checkpoint.every == 0 or step == recipe.train.steps:
                    last_checkpoint = save_checkpoint(
                        self.checkpoint_root,
                        step,
                        model=model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        data_state=self.source.state_dict(),
                        rng_state=capture_rng_state(),
                        recipe=recipe,
                        model_config=model_config,
                        processor_dir=processor_dir,
                        world=world,
                        keep_last=recipe.checkpoint.keep_last,
                        before_commit=self.hooks.before_checkpoint_commit,
                    )
        finally:
            log.close()
        plot = None
        if recipe.logging.plot and is_main(world) and log.path.is_file():
            plot = plot_run_loss(log.path, self.run_dir / LOSS_PLOT, name=recipe.name)
        return TrainResult(
            run_dir=self.run_dir,
            start_step=start,
            final_step=losses[-1][0] if losses else start,
            losses=losses,
            tokens_per_second=tokens / training_time if training_time else 0.0,
            last_checkpoint=last_checkpoint,
            metrics_path=log.path,
            plot_path=plot,
        )

    def _write_run_files(self) -> Path | None:
        """recipe.toml and processor/ in the run folder; returns the processor folder."""
        folder = self.run_dir / PROCESSOR_DIR
        if not is_main(self.world):
            return folder if folder.is_dir() else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(self.recipe, self.run_dir / RECIPE_FILE)
        if not folder.is_dir():
            processor = self.processor or load_processor(self.recipe.model)
            if processor is None:
                LOGGER.warning(
                    "no processor (model.path unset or without tokenizer.json): checkpoints "
                    "and exports of %s will hold no tokenizer",
                    self.run_dir,
                )
                return None
            processor.save_pretrained(folder)
        return folder

    def _note_recipe_changes(self, checkpoint: Path) -> None:
        saved = _flatten(recipe_to_dict(load_recipe(checkpoint / RECIPE_FILE)))
        current = _flatten(recipe_to_dict(self.recipe))
        changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if changed:
            LOGGER.warning(
                "resuming %s with a recipe that differs in %s: the run will not match an "
                "uninterrupted one",
                checkpoint,
                ", ".join(changed),
            )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
