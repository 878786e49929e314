"""The RICE pretraining loop: region embeddings -> sharded margin softmax -> AdamW, resumable.

One optimizer step: each rank draws its share of the global batch of images (`RegionBatches`:
N regions per image, object regions labelled with their cluster, OCR regions with their token
classes), encodes it with the region layers (`RiceViT.encode(..., regions=...)`, under bf16
autocast when `train.dtype = "bfloat16"`), and the `MarginSoftmaxLoss` (its class centres sharded
over the ranks) turns the region embeddings into the loss. Then the gradients are clipped by
their global norm and AdamW steps with the learning rate of a linear warmup + cosine schedule.

Choices:
- **AdamW groups.** Decay (`optim.weight_decay`, the paper's 0.2) on the matrices (patch
  embedding, qkv, proj, MLP) and on the class centres, as UNICOM's partial FC does; none on
  the LayerNorms, the biases, the class token and its rotary angles (and a learned region
  query): decaying a norm's gain or a bias pulls it toward zero, which no regulariser intends,
  and the class token is an embedding. A post-layernorm of an MLCD checkpoint plays no part in
  region embeddings and is frozen (DDP would otherwise wait for its gradient forever).
- **Schedule.** Step s of T with W warmup steps: lr * (s + 1) / W during warmup, then a cosine
  from lr at step W to `min_lr` at step T - 1 (the paper gives no schedule).
- **Clipping.** The norm is over the encoder's gradients (equal on every rank after DDP's
  all-reduce) and every rank's centre shard (summed across ranks), so a sharded run clips
  exactly as one process would.
- **Distributed.** Under `torchrun`, the process group is gloo on CPU and NCCL on CUDA; the
  encoder is wrapped in DDP (gradients averaged; the loss scales the embeddings' gradient by
  the world size so the average is the true gradient: `data_parallel_mean`), the centres are
  sharded by `MarginSoftmaxLoss`. `data.batch_images` is the GLOBAL batch; it must divide by the
  number of ranks.

Outputs in the run folder: `config.toml` (the run's config), `loss.jsonl` and `loss.png`
(`plot`), `checkpoints/` (`checkpoint`). `resume=True` continues from the newest checkpoint;
the run's own `config.toml` must match the config given (everything but the device), and a run
killed and resumed ends with bitwise the weights of an uninterrupted run.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rice_vit.config import RiceViTConfig
from rice_vit.errors import CheckpointError, ConfigError
from rice_vit.model import RiceViT
from rice_vit.pretrain.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from rice_vit.pretrain.config import PretrainConfig, config_from_dict, config_to_toml
from rice_vit.pretrain.margin_loss import MarginSoftmaxLoss
from rice_vit.pretrain.plot import (
    LOSS_LOG,
    LOSS_PLOT,
    append_loss_log,
    plot_loss,
    read_loss_log,
    truncate_loss_log,
)
from rice_vit.region_boxes import RegionBoxes
from rice_vit.rng_state import restore_rng_state

CONFIG_FILE = "config.toml"
ENCODER_FILE = "encoder.json"
StepCallback = Callable[[int, float], None]


# ----------------------------------------------------------------------------- pieces


def learning_rate(step: int, *, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate of 0-based optimizer step `step` (see the module docstring)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = total - warmup - 1
    if span <= 0:
        return peak
    progress = min(1.0, (step - warmup) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def encoder_config(config: PretrainConfig) -> RiceViTConfig:
    """The architecture a run trains: the checkpoint's or the preset's, with the run's region
    layers and architecture overrides."""
    model = config.model
    if model.checkpoint is not None:
        from rice_vit.checkpoint import inspect_checkpoint

        base = inspect_checkpoint(model.checkpoint).config
    else:
        base = RiceViTConfig.from_preset(model.preset)
        sizes = {
            name: getattr(model, name)
            for name in ("hidden_size", "depth", "num_heads", "intermediate_size")
            if getattr(model, name) is not None
        }
        base = base.replace(**sizes)
    return base.replace(region_layers=model.region_layers)


def build_encoder(config: PretrainConfig) -> RiceViT:
    """The encoder at step 0: a checkpoint's weights, or a random init seeded by train.seed."""
    architecture = encoder_config(config)
    torch.manual_seed(config.train.seed)
    model = RiceViT(architecture)
    if config.model.checkpoint is not None:
        loaded = RiceViT.from_pretrained(config.model.checkpoint, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [name for name in missing if name != "region_query"]:
            raise CheckpointError(
                f"{config.model.checkpoint}: tensors do not match the encoder: missing "
                f"{missing}, unexpected {unexpected}"
            )
    if model.post_layernorm is not None:
        model.post_layernorm.requires_grad_(False)
    return model


def read_encoder_config(run_dir: str | Path) -> RiceViTConfig:
    """The architecture a run trains, as its `encoder.json` records it."""
    path = Path(run_dir) / ENCODER_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {ENCODER_FILE}; is it a pretraining run folder?")
    return RiceViTConfig(**json.loads(path.read_text("utf-8")))


def parameter_groups(model: RiceViT, centres: nn.Parameter, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices and centres decay, norms/biases/embeddings do not."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.dim() >= 2 and name not in ("class_pos_emb",)
        (decay if is_matrix else no_decay).append(parameter)
    return [
        {"params": [*decay, centres], "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def clip_gradients(
    replicated: list[nn.Parameter], sharded: list[nn.Parameter], max_norm: float
) -> float:
    """Scale all gradients so their global norm is at most `max_norm` (0: no clipping);
    returns the norm before clipping. `sharded` gradients differ per rank and are summed."""
    device = replicated[0].device
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for parameter in replicated:
        if parameter.grad is not None:
            squares += parameter.grad.double().pow(2).sum()
    shard_squares = torch.zeros((), dtype=torch.float64, device=device)
    for parameter in sharded:
        if parameter.grad is not None:
            shard_squares += parameter.grad.double().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(shard_squares)
    norm = float((squares + shard_squares).sqrt())
    if max_norm > 0 and norm > max_norm:
        factor = max_norm / (norm + 1e-6)
        for parameter in (*replicated, *sharded):
            if parameter.grad is not None:
                parameter.grad.mul_(factor)
    return norm


class RegionEncoder(nn.Module):
    """`forward` = region embeddings of `RiceViT.encode`, so DDP (which hooks `forward`)
    sees the step."""

    def __init__(self, encoder: RiceViT) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, regions: RegionBoxes
    ) -> torch.Tensor:
        return self.encoder.encode(pixel_values, grid_thw, regions=regions).region_embeddings


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Placement:
    """Where this process runs: its rank, the world size, its device."""

    rank: int
    world_size: int
    device: torch.device
    started_group: bool


def _placement(device: str) -> Placement:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world == 1:
        return Placement(0, 1, torch.device(device), False)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        started = True
    local = int(os.environ.get("LOCAL_RANK", "0"))
    where = torch.device("cuda", local) if device.startswith("cuda") else torch.device("cpu")
    if where.type == "cuda":
        torch.cuda.set_device(where)
    return Placement(dist.get_rank(), dist.get_world_size(), where, started)


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    """What a finished (or resumed and finished) run did."""

    run_dir: Path
    steps: int
    start_step: int
    final_loss: float
    checkpoint: Path
    seconds: float


def _check_resumed_config(run_dir: Path, config: PretrainConfig) -> None:
    stored = run_dir / CONFIG_FILE
    if not stored.is_file():
        raise CheckpointError(f"{run_dir} has checkpoints but no {CONFIG_FILE}")
    import tomllib

    saved = config_from_dict(tomllib.loads(stored.read_text("utf-8")), source=str(stored))
    ours, theirs = config.to_dict(), saved.to_dict()
    ours["train"].pop("device"), theirs["train"].pop("device")
    changed = [
        f"{section}.{key}: {theirs[section].get(key)!r} -> {ours[section].get(key)!r}"
        for section in ours
        for key in sorted(set(ours[section]) | set(theirs[section]))
        if ours[section].get(key) != theirs[section].get(key)
    ]
    if changed:
        raise ConfigError(
            f"resuming {run_dir} with another config ({'; '.join(changed)}); resume with the "
            f"run's own {CONFIG_FILE} or start a new run"
        )


def train(
    config: PretrainConfig,
    run_dir: str | Path,
    *,
    make_batches: Callable[..., Any],
    num_classes: int,
    resume: bool = True,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Run (or continue) the pretraining `config` describes in `run_dir`.

    `make_batches(rank=, world_size=)` returns this rank's batch source (a `RegionBatches` over
    the global `data.batch_images`: `batch_for_step(step)` is a pure function of the step, so
    the data position needs no state of its own); `num_classes` is K, the clusters plus the OCR
    token classes. `on_step(step, loss)` is called after every step (and
    its checkpoint). Returns what the run did; every rank returns the same."""
    from rice_vit.cli_conventions import progress_bar

    run_dir = Path(run_dir)
    placement = _placement(config.train.device)
    rank, world = placement.rank, placement.world_size
    if config.data.batch_images % world:
        raise ConfigError(
            f"data.batch_images = {config.data.batch_images} must divide by the {world} ranks"
        )
    if world > 1:
        dist.barrier()  # rank 0 may have just cleared the run folder (--overwrite)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        _check_resumed_config(run_dir, config)
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / LOSS_LOG).exists():
            (run_dir / LOSS_LOG).unlink()
        (run_dir / CONFIG_FILE).write_text(config_to_toml(config), "utf-8")
        architecture = dataclasses.asdict(encoder_config(config))
        (run_dir / ENCODER_FILE).write_text(json.dumps(architecture, indent=2) + "\n", "utf-8")

    device = placement.device
    encoder = build_encoder(config).to(device).train()
    loss_fn = MarginSoftmaxLoss(
        num_classes,
        encoder.config.hidden_size,
        scale=config.loss.scale,
        margin=config.loss.margin,
        margin_type=config.loss.margin_kind,
        sample_rate=config.loss.sample_rate,
        seed=config.train.seed,
        data_parallel_mean=world > 1,
    ).to(device)
    optimizer = torch.optim.AdamW(
        parameter_groups(encoder, loss_fn.weight, config.optim.weight_decay),
        lr=config.optim.lr,
        betas=config.optim.betas,
        eps=config.optim.eps,
    )
    batches = make_batches(rank=rank, world_size=world)
    start, loaded = 0, None
    if checkpoint is not None:
        loaded = read_checkpoint(checkpoint, rank=rank, world_size=world, device=device)
        encoder.load_state_dict(loaded.model_state)
        loss_fn.load_state_dict(loaded.centres_state)
        optimizer.load_state_dict(loaded.optimizer_state)
        restore_rng_state(loaded.state["rng"])
        start = loaded.step
        if rank == 0:
            truncate_loss_log(run_dir / LOSS_LOG, start)
    module: nn.Module = RegionEncoder(encoder)
    if world > 1:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    replicated = [p for p in encoder.parameters() if p.requires_grad]
    total = config.train.steps
    autocast = config.train.dtype == "bfloat16"
    loss_value = float("nan")
    last_checkpoint = checkpoint
    began = time.perf_counter()
    with progress_bar(
        desc="pretrain", total=total, initial=start, unit="step", enabled=progress and rank == 0
    ) as bar:
        for step in range(start, total):
            tick = time.perf_counter()
            lr = learning_rate(
                step,
                peak=config.optim.lr,
                min_lr=config.optim.min_lr,
                warmup=config.warmup_steps,
                total=total,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batches.batch_for_step(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                embeddings = module(batch.pixel_values.to(device), batch.grid_thw, batch.regions)
            loss = loss_fn(
                embeddings.float(), batch.positives_offsets, batch.positives_classes, step
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(replicated, [loss_fn.weight], config.optim.grad_clip)
            optimizer.step()
            loss_value = float(loss.detach())
            done = step + 1
            if rank == 0 and (done % config.train.log_every == 0 or done == total):
                regions = int(batch.positives_offsets.numel() - 1) * world
                record = {
                    "step": done,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "regions": regions,
                    "seconds": round(time.perf_counter() - tick, 4),
                }
                append_loss_log(run_dir / LOSS_LOG, record)
            if done % config.train.checkpoint_every == 0 or done == total:
                last_checkpoint = write_checkpoint(
                    run_dir,
                    done,
                    model_state=encoder.state_dict(),
                    centres_state=loss_fn.state_dict(),
                    optimizer=optimizer,
                    state={"loss": loss_value},
                    rank=rank,
                    world_size=world,
                    keep=config.train.keep_checkpoints,
                )
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.2e}")
            if on_step is not None:
                on_step(done, loss_value)
    if rank == 0 and start < total:
        records = read_loss_log(run_dir / LOSS_LOG)
        plot_loss(records, run_dir / LOSS_PLOT, title=f"RICE pretraining: {run_dir.name}")
    if placement.started_group:
        dist.destroy_process_group()
    if start >= total:  # resumed a finished run: nothing was trained
        loss_value = float(loaded.state["loss"])
    return TrainResult(
        run_dir, total, start, loss_value, last_checkpoint, time.perf_counter() - began
    )


def export_encoder(
    run_or_checkpoint: str | Path, out: str | Path, layout: str, **kwargs: Any
) -> list[str]:
    """Write the encoder of a run's newest checkpoint (or of a checkpoint folder) with
    `RiceViT.save_pretrained` in `layout` ('llava-ov' or 'mlcd'); returns the dropped tensors.
    Keyword arguments go to `save_pretrained` (max_shard_size, overwrite)."""
    from rice_vit.pretrain.checkpoint import read_model_state

    path = Path(run_or_checkpoint)
    folder = latest_checkpoint(path) if (path / CONFIG_FILE).is_file() else path
    run_dir = path if folder != path else path.parent.parent
    if folder is None:
        raise CheckpointError(f"{path}: the run has no checkpoint yet")
    architecture = read_encoder_config(run_dir)
    with torch.device("meta"):
        model = RiceViT(architecture)
    state = read_model_state(folder)
    model.load_state_dict(state, strict=True, assign=True)
    return model.save_pretrained(out, layout, **kwargs)
