"""One bf16 training step, packed vs padded: tokens/s and MFU of a 4B-shaped model.

Run on a GPU: `uv run pytest packages/ov_train/benchmarks/bench_gpu_step.py -s -m gpu`.
The `gpu` case builds the 4B model (RICE-ViT-L, Qwen3-4B widths) cut to 8 decoder layers, in
bf16 (the parameter dtype FSDP2's MixedPrecisionPolicy computes with), and times one training
step (forward + backward, no optimizer step) on 8 native-resolution samples:

- packed: one row of exactly 8192 tokens with `cu_seqlens` (what the trainer feeds);
- padded: the same samples right-padded to the longest, input_ids (8, longest) without
  `cu_seqlens`, as a batch-of-padded-sequences trainer would (the images are the same).

Printed side by side: real tokens/s, computed tokens, model TFLOP/s, MFU against the nominal
dense bf16 peak of an H100/H200 (989 TFLOP/s) and the fraction of the bf16 matmul rate measured
on the device (8192^3, best of 3), peak memory against `ov_train.memory_estimate`, and the two
losses (the same samples must give the same loss). FLOPs are `ov_train.flops.training_flops` of
the real tokens (ViT, projector, LLM dense, causal attention per sample, head over supervised
rows): the padded path gets no credit for padding. Timings are reported, never asserted.
For reference (ENVIRONMENT.md): the official HF code trained this shape at 9.2k real tokens/s
(13.5% MFU) on 4 padded single-image samples on the H200 and ran out of memory with 8.

The CPU case runs the same harness on the tiny preset in fp32 with small images, so CI (which
runs every benchmark once) proves the harness, the FLOPs and the packed/padded equivalence.
"""

import dataclasses
import time
from dataclasses import dataclass

import pytest
import torch

from ov_model.config import PRESETS, LlavaOVConfig
from ov_model.model import LlavaOV
from ov_model.packing import IGNORE_INDEX, shifted_targets
from ov_train.flops import training_flops
from ov_train.memory_estimate import GIB, Layout, Workload, activation_bytes, parameter_counts

H100_BF16_DENSE = 989e12
"""Nominal dense bf16 tensor-core peak of an H100/H200 SXM, FLOP/s."""

# 8 native-resolution images (h x w patches of 14 px: 504x728 px up to 896x672 px) and text
# lengths, 8192 tokens in all: 4048 image tokens (16192 ViT patches) and 4144 text tokens.
GPU_GRIDS = [(36, 52), (64, 48), (28, 40), (52, 52), (20, 76), (44, 60), (32, 32), (56, 40)]
GPU_TEXTS = [212, 845, 96, 1290, 330, 604, 150, 617]
GPU_TOKENS = 8192
PROMPT = 4  # text tokens before the image; the rest after it is the supervised answer


@dataclass(frozen=True)
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    grid: tuple[int, int]


def make_samples(config: LlavaOVConfig, grids, texts, seed: int = 0) -> list[Sample]:
    """One image per sample after a short prompt; the text after it is supervised."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for (h, w), text in zip(grids, texts, strict=True):
        image_tokens = h * w // config.merge_size**2
        ids = torch.cat(
            [
                torch.randint(10, 400, (PROMPT,), generator=generator),
                torch.full((image_tokens,), config.image_token_id),
                torch.randint(10, 400, (text - PROMPT,), generator=generator),
            ]
        )
        labels = ids.clone()
        labels[: PROMPT + image_tokens] = IGNORE_INDEX
        pixels = torch.randn(h * w, config.vision.patch_dim, generator=generator)
        samples.append(Sample(ids, labels, pixels, (h, w)))
    return samples


def packed_inputs(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """One row with cu_seqlens."""
    lengths = torch.tensor([len(s.input_ids) for s in samples])
    return {
        "input_ids": torch.cat([s.input_ids for s in samples])[None],
        "labels": torch.cat([s.labels for s in samples])[None],
        "cu_seqlens": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).int(),
        "pixel_values": torch.cat([s.pixel_values for s in samples]),
        "image_grid_thw": torch.tensor([[1, *s.grid] for s in samples]),
    }


def padded_inputs(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """(samples, longest) right-padded; causal attention keeps the pads out of real tokens."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.int64)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    for row, sample in enumerate(samples):
        ids[row, : len(sample.input_ids)] = sample.input_ids
        labels[row, : len(sample.labels)] = sample.labels
    packed = packed_inputs(samples)
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": packed["pixel_values"],
        "image_grid_thw": packed["image_grid_thw"],
    }


def on_device(inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    """`inputs` moved to `device`, the floating-point ones (pixels) cast to `dtype`."""
    return {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in inputs.items()
    }


def step_flops(config: LlavaOVConfig, samples: list[Sample], supervised_tokens: int) -> float:
    """Model FLOPs of one training step (forward + backward) on `samples`."""
    return training_flops(
        config,
        sample_lengths=[len(s.input_ids) for s in samples],
        image_grids=[s.grid for s in samples],
        supervised_tokens=supervised_tokens,
    ).total


@dataclass(frozen=True)
class StepResult:
    layout: str
    real_tokens: int
    computed_tokens: int
    seconds: float
    model_flops: float
    loss: float
    peak_memory: int | None

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def flops_per_second(self) -> float:
        return self.model_flops / self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: LlavaOV, inputs, device: torch.device, *, rounds: int, warmup: int):
    """Best-of-`rounds` seconds of forward + backward, and the loss of the last one."""
    best, loss = float("inf"), float("nan")
    for index in range(warmup + rounds):
        model.zero_grad(set_to_none=True)
        _sync(device)
        started = time.perf_counter()
        output = model(**inputs, return_logits=False)
        output.loss.backward()
        _sync(device)
        if index >= warmup:
            best = min(best, time.perf_counter() - started)
        loss = float(output.loss.detach())
    return best, loss


def run_step_benchmark(
    config: LlavaOVConfig,
    samples: list[Sample],
    device: torch.device,
    dtype: torch.dtype,
    *,
    rounds: int = 3,
    warmup: int = 1,
) -> list[StepResult]:
    """Time one training step on the packed and on the padded layout of `samples`."""
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no host copy of the 4B weights
        model = LlavaOV(config)
    model = model.to(dtype).train()
    packed = packed_inputs(samples)
    supervised = int(
        (shifted_targets(packed["labels"], packed["cu_seqlens"]) != IGNORE_INDEX).sum()
    )
    flops = step_flops(config, samples, supervised)
    real = sum(len(s.input_ids) for s in samples)
    results = []
    for layout, inputs in (("packed", packed), ("padded", padded_inputs(samples))):
        inputs = on_device(inputs, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds, loss = time_step(model, inputs, device, rounds=rounds, warmup=warmup)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        computed = inputs["input_ids"].numel()
        results.append(StepResult(layout, real, computed, seconds, flops, loss, peak))
        del inputs
    return results


def estimated_peak(config: LlavaOVConfig, samples: list[Sample], dtype: torch.dtype) -> int:
    """`ov_train.memory_estimate` for this step: parameters and gradients in `dtype` (no
    optimizer), activations of the packed micro-batch held + the largest transient."""
    tokens = sum(len(s.input_ids) for s in samples)
    image_tokens = sum(h * w for h, w in (s.grid for s in samples)) // config.merge_size**2
    supervised = sum(int((s.labels != IGNORE_INDEX).sum()) - 1 for s in samples)
    workload = Workload(
        micro_batch_tokens=tokens,
        image_token_fraction=image_tokens / tokens,
        tokens_per_image=max(1, image_tokens // len(samples)),
        supervised_fraction=supervised / tokens,
    )
    size = torch.finfo(dtype).bits // 8
    activations = activation_bytes(config, workload, Layout(), element_bytes=size)
    parameters = parameter_counts(config).total
    return 2 * size * parameters + activations.held + activations.transient


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Best-of-3 FLOP/s of a size^3 matmul: the device's practical ceiling."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4):
        _sync(device)
        started = time.perf_counter()
        _ = a @ b
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def report(results: list[StepResult], matmul: float, nominal: float | None, estimate: int) -> str:
    """The side-by-side table."""
    header = (
        "layout  real tok  computed  tokens/s  model TFLOP/s  MFU (989)  of matmul  peak GiB  loss"
    )
    lines = [header]
    for r in results:
        mfu = f"{r.flops_per_second / nominal:.1%}" if nominal else "-"
        peak = f"{r.peak_memory / GIB:.1f}" if r.peak_memory is not None else "-"
        lines.append(
            f"{r.layout:<7} {r.real_tokens:>8} {r.computed_tokens:>9} "
            f"{r.tokens_per_second:>9,.0f} {r.flops_per_second / 1e12:>14.2f} {mfu:>10} "
            f"{r.flops_per_second / matmul:>10.1%} {peak:>9} {r.loss:.4f}"
        )
    packed, padded = results
    lines.append(
        f"packed/padded tokens/s: {packed.tokens_per_second / padded.tokens_per_second:.2f}x; "
        f"matmul rate measured {matmul / 1e12:.1f} TFLOP/s; model FLOPs per step "
        f"{packed.model_flops / 1e12:.2f} T; estimated peak (packed) {estimate / GIB:.1f} GiB"
    )
    return "\n".join(lines)


def test_harness_on_the_tiny_model_cpu():
    config = PRESETS["tiny"]
    samples = make_samples(config, [(8, 8), (4, 12), (12, 8), (8, 16)], [30, 75, 12, 50])
    device = torch.device("cpu")
    results = run_step_benchmark(config, samples, device, torch.float32, rounds=1, warmup=1)
    packed, padded = results
    real = sum(len(s.input_ids) for s in samples)
    assert packed.computed_tokens == real == packed.real_tokens
    assert padded.computed_tokens == len(samples) * max(len(s.input_ids) for s in samples) > real
    assert packed.loss == pytest.approx(padded.loss, rel=1e-5)  # same samples, same loss
    assert packed.model_flops == padded.model_flops > 0
    assert packed.tokens_per_second > 0
    table = report(results, matmul_rate(device, torch.float32, 256), None, 0)
    assert table.splitlines()[1].startswith("packed")
    assert table.splitlines()[2].startswith("padded")
    print("\n" + table)


@pytest.mark.gpu
def test_bf16_step_4b_shape_8_layers_packed_vs_padded_gpu():
    base = PRESETS["4b"]
    config = base.replace(text=dataclasses.replace(base.text, num_hidden_layers=8))
    samples = make_samples(config, GPU_GRIDS, GPU_TEXTS)
    image_tokens = sum(h * w // 4 for h, w in GPU_GRIDS)
    assert sum(len(s.input_ids) for s in samples) == GPU_TOKENS == image_tokens + sum(GPU_TEXTS)
    device = torch.device("cuda")
    matmul = matmul_rate(device, torch.bfloat16, 8192)
    results = run_step_benchmark(config, samples, device, torch.bfloat16)
    estimate = estimated_peak(config, samples, torch.bfloat16)
    print(f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(report(results, matmul, H100_BF16_DENSE, estimate))
