"""Tensor and context parallelism on one long packed row: 2 processes against 1.

Run: `uv run --no-sync pytest packages/ov_train/benchmarks/bench_tensor_context_parallel.py -s`
(GPU: add `-m gpu`). Timings and memory are printed, never asserted.

## Tensor parallel (the TP half)
- CPU: a small model (the tiny preset's ViT, a 256-wide, 4-layer decoder with 8 heads and a
  4096-token vocabulary) trains on one packed row of about 4096 tokens (8 samples of 512 tokens,
  each with an 8x8-patch image) through the real `train_step`: one process, and two processes
  with tp = 2 and sequence parallelism (gloo, one intra-op thread each). Printed: tokens/s of
  each and their ratio, and per rank: activation bytes saved for backward (counted by a
  saved-tensor hook over the forward: what sequence + tensor parallelism should cut by about
  tp, minus the replicated ViT and the whole-row tensors), parameter bytes held, and the
  process's peak resident memory above its start. On a shared 2-core machine the throughput
  ratio measures gloo's loopback all-gathers per layer as much as the split compute.
- GPU (`gpu` marker): the 4B-shaped model cut to 8 decoder layers in bf16 on the 8192-token row
  of `bench_gpu_step`, over tp = every visible GPU (NCCL, forked ranks; one GPU: tp = 1, the
  baseline; OV_BENCH_TP=N picks N), forward + backward timed (best of 3), MFU = model FLOPs /
  (seconds x GPUs x 989 TFLOP/s). The ViT is replicated over tp, so each rank recomputes it:
  that redundancy is in the time, not in the FLOPs.

Measured (CPU, 2 shared cores, torch 2.15, the command above): on a 4240-token row, tp = 2 + SP
ran at 0.83x the tokens/s of one process (gloo all-gathers per layer over loopback, neighbours
on the cores); per rank it saved 0.54x the activations (500 -> 272 MiB: the replicated ViT, the
whole-row inputs of the q/k/v and gate/up matmuls that DTensor keeps for backward, and the
gathered hidden states of the loss are not split), held 0.52x the parameters and grew its
peak RSS 0.62x. On the idle machine (load 0.5, one run of this file for both halves, before
`SavedActivations` held the storages it counts, which lost some by address reuse): tokens/s
1.19x (two processes have two cores where one process has one thread), activations 0.56x,
parameters 0.52x, peak RSS growth 0.64x.

## Context parallel (the CP half)
- CPU: the same model and row shape (padded to a multiple of 2 x cp = 4) on one process, and on
  two with cp = 2 for each attention path (`allgather`, `ring`), through the real `train_step`
  with FSDP2 over the cp ranks. Printed: tokens/s and the ratio to one process, and the
  activation bytes each rank saves for backward, parameters left out (looked up at each save:
  FSDP2 gathers a layer's weights into fresh storages just before its forward). CP should cut
  them by about cp; what it does not split is the ViT, the projector and the whole-row
  embeddings, which every cp rank computes. The CPU path's fp32 block math is slower than the
  single process's SDPA kernel (about 3x for attention alone on one thread), and gloo's loopback
  carries K/V every layer: the CPU tokens/s ratio is not what a GPU run shows.
- GPU (`gpu` marker, per path): the 4B-shaped 8-layer model in bf16 on a row of cp x 8192 tokens
  (the samples of `bench_gpu_step`, cp times: each rank holds 8192) over cp = every visible GPU
  (NCCL, forked ranks; OV_BENCH_CP=N picks N), forward + backward timed (best of 3), no FSDP2
  (the time holds no gradient reduction), MFU = model FLOPs / (seconds x GPUs x 989 TFLOP/s).
  The blocks run flash-attn's varlen kernel when it is installed, else torch's bundled flash
  kernel (printed). With one GPU,
  cp = 1 through the split's block path next to the unsplit model on the same row: the cost of
  the decomposition.

Measured (CPU, 2 cores shared with other jobs, torch 2.15, the command above, three runs): on
the 4240-token row, cp = 2 saved 0.51x (allgather) and 0.49x (ring) of one process's
activations per rank every time (500 -> 253 / 245 MiB); the tokens/s ratio to one process
swung with the neighbours' load: allgather 0.40x / 0.83x / 1.63x, ring 0.47x / 0.75x / 1.20x
(load averages about 6, 4 and 3). On the idle machine, in the same run as the TP half:
allgather 1.21x, ring 1.36x tokens/s; activations 0.51x and 0.49x.
"""

import dataclasses
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

from ov_model import PRESETS, LlavaOV
from ov_model.packing import IGNORE_INDEX
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


# ------------------------------------------------------------------------- tensor parallel, CPU
def tp_model() -> LlavaOV:
    """The tiny preset's ViT with a 256-wide, 4-layer decoder (8 heads, 4 kv heads, vocabulary
    4096): small enough for a CPU step, wide enough for tp = 2 to split real matmuls."""
    return bench.small_model(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
    )


def long_row(samples: int, text_tokens: int, *, multiple_of: int, seed: int = 0):
    """One packed row of `samples` samples, each an 8x8-patch image (16 LLM tokens) inside
    `text_tokens` text tokens, the second half supervised; padded to `multiple_of`."""
    config = PRESETS["tiny"]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(samples):
        text = torch.randint(10, 500, (text_tokens,), generator=generator)
        image = [config.vision_start_token_id] + [config.image_token_id] * 16
        ids = torch.cat([text[:3], torch.tensor([*image, config.vision_end_token_id]), text[3:]])
        labels = ids.clone()
        labels[: len(ids) // 2] = IGNORE_INDEX
        pixels = torch.randn(64, config.vision.patch_dim, generator=generator)
        sample = dataclasses.make_dataclass(
            "Sample", ["input_ids", "labels", "pixel_values", "image_grid_thw"]
        )(ids, labels, pixels, torch.tensor([[1, 8, 8]]))
        rows.append(sample)
    return harness.padded_row(rows, config, multiple_of=multiple_of)


def _recipe(*layout: str):
    """One row per step, on a layout of one data-parallel rank (`layout`: tp or cp settings)."""
    return bench.recipe(
        "train.grad_accumulation=1", "parallel.timeout_s=120", *layout, "parallel.dp_shard=1"
    )


def _tp_recipe(tp: int):
    return _recipe(f"parallel.tp={tp}")


def _storage(tensor: torch.Tensor):
    local = tensor._local_tensor if isinstance(tensor, DTensor) else tensor
    return local.untyped_storage()


def _local_bytes(tensor: torch.Tensor) -> int:
    return _storage(tensor).nbytes()


class SavedActivations:
    """Bytes of the distinct storages autograd saves for backward during forward passes while
    active (a rank's activation memory of a step), the model's parameters left out.

    The parameters are looked up at each save: under FSDP2 a layer's weights are all-gathered
    into new storages just before its forward, and a linear saves its weight (or a transposed
    view of it) for backward. Storages are keyed by address, their size taken when saved, and
    held until the counter is dropped: a storage saved by a graph freed mid-forward (or freed
    by FSDP2's reshard) would otherwise give its address to a later one, which would then go
    uncounted (the count changed from run to run by megabytes)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.storages: dict[int, tuple[torch.UntypedStorage, int]] = {}

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        in_backward = torch._C._current_graph_task_id() != -1  # recomputation: not held
        storage = _storage(tensor)
        parameters = {_storage(p).data_ptr() for p in self.model.parameters()}
        if not in_backward and storage.data_ptr() not in parameters:
            self.storages.setdefault(storage.data_ptr(), (storage, storage.nbytes()))
        return tensor

    @property
    def bytes(self) -> int:
        return sum(nbytes for _, nbytes in self.storages.values())


def _tp_worker(rank, recipe, batch, steps):
    """Train `steps` steps of the one-row batch; seconds of the fastest step after the first,
    tokens per step, saved activation bytes, parameter bytes and peak RSS growth (this rank)."""
    world = init_world(recipe.parallel, "cpu")
    world.barrier()
    start_kib = bench.memory_kib("VmRSS")
    model, optimizer, scheduler = bench.training_state(tp_model, recipe, world)
    parameter_bytes = sum(_local_bytes(p) for p in model.parameters())
    saved = SavedActivations(model)
    seconds, result = bench.timed_steps(
        model, optimizer, scheduler, recipe, world, [[batch]] * steps, first_step=saved
    )
    return {
        "seconds_per_step": seconds,
        "tokens_per_step": result.tokens,
        "loss": result.loss,
        "activation_bytes": saved.bytes,
        "parameter_bytes": parameter_bytes,
        "peak_rss_growth_kib": bench.memory_kib("VmHWM") - start_kib,
    }


def run_tensor_parallel_cpu(samples: int, text_tokens: int, steps: int) -> dict:
    """One process and two (tp = 2, sequence parallel) on the same row; their results."""
    batch = long_row(samples, text_tokens, multiple_of=2)
    one = harness.run_workers(_tp_worker, 1, _tp_recipe(1), batch, steps)[0]
    two = harness.run_workers(_tp_worker, 2, _tp_recipe(2), batch, steps)
    return {"one": one, "two": two, "tokens": int(batch.batch.input_ids.numel())}


def tensor_parallel_report(results: dict) -> str:
    """Tokens/s of 1 and 2 processes, their ratio, and per-rank memory ratios."""
    one, two = results["one"], results["two"]
    rate_one = one["tokens_per_step"] / one["seconds_per_step"]
    rate_two = two[0]["tokens_per_step"] / max(r["seconds_per_step"] for r in two)

    def ratio(key):
        return max(r[key] for r in two) / one[key]

    return (
        f"TP: one packed row of {results['tokens']} tokens, small model (256 wide, 4 layers)\n"
        f"  1 process {rate_one:,.0f} tokens/s; tp = 2 + SP {rate_two:,.0f} tokens/s; "
        f"ratio {rate_two / rate_one:.2f}\n"
        f"  per rank, tp = 2 / 1 process: activations saved for backward "
        f"{ratio('activation_bytes'):.2f} ({one['activation_bytes'] / 2**20:.1f} -> "
        f"{max(r['activation_bytes'] for r in two) / 2**20:.1f} MiB), parameters "
        f"{ratio('parameter_bytes'):.2f}, peak RSS growth {ratio('peak_rss_growth_kib'):.2f} "
        f"({one['peak_rss_growth_kib'] / 1024:.0f} -> "
        f"{max(r['peak_rss_growth_kib'] for r in two) / 1024:.0f} MiB)"
    )


def test_tensor_parallel_two_processes_against_one_on_a_long_row(benchmark):
    size = (2, 64, 2) if benchmark.disabled else (8, 512, 3)  # samples, text tokens, steps

    results = benchmark.pedantic(lambda: run_tensor_parallel_cpu(*size), rounds=1)
    one, two = results["one"], results["two"]
    assert all(r["loss"] == pytest.approx(one["loss"], rel=1e-5) for r in two)
    assert all(r["activation_bytes"] < one["activation_bytes"] for r in two)
    if benchmark.disabled:
        return
    for key in ("seconds_per_step", "activation_bytes", "peak_rss_growth_kib"):
        benchmark.extra_info[f"tp2_over_1_{key}"] = max(r[key] for r in two) / one[key]
    print("\n" + tensor_parallel_report(results))


# ------------------------------------------------------------------------- tensor parallel, GPU
def _gpu_tp_worker(rank, tp: int, rounds: int):
    """Rank `rank` of tp = `tp` on cuda:rank (NCCL): best seconds of forward + backward of the
    8192-token row, the loss, the model FLOPs and the peak memory."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ov_train.distributed.tensor_parallel import apply_tensor_parallel

    gpu_step = _load("ov_train_bench_gpu_step", HERE / "bench_gpu_step.py")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    if tp > 1:
        dist.init_process_group("nccl", device_id=device)
    model, inputs, flops = _gpu_model_and_row(gpu_step, device, copies=1)
    if tp > 1:
        mesh = init_device_mesh("cuda", (tp,), mesh_dim_names=("tp",))
        model = apply_tensor_parallel(model, mesh, sequence_parallel=True)
    torch.cuda.reset_peak_memory_stats(device)
    seconds, loss = gpu_step.time_step(model, inputs, device, rounds=rounds, warmup=1)
    return {
        "seconds": seconds,
        "loss": loss,
        "flops": flops,
        "tokens": int(inputs["input_ids"].numel()),
        "peak": torch.cuda.max_memory_allocated(device),
    }


def _gpu_model_and_row(gpu_step, device: torch.device, copies: int):
    """On `device`: the 4B-shaped model cut to 8 decoder layers in bf16 (train mode, seed 0)
    and one packed row of `copies` x the samples of `bench_gpu_step` (8192 tokens each), with
    the row's model FLOPs."""
    base = PRESETS["4b"]
    config = base.replace(text=dataclasses.replace(base.text, num_hidden_layers=8))
    samples = gpu_step.make_samples(
        config, gpu_step.GPU_GRIDS * copies, gpu_step.GPU_TEXTS * copies
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOV(config)
    model = model.to(torch.bfloat16).train()
    inputs = gpu_step.on_device(gpu_step.packed_inputs(samples), device, torch.bfloat16)
    supervised = sum(int((s.labels != IGNORE_INDEX).sum()) - 1 for s in samples)
    return model, inputs, gpu_step.step_flops(config, samples, supervised)


def _visible_gpus() -> int:
    """GPUs `nvidia-smi` lists (OV_BENCH_TP overrides), counted without initialising CUDA in
    this process: the ranks are forked from it, and a forked child cannot use a CUDA context
    its parent created."""
    if "OV_BENCH_TP" in os.environ:
        return int(os.environ["OV_BENCH_TP"])
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True)
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


@pytest.mark.gpu
def test_tensor_parallel_mfu_4b_shape_8_layers_gpu():
    gpu_step = _load("ov_train_bench_gpu_step", HERE / "bench_gpu_step.py")
    tp = max(t for t in (1, 2, 4, 8) if t <= _visible_gpus())
    results = harness.run_workers(_gpu_tp_worker, tp, tp, 3, timeout_s=900)
    seconds = max(r["seconds"] for r in results)
    first = results[0]
    mfu = first["flops"] / (seconds * tp * gpu_step.H100_BF16_DENSE)
    print(
        f"\n4B shape, 8 layers, bf16, one packed row of {first['tokens']} tokens, tp = {tp} "
        f"(sequence parallel): {seconds * 1e3:.0f} ms forward + backward, "
        f"{first['tokens'] / seconds:,.0f} tokens/s, MFU {mfu:.1%} of {tp} x 989 TFLOP/s, "
        f"peak {max(r['peak'] for r in results) / 2**30:.1f} GiB per GPU, loss {first['loss']:.4f}"
    )


# ------------------------------------------------------------------------ context parallel, CPU
CP_MODES = ("allgather", "ring")


def _cp_recipe(cp: int, mode: str = "allgather"):
    return _recipe(f"parallel.cp={cp}", f"parallel.cp_attention={mode}")


def _cp_worker(rank, recipe, batch, steps):
    """Train `steps` steps of the one-row batch; seconds of the fastest step after the first,
    tokens per step, the loss and the activation bytes saved for backward (this rank)."""
    world = init_world(recipe.parallel, "cpu")
    world.barrier()
    model, optimizer, scheduler = bench.training_state(tp_model, recipe, world)
    saved = SavedActivations(model)
    seconds, result = bench.timed_steps(
        model, optimizer, scheduler, recipe, world, [[batch]] * steps, first_step=saved
    )
    return {
        "seconds_per_step": seconds,
        "tokens_per_step": result.tokens,
        "loss": result.loss,
        "activation_bytes": saved.bytes,
    }


def run_context_parallel_cpu(samples: int, text_tokens: int, steps: int) -> dict:
    """One process, and two with cp = 2 for each attention path, on the same long row."""
    batch = long_row(samples, text_tokens, multiple_of=4)
    one = harness.run_workers(_cp_worker, 1, _cp_recipe(1), batch, steps)[0]
    two = {
        mode: harness.run_workers(_cp_worker, 2, _cp_recipe(2, mode), batch, steps)
        for mode in CP_MODES
    }
    return {"one": one, "two": two, "tokens": int(batch.batch.input_ids.numel())}


def context_parallel_report(results: dict) -> str:
    """Tokens/s of 1 process and of cp = 2 (each path), and per-rank activation memory."""
    one = results["one"]
    rate_one = one["tokens_per_step"] / one["seconds_per_step"]
    lines = [
        f"CP: one packed row of {results['tokens']} tokens, small model (256 wide, 4 layers); "
        f"1 process {rate_one:,.0f} tokens/s, activations saved for backward "
        f"{one['activation_bytes'] / 2**20:.1f} MiB"
    ]
    for mode, ranks in results["two"].items():
        rate = ranks[0]["tokens_per_step"] / max(r["seconds_per_step"] for r in ranks)
        saved = max(r["activation_bytes"] for r in ranks)
        lines.append(
            f"  cp = 2 {mode:<9}: {rate:,.0f} tokens/s, ratio {rate / rate_one:.2f}; "
            f"activations per rank {saved / 2**20:.1f} MiB, "
            f"ratio {saved / one['activation_bytes']:.2f}"
        )
    return "\n".join(lines)


def test_context_parallel_two_processes_against_one_on_a_long_row(benchmark):
    size = (2, 64, 1) if benchmark.disabled else (8, 512, 3)  # samples, text tokens, steps

    results = benchmark.pedantic(lambda: run_context_parallel_cpu(*size), rounds=1)
    one = results["one"]
    for ranks in results["two"].values():
        assert all(r["tokens_per_step"] == one["tokens_per_step"] for r in ranks)
        assert all(r["loss"] == pytest.approx(one["loss"], rel=1e-5) for r in ranks)
        assert all(r["activation_bytes"] < 0.8 * one["activation_bytes"] for r in ranks)
    if benchmark.disabled:
        return
    for mode, ranks in results["two"].items():
        benchmark.extra_info[f"cp2_{mode}_over_1_seconds_per_step"] = (
            max(r["seconds_per_step"] for r in ranks) / one["seconds_per_step"]
        )
        benchmark.extra_info[f"cp2_{mode}_over_1_activation_bytes"] = (
            max(r["activation_bytes"] for r in ranks) / one["activation_bytes"]
        )
    print("\n" + context_parallel_report(results))


# ------------------------------------------------------------------------ context parallel, GPU
def _gpu_cp_worker(rank, cp: int, mode: str, rounds: int):
    """Rank `rank` of cp = `cp` on cuda:rank (NCCL): best seconds of forward + backward of a row
    of cp x 8192 tokens (the samples of `bench_gpu_step`, cp times) split over the cp ranks, and
    with cp = 1 also the unsplit model on it; the loss, the model FLOPs and the peak memory."""
    import torch.distributed as dist

    from ov_train.distributed import cp_attention
    from ov_train.distributed.context_parallel import ContextParallelSplit

    gpu_step = _load("ov_train_bench_gpu_step", HERE / "bench_gpu_step.py")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)  # cp = 1 too: a group of one
    model, inputs, flops = _gpu_model_and_row(gpu_step, device, copies=cp)
    result = {"flops": flops, "tokens": int(inputs["input_ids"].numel())}
    if cp == 1:
        result["unsplit_seconds"], result["unsplit_loss"] = gpu_step.time_step(
            model, inputs, device, rounds=rounds, warmup=1
        )
    model.sequence_split = ContextParallelSplit(dist.group.WORLD, rank, cp, mode)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    seconds, loss = gpu_step.time_step(model, inputs, device, rounds=rounds, warmup=1)
    kernel = cp_attention.block_kernel(torch.empty(0, device=device, dtype=torch.bfloat16))
    result.update(
        seconds=seconds,
        loss=loss,
        peak=torch.cuda.max_memory_allocated(device),
        kernel=f"the {kernel} varlen kernel" if kernel else "fp32 math (no flash kernel)",
    )
    return result


@pytest.mark.gpu
@pytest.mark.parametrize("mode", CP_MODES)
def test_context_parallel_mfu_4b_shape_8_layers_gpu(mode):
    gpu_step = _load("ov_train_bench_gpu_step", HERE / "bench_gpu_step.py")
    gpus = int(os.environ["OV_BENCH_CP"]) if "OV_BENCH_CP" in os.environ else _visible_gpus()
    cp = max(c for c in (1, 2, 4, 8) if c <= gpus)
    results = harness.run_workers(_gpu_cp_worker, cp, cp, mode, 3, timeout_s=900)
    seconds = max(r["seconds"] for r in results)
    first = results[0]
    mfu = first["flops"] / (seconds * cp * gpu_step.H100_BF16_DENSE)
    line = (
        f"\n4B shape, 8 layers, bf16, one packed row of {first['tokens']} tokens, cp = {cp} "
        f"({mode}, blocks by {first['kernel']}): {seconds * 1e3:.0f} ms forward + backward "
        f"(no gradient reduction), {first['tokens'] / seconds:,.0f} tokens/s, MFU {mfu:.1%} of "
        f"{cp} x 989 TFLOP/s, peak {max(r['peak'] for r in results) / 2**30:.1f} GiB per GPU, "
        f"loss of rank 0's rows {first['loss']:.4f}"
    )
    if cp == 1:
        unsplit = first["unsplit_seconds"]
        line += (
            f"\n  the same row unsplit: {unsplit * 1e3:.0f} ms, MFU "
            f"{first['flops'] / (unsplit * gpu_step.H100_BF16_DENSE):.1%}, loss "
            f"{first['unsplit_loss']:.4f} (the split's block decomposition costs "
            f"{seconds / unsplit - 1:+.0%})"
        )
    print(line)
