"""The training loop: a recipe, a micro-batch source and a run folder in; a trained model out.

`Trainer.run()` does, in this order (the order matters for exact resume and for the
distributed wrappers):

1. join the world: the one given, or `init_world(recipe.parallel, train.device)` (one process
   outside torchrun; a process group of torchrun's ranks, each on `cuda:LOCAL_RANK` or the CPU);
2. lock the run folder (`run_lock.py`: rank 0 holds `RUN/.lock` for the run's life; a second
   run on the folder fails at once naming the holder) and agree on the checkpoint to resume
   from (`resume_point.py`: rank 0 decides, falls back past a corrupt latest one, honours
   `resume_from`; every rank gets the same step);
3. seed every generator from `train.seed`, enter deterministic mode if the recipe asks;
4. build the model (`model_loading.py`: from `model.path` on the meta device, parallelized,
   then filled shard by shard from the safetensors files; or the seeded preset), frozen as the
   recipe says, sharded with FSDP2 over several processes; with `parallel.pp > 1` this rank's
   pipeline stages instead (`distributed.pipeline`), stepped by `pipeline_step`; with
   `train.lora` the adapters are injected before any wrapper (`lora.py`);
5. AdamW with per-module groups, the warmup + cosine LambdaLR;
6. resume: model, optimizer, scheduler (resharded when the world size changed), the source's
   position, then the RNG states, last, since building drew from them (the rule for another
   world size is in checkpointing.py);
7. per step: draw the step's micro-batches, `train_step`, log, and save a checkpoint every
   `checkpoint.every` steps and after the last;
8. draw the loss curve.

Only rank 0 writes the run's shared files (recipe, processor, metrics, plot, the checkpoints'
JSON); every rank writes its own DCP shard and RNG file into a checkpoint.

Run folder:

    RUN/.lock             the run lock (pid, host, start, run id of the holder)
    RUN/recipe.toml       the recipe (rewritten at every start)
    RUN/processor/        tokenizer, chat template, preprocessor config of the model
    RUN/metrics.jsonl     one record per step (see metrics_log.py)
    RUN/loss.png          the loss curve, at the end
    RUN/tensorboard/      when asked for and available
    RUN/checkpoints/      step_XXXXXXXX/ folders (see checkpointing.py)

Exact resume: with the same recipe, N steps, a kill (even during a save, even of one rank of
several), and a resumed run to 2N give the loss trace and, on CPU in deterministic mode with the
same world size, the bitwise parameters of 2N steps uninterrupted: every state a step reads is
in the checkpoint, and the metrics written after it are dropped on resume.

Faults: when a peer rank dies or hangs, the others fail within `parallel.timeout_s` (at once
when the peer's connection drops) with a `TrainingError` that says so and names the last
checkpoint; restart the job (torchrun `--max-restarts` does) and it resumes from there.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_train.checkpointing import (
    PROCESSOR_DIR,
    RECIPE_FILE,
    BeforeCommit,
    load_checkpoint,
    save_checkpoint,
)
from ov_train.config import ModelConfig, Recipe
from ov_train.config_io import load_recipe, recipe_to_dict, save_recipe
from ov_train.errors import TrainingError
from ov_train.lora import lora_of, parameter_summary
from ov_train.loss_plot import plot_run_loss
from ov_train.metrics_log import RunLog
from ov_train.model_loading import build_training_model, build_training_pipeline
from ov_train.optim import build_optimizer
from ov_train.parallel import World, forward_autocast, init_world, is_main
from ov_train.pipeline_step import pipeline_step
from ov_train.resume_point import choose_resume_checkpoint
from ov_train.rng import (
    capture_rng_state,
    deterministic_mode,
    restore_rng_state,
    resume_seed,
    seed_everything,
)
from ov_train.run_lock import acquire_run_lock
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
        resume_from: int | None = None,
        world: World | None = None,
        model: LlavaOV | None = None,
        processor: OVProcessor | None = None,
        hooks: TrainerHooks | None = None,
    ) -> None:
        """`model`/`processor` replace what `recipe.model` would load (the recipe still
        decides what trains); `resume=False` refuses a run folder that has checkpoints;
        `resume_from` resumes from that step's checkpoint (newer ones are set aside). Without
        `world` the run joins `init_world`'s and closes it at the end."""
        self.recipe = recipe
        self.source = source
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.resume_from = resume_from
        self.world = world
        self.model = model
        self.processor = processor
        self.hooks = hooks or TrainerHooks()
        self._last_checkpoint: Path | None = None

    @property
    def checkpoint_root(self) -> Path:
        """Where the checkpoints go (`checkpoint.dir`, relative to the run folder)."""
        return self.run_dir / self.recipe.checkpoint.dir

    def run(self) -> TrainResult:
        """Train to `train.steps` (resuming when possible); returns what the run did."""
        owned = self.world is None
        world = self.world or init_world(self.recipe.parallel, self.recipe.train.device)
        try:
            with deterministic_mode(self.recipe.train.deterministic):
                return self._run_locked(world)
        finally:
            if owned:
                world.close()

    def _run_locked(self, world: World) -> TrainResult:
        try:
            lock = acquire_run_lock(self.run_dir, world, world.device)
        except RuntimeError as error:
            if not _is_collective_failure(error, world):
                raise
            raise _peer_failure(error, world, None) from error
        with lock:
            latest = None
            try:
                latest = choose_resume_checkpoint(
                    self.checkpoint_root,
                    world,
                    resume=self.resume,
                    resume_from=self.resume_from,
                    run_dir=self.run_dir,
                )
                return self._run(world, latest)
            except RuntimeError as error:
                if not _is_collective_failure(error, world):
                    raise
                raise _peer_failure(error, world, self._last_checkpoint or latest) from error

    def _run(self, world: World, latest: Path | None) -> TrainResult:
        recipe = self.recipe
        device = world.device
        per_rank = recipe.train.micro_batches_per_rank(world.data_size)
        seed_everything(recipe.train.seed)
        pipeline = None
        if recipe.parallel.pp > 1:
            pipeline, model_config = build_training_pipeline(recipe, world, model=self.model)
            model = pipeline.model  # this rank's stages, under the full model's names
            optimizer = build_optimizer(model, recipe, group_names=pipeline.optimizer_groups)
        else:
            model, model_config = build_training_model(recipe, world, model=self.model)
            optimizer = build_optimizer(model, recipe)
        self.model = model
        if lora_of(recipe) is not None and is_main(world):
            counts = parameter_summary(model)
            LOGGER.info(
                "LoRA: %d of %d parameters train (%.2f%%, adapters %d); frozen: %.1f MiB",
                counts["trainable"],
                counts["parameters"],
                100 * counts["trainable"] / counts["parameters"],
                counts["adapters"],
                counts["frozen_bytes"] / 2**20,
            )
        scheduler = build_scheduler(optimizer, recipe)
        processor_dir = self._write_run_files(world)
        start = 0
        self._last_checkpoint = latest
        if latest is not None:
            if is_main(world):
                self._note_recipe_changes(latest)
            resumed = load_checkpoint(
                latest, model=model, optimizer=optimizer, scheduler=scheduler, world=world
            )
            self.source.load_state_dict(resumed.data_state)
            start = resumed.step
            if resumed.rng_state is not None:
                restore_rng_state(resumed.rng_state)
            else:
                seed_everything(resume_seed(recipe.train.seed, start, world.rank))
                if is_main(world):
                    LOGGER.warning(
                        "%s was saved by %d processes, this run has %d: tensors and the data "
                        "position are resharded exactly; every rank's random generators are "
                        "reseeded from (seed, step, rank), so the run is not bitwise identical "
                        "to an uninterrupted one",
                        latest,
                        resumed.saved_world_size,
                        world.size,
                    )
            if is_main(world):
                LOGGER.info("resumed from %s (step %d)", latest, start)
        autocast = forward_autocast(recipe, world)
        batches = StepBatches(self.source, per_rank)
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
        began = time.perf_counter()
        try:
            for step in range(start + 1, recipe.train.steps + 1):
                step_began = time.perf_counter()
                step_settings = {
                    "world": world,
                    "device": device,
                    "clip_grad_norm": recipe.train.clip_grad_norm,
                    "step": step,
                }
                if pipeline is not None:
                    result = pipeline_step(
                        pipeline, optimizer, scheduler, batches.next_step(), **step_settings
                    )
                else:
                    result = train_step(
                        model,
                        optimizer,
                        scheduler,
                        batches.next_step(),
                        autocast=autocast,
                        **step_settings,
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
                    self._last_checkpoint = save_checkpoint(
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
            last_checkpoint=self._last_checkpoint,
            metrics_path=log.path,
            plot_path=plot,
        )

    def _write_run_files(self, world: World) -> Path | None:
        """recipe.toml and processor/ in the run folder (rank 0); returns the processor
        folder (only rank 0 uses it)."""
        folder = self.run_dir / PROCESSOR_DIR
        if not is_main(world):
            return None
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


_COLLECTIVE_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "process group")


def _is_collective_failure(error: RuntimeError, world: World) -> bool:
    """Whether `error` is a collective that failed because a peer died or hung."""
    if world.size == 1:
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _COLLECTIVE_MARKERS)


def _peer_failure(error: RuntimeError, world: World, checkpoint: Path | None) -> TrainingError:
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    where = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint yet"
    return TrainingError(
        f"rank {world.rank} of {world.size}: a collective failed, so another rank died or "
        f"stopped answering (the process-group timeout is the recipe's parallel.timeout_s); "
        f"{where}; restart the job to resume from it. Cause: {first_line[:300]}"
    )
