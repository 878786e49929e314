"""Run a function on several forked processes that form a torch.distributed (gloo) world.

Why fork: the workers inherit the test's objects (model factories, micro-batches, recipes) with
nothing pickled, and start in about half the time of `spawn`. Each worker sets torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), runs `worker(rank, *args)` with one
intra-op thread, saves what it returns with `torch.save`, and exits with `os._exit` (never
running pytest's own exit code in a child). An exception in a worker is never swallowed: its
traceback is written, the process exits non-zero, and `run_workers` raises `WorkerFailed` with
every failed rank's traceback. A peer left waiting on a collective fails with the recipe's
process-group timeout (the tests use 60 s); `run_workers` kills what is still alive after its
own deadline.

It also holds what several test modules share: `train` (a model through the real `train_step`,
its whole gradients captured), the reference run on one process and `assert_same_training`,
padded rows, and `ov-train run` on processes with its loss trace. Loaded by this folder's
conftest (fixture `dist`), so test modules need no import path.
"""

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from ov_model.packing import PackedBatch, pad_row
from ov_train.commands import run_command
from ov_train.memory_loader import PackedMicroBatch
from ov_train.metrics_log import read_metrics
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess, World, forward_autocast, init_world, parallelize
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan
from ov_train.train_step import train_step


class WorkerFailed(AssertionError):
    """One or more workers raised or were killed; the message holds their tracebacks."""


def free_port() -> int:
    """A TCP port free on localhost now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(worker: Callable[..., Any], size: int, *args: Any, timeout_s: float = 240) -> list:
    """`worker(rank, *args)` on `size` forked processes; the list of their return values."""
    context = mp.get_context("fork")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        processes = [
            context.Process(target=_child, args=(worker, rank, size, port, out, args))
            for rank in range(size)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        failures = []
        for rank, process in enumerate(processes):
            if process.is_alive():
                process.kill()
                process.join()
                failures.append(f"rank {rank}: still running after {timeout_s} s, killed")
            elif process.exitcode != 0:
                error = out / f"rank{rank}.error"
                text = error.read_text() if error.is_file() else "(no traceback written)"
                failures.append(f"rank {rank}: exit code {process.exitcode}\n{text}")
        if failures:
            raise WorkerFailed("\n".join(failures))
        return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(size)]


def _child(worker, rank: int, size: int, port: int, out: Path, args: tuple) -> None:
    code = 1
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(size),
            LOCAL_RANK=str(rank),
        )
        torch.set_num_threads(1)
        result = worker(rank, *args)
        torch.save(result, out / f"rank{rank}.pt")
        code = 0
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
    finally:
        if code == 0 and dist.is_initialized():
            dist.destroy_process_group()
        os._exit(code)


# ---------------------------------------------------------------------------- training runs
def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), or `tensor`."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def rank_share(step_batches: list[list], world: World) -> list[list]:
    """Data-parallel rank r's micro-batches of each step: global micro-batches r, r + D,
    r + 2D, ... of D data-parallel ranks (its tp, cp and pp ranks take the same ones)."""
    return [batches[world.data_rank :: world.data_size] for batches in step_batches]


def train(
    model_factory: Callable[[], torch.nn.Module],
    recipe,
    step_batches: Iterable[list[PackedMicroBatch]],
    world: World,
) -> dict[str, Any]:
    """Build, freeze and parallelize a model, run the real `train_step` over `step_batches`
    (this rank's micro-batches of each step); the losses, gradient norms, whole (gathered)
    gradients of every step, by parameter name, and the whole parameters after the last step."""
    model = model_factory().to(world.device).train()
    freeze(model, recipe.model.trainable)
    model = parallelize(model, recipe, world)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    names = {id(p): name for name, p in model.named_parameters()}
    gradients: list[dict[str, torch.Tensor]] = []

    def capture(opt, args, kwargs):
        gradients.append(
            {
                names[id(p)]: full_tensor(p.grad).detach().clone()
                for group in opt.param_groups
                for p in group["params"]
            }
        )

    optimizer.register_step_pre_hook(capture)
    results = [
        train_step(
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
        for step, batches in enumerate(step_batches, 1)
    ]
    parameters = {name: full_tensor(p.detach()).clone() for name, p in model.named_parameters()}
    layouts = {
        name: (
            str(p.device_mesh.mesh_dim_names) + str(p.placements)
            if isinstance(p, DTensor)
            else "plain"
        )
        for name, p in model.named_parameters()
    }
    return {
        **step_records(results),
        "gradients": gradients,
        "parameters": parameters,
        "layouts": layouts,
        "model": model,
    }


def step_records(results) -> dict[str, list]:
    """The per-step numbers of `train_step` / `pipeline_step` results, a list each: losses,
    gradient norms, supervised tokens and learning rates."""
    return {
        "losses": [r.loss for r in results],
        "grad_norms": [r.grad_norm for r in results],
        "supervised": [r.supervised_tokens for r in results],
        "learning_rates": [r.learning_rates for r in results],
    }


def train_one_process(model_factory, recipe, step_batches: list[list]) -> dict[str, Any]:
    """`train` on one process over every micro-batch of `step_batches`: the reference a
    parallel layout must reproduce (the model left out)."""
    result = train(model_factory, recipe, step_batches, SingleProcess())
    del result["model"]
    return result


def train_distributed(model_factory, recipe, step_batches: list[list]) -> dict[str, Any]:
    """`train` in this worker's world (from the environment) on its share of `step_batches`;
    the model itself is left out (it holds process-group state)."""
    world = init_world(recipe.parallel, "cpu")
    result = train(model_factory, recipe, rank_share(step_batches, world), world)
    del result["model"]
    return result


def padded_row(samples, config, *, multiple_of: int = 1, length: int | None = None):
    """`samples` packed into one row with `ov_model.packing.pad_row`'s padding sample (a zero
    merge x merge-patch image, labels -100) when the row has no image, as the data path does so
    every rank runs the ViT and the projector; pad tokens up to a multiple of `multiple_of`
    (sequence / context parallelism) or to exactly `length` (pipeline parallelism)."""
    batch = pad_row(
        PackedBatch.from_samples(list(samples)),
        image_token_id=config.image_token_id,
        pad_token_id=0,
        patch_dim=config.vision.patch_dim,
        merge_size=config.merge_size,
        multiple_of=multiple_of,
        length=length,
    )
    return PackedMicroBatch(batch)


def assert_same_training(
    run: dict[str, Any],
    reference: dict[str, Any],
    *,
    rtol: float = 1e-5,
    learning_rates: bool = True,
    parameters: bool = True,
) -> None:
    """`run` (a `train` result) trained like `reference`: the same supervised tokens, losses
    within rel 1e-6, gradient norms within `rtol` and each step's whole gradients within `rtol`
    (and `rtol` of each tensor's largest entry); with `learning_rates`, the same learning rates
    per group; with `parameters`, the same parameters after the last step (rtol 1e-4, atol
    1e-6)."""
    assert run["supervised"] == reference["supervised"]
    if learning_rates:
        assert run["learning_rates"] == reference["learning_rates"]  # the same named groups
    assert run["losses"] == pytest.approx(reference["losses"], rel=1e-6)
    assert run["grad_norms"] == pytest.approx(reference["grad_norms"], rel=rtol)
    for got, want in zip(run["gradients"], reference["gradients"], strict=True):
        assert got.keys() == want.keys()
        for name, value in want.items():
            scale = value.abs().max().item()
            torch.testing.assert_close(
                got[name], value, rtol=rtol, atol=rtol * scale, msg=lambda m, n=name: f"{n}: {m}"
            )
    if parameters:
        assert run["parameters"].keys() == reference["parameters"].keys()
        for name, value in reference["parameters"].items():
            torch.testing.assert_close(run["parameters"][name], value, rtol=1e-4, atol=1e-6)


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine similarity of two gradient dicts flattened into one vector each."""
    x = torch.cat([a[name].double().flatten() for name in sorted(a)])
    y = torch.cat([b[name].double().flatten() for name in sorted(a)])
    return float(x @ y / (x.norm() * y.norm()))


# ----------------------------------------------------------------- `ov-train run` on processes
def run_args(
    shards, run_dir, model_dir, *overrides: str, steps: int = 2, micro_batch_tokens: int = 1
) -> list[str]:
    """`ov-train run stage2-tiny` arguments for a short deterministic fp32 CPU run of `steps`
    steps of 2 micro-batches on `shards`, writing `run_dir`, plus `overrides` (`KEY=VALUE`,
    e.g. the layout); `micro_batch_tokens=1` puts one bin in each micro-batch."""
    settings = [
        f"model.path={model_dir}",
        f"train.steps={steps}",
        "train.grad_accumulation=2",
        f"train.micro_batch_tokens={micro_batch_tokens}",
        "train.deterministic=true",
        "train.dtype=fp32",
        "checkpoint.every=100",
        "data.num_workers=0",
        "parallel.timeout_s=60",
        "logging.progress_bar=false",
        "logging.plot=false",
        *overrides,
    ]
    sets = [part for setting in settings for part in ("--set", setting)]
    return ["stage2-tiny", "--data", str(shards), "--out", str(run_dir), *sets]


def run_cli(rank: int, args: list[str]) -> None:
    """Worker: `ov-train run args` in this process (its rank comes from the environment)."""
    run_command.main(args, standalone_mode=False)


def loss_trace(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of each line of a run's metrics.jsonl."""
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_same_loss_trace(run_dir: Path, reference_dir: Path, *, steps: int, rel: float) -> None:
    """Both runs logged steps 1..`steps` once each, with losses equal up to `rel`."""
    want, got = loss_trace(reference_dir), loss_trace(run_dir)
    assert [step for step, _ in got] == [step for step, _ in want] == list(range(1, steps + 1))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=rel)
