"""Data parallelism on CPU + gloo: tokens/s of 2 processes against 1, and memory per rank with
FSDP2 against plain replication.

Run: `uv run --no-sync pytest packages/ov_train/benchmarks/bench_data_parallel.py -s`.
Both cases start forked worker processes (the harness of tests/distributed), each with one
intra-op thread, and print their ratios:

- throughput: the same global batch of the tiny preset (4 packed micro-batches per step) on one
  process, and on two processes taking two micro-batches each, FSDP2 and replicated; the ratio
  of tokens/s is the data-parallel speed-up on this machine (2 would be perfect scaling; on a
  shared 2-core machine it also measures the neighbours). The tiny model computes so little
  that FSDP2's per-layer collectives over gloo's TCP loopback dominate its step;
- memory: a wider model (the tiny preset with a 768-wide, 8-layer decoder, 72M parameters) on
  two processes and one step of one short row each,
  FSDP2 (dp_shard 2) against replication (dp_replicate 2): the bytes of parameters, gradients
  and AdamW states each rank holds at the optimizer step (FSDP2 should hold half), and the
  process's peak resident memory above its RSS when the worker started (forked from pytest, so
  the interpreter and torch are not counted).

With `--benchmark-disable` each case runs once with fewer steps and prints nothing.
"""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

from ov_model import PRESETS, LlavaOV
from ov_train.memory_loader import PackedMicroBatch
from ov_train.parallel import init_world


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).parent
harness = _load("ov_train_dist_harness", HERE.parent / "tests" / "distributed" / "harness.py")
bench = _load("ov_train_training_bench", HERE / "training_bench.py")

pytestmark = pytest.mark.dist
MICRO_BATCHES = 4  # per step, global


def _recipe(world_size: int, *overrides: str):
    return bench.recipe(
        "parallel.timeout_s=60",
        f"train.grad_accumulation={MICRO_BATCHES // world_size}",
        *overrides,
    )


def _micro_batches(count: int, seed: int, samples: int = 4) -> list[PackedMicroBatch]:
    """`count` packed rows of `samples` samples: 30-60 text tokens, every other one with an
    8x8-patch image."""
    from ov_model.packing import IGNORE_INDEX, PackedBatch

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        row = []
        for index in range(samples):
            text = torch.randint(10, 500, (int(torch.randint(30, 61, (1,))),), generator=generator)
            ids, pixels, grid = text, None, None
            if index % 2 == 0:
                ids = torch.cat([text[:3], torch.tensor([3] + [5] * 16 + [4]), text[3:]])
                pixels = torch.randn(64, 588, generator=generator)
                grid = torch.tensor([[1, 8, 8]])
            labels = ids.clone()
            labels[: len(ids) // 2] = IGNORE_INDEX
            row.append(
                dataclasses.make_dataclass(
                    "S", ["input_ids", "labels", "pixel_values", "image_grid_thw"]
                )(ids, labels, pixels, grid)
            )
        rows.append(PackedMicroBatch(PackedBatch.from_samples(row)))
    return rows


def tiny_model() -> LlavaOV:
    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"])


def wide_model() -> LlavaOV:
    """The tiny preset with a 768-wide, 8-layer decoder: 72M parameters, so the training state
    (1.1 GiB replicated) dominates a process's memory."""
    return bench.small_model(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=8,
        head_dim=64,
        num_attention_heads=12,
        num_key_value_heads=6,
    )


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _worker(rank, model_factory, recipe, step_batches):
    """Train `step_batches` (this rank's share); seconds per step after the first, tokens per
    step (all ranks) and the bytes of state this rank held at the optimizer step."""
    world = init_world(recipe.parallel, "cpu")
    world.barrier()  # the process group's buffers are in place before the baseline
    start_anonymous = bench.memory_kib("RssAnon")
    model, optimizer, scheduler = bench.training_state(model_factory, recipe, world)
    held = {}

    def measure(opt, args, kwargs):
        params = [p for g in opt.param_groups for p in g["params"]]
        held["parameters"] = sum(_local_bytes(p) for p in model.parameters())
        held["gradients"] = sum(_local_bytes(p.grad) for p in params if p.grad is not None)
        held["anonymous_kib"] = max(held.get("anonymous_kib", 0), bench.memory_kib("RssAnon"))

    optimizer.register_step_pre_hook(measure)
    mine = harness.rank_share(step_batches, world)
    seconds, result = bench.timed_steps(model, optimizer, scheduler, recipe, world, mine)
    held["anonymous_kib"] = max(held["anonymous_kib"], bench.memory_kib("RssAnon"))
    held["optimizer"] = sum(
        _local_bytes(value)
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    )
    anonymous_growth = held.pop("anonymous_kib") - start_anonymous
    return {
        "seconds_per_step": seconds,
        "tokens_per_step": result.tokens,
        "held": held,
        "anonymous_growth_kib": anonymous_growth,
        "peak_rss_kib": bench.memory_kib("VmHWM"),
    }


LAYOUTS = {
    "fsdp": ("parallel.dp_shard=2",),
    "replicate": ("parallel.dp_replicate=2", "parallel.dp_shard=1"),
}


def test_two_processes_against_one_tokens_per_second(benchmark):
    steps = 2 if benchmark.disabled else 5
    step_batches = [_micro_batches(MICRO_BATCHES, seed) for seed in range(steps)]
    layouts = ["fsdp"] if benchmark.disabled else list(LAYOUTS)

    def run():
        one = harness.run_workers(_worker, 1, tiny_model, _recipe(1), step_batches)[0]
        two = {
            name: harness.run_workers(
                _worker, 2, tiny_model, _recipe(2, *LAYOUTS[name]), step_batches
            )
            for name in layouts
        }
        return one, two

    one, two = benchmark.pedantic(run, rounds=1)
    assert all(one["tokens_per_step"] == r[0]["tokens_per_step"] > 0 for r in two.values())
    if benchmark.disabled:
        return
    rate_one = one["tokens_per_step"] / one["seconds_per_step"]
    line = (
        f"\ntiny stage-2 step, {one['tokens_per_step']} tokens: 1 process {rate_one:,.0f} tokens/s"
    )
    for name, ranks in two.items():
        rate = ranks[0]["tokens_per_step"] / max(r["seconds_per_step"] for r in ranks)
        benchmark.extra_info[f"tokens_per_s_2_{name}"] = rate
        line += f"; 2 processes {name} {rate:,.0f} tokens/s, ratio {rate / rate_one:.2f}"
    benchmark.extra_info["tokens_per_s_1"] = rate_one
    print(line)


def test_fsdp_against_replication_memory_per_rank(benchmark):
    step_batches = [_micro_batches(2, 0, samples=1)]  # one short row per rank: state dominates
    factory = tiny_model if benchmark.disabled else wide_model  # untimed: a quick smoke run

    def run():
        layouts = {
            "fsdp": ("parallel.dp_shard=2",),
            "replicate": ("parallel.dp_replicate=2", "parallel.dp_shard=1"),
        }
        return {
            name: harness.run_workers(_worker, 2, factory, _recipe(2, *o), step_batches)
            for name, o in layouts.items()
        }

    results = benchmark.pedantic(run, rounds=1)
    held = {name: max(sum(r["held"].values()) for r in ranks) for name, ranks in results.items()}
    assert held["fsdp"] < 0.6 * held["replicate"]
    if benchmark.disabled:
        return
    growth = {n: max(r["anonymous_growth_kib"] for r in ranks) for n, ranks in results.items()}
    peak = {n: max(r["peak_rss_kib"] for r in ranks) for n, ranks in results.items()}
    for name, ranks in results.items():
        parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in ranks[0]["held"].items())
        print(
            f"\n{name}: per rank {parts}; anonymous memory at its peak (around the optimizer step) "
            f"+{growth[name] / 1024:.0f} MiB over the worker's start; process peak RSS "
            f"{peak[name] / 1024:.0f} MiB"
        )
    print(
        f"FSDP2 / replicated: state held per rank {held['fsdp'] / held['replicate']:.2f}, "
        f"anonymous memory growth {growth['fsdp'] / growth['replicate']:.2f}, "
        f"process peak RSS {peak['fsdp'] / peak['replicate']:.2f}"
    )
