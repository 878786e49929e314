"""Forward throughput of RiceViT on a batch of mixed native-resolution images: our packed varlen
attention side by side with a dense block-diagonal mask over the whole packed sequence (how the
official HF code attends: one (tokens x tokens) mask, quadratic memory).

    uv run pytest packages/rice_vit/benchmarks -q                 # CPU, tiny preset
    uv run pytest packages/rice_vit/benchmarks -q -m gpu          # GPU, ViT-L in bf16

pytest-benchmark prints both implementations of a case in one group; its parenthesised factors
are the dense/varlen ratio. Each case also records in `extra_info` (printed with -s, stored with
--benchmark-json): patches, patches per second, the model's matmul FLOP/s (linear layers plus
attention) and that as a fraction of a square matmul's rate measured on the same device and dtype
(`matmul_fraction`; `linear_only_matmul_fraction` counts the linear layers only).
"""

import time

import pytest
import torch

from rice_vit.config import PRESETS, RiceViTConfig
from rice_vit.model import RiceViT
from rice_vit.processor import ImageProcessor

# Native photo and document sizes (height, width) in pixels, resized by smart_resize as the
# processor would; mixed aspect ratios and sizes, so every image has its own sequence length.
CPU_IMAGE_SIZES = [(333, 500), (90, 1200), (560, 420), (224, 224), (480, 640), (280, 280)]
# 16 images, 48,052 patches: the size of the official code's measured H200 case (48k patches).
GPU_IMAGE_SIZES = [
    (713, 1267),
    (1267, 713),
    (1014, 1352),
    (507, 676),
    (676, 507),
    (475, 845),
    (317, 422),
    (1320, 990),
    (396, 528),
    (660, 660),
    (594, 1056),
    (338, 338),
    (818, 1158),
    (448, 448),
    (1056, 792),
    (495, 880),
]


def image_grids(sizes: list[tuple[int, int]]) -> torch.Tensor:
    """grid_thw of images of these pixel sizes after the default smart_resize."""
    processor = ImageProcessor()
    rows = [processor.resized_size(h, w) for h, w in sizes]
    return torch.tensor([[1, h // 14, w // 14] for h, w in rows])


def forward_flops(config: RiceViTConfig, grid_thw: torch.Tensor) -> tuple[float, float]:
    """Matmul FLOPs of one forward as (linear layers, attention): the patch embedding and
    qkv/proj/MLP per token and layer; q.k^T plus attention.v over each image's tokens (class
    token included)."""
    seq = grid_thw[:, 1] * grid_thw[:, 2] + 1
    tokens, patches = int(seq.sum()), int(seq.sum() - len(seq))
    d, i = config.hidden_size, config.intermediate_size
    linear = 2 * patches * config.patch_dim * d + config.depth * tokens * 2 * (
        4 * d * d + 2 * d * i
    )
    attention = config.depth * 4 * d * float((seq.double() ** 2).sum())
    return linear, attention


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a square matmul on this device and dtype, best of three timings."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def run_case(benchmark, config, grid, device, dtype, attention, rate, rounds):
    torch.manual_seed(0)
    model = RiceViT(config).to(device=device, dtype=dtype).eval()
    if attention == "dense":
        model.attention_backend = "dense"
    patches = int(grid.prod(dim=1).sum())
    pixel_values = torch.randn(patches, config.patch_dim, device=device, dtype=dtype)

    def forward() -> None:
        with torch.inference_mode():
            model(pixel_values, grid)
        synchronize(device)

    benchmark.pedantic(forward, rounds=rounds, warmup_rounds=1, iterations=1)
    if benchmark.disabled:  # --benchmark-disable: the forward ran once, as a smoke test
        return
    seconds = benchmark.stats.stats.median
    linear_flops, attention_flops = forward_flops(config, grid)
    benchmark.extra_info.update(
        patches=patches,
        images=len(grid),
        median_seconds=round(seconds, 5),
        patches_per_second=round(patches / seconds),
        model_tflops=round((linear_flops + attention_flops) / seconds / 1e12, 3),
        measured_matmul_tflops=round(rate / 1e12, 3),
        matmul_fraction=round((linear_flops + attention_flops) / seconds / rate, 4),
        linear_only_matmul_fraction=round(linear_flops / seconds / rate, 4),
    )
    print(f"\n{attention:>6}: {benchmark.extra_info}")


@pytest.fixture(scope="module")
def cpu_matmul_rate() -> float:
    return matmul_rate(torch.device("cpu"), torch.float32, size=1024, repeats=10)


@pytest.mark.parametrize("attention", ["varlen", "dense"])
def test_tiny_preset_cpu_fp32_forward(benchmark, cpu_matmul_rate, attention):
    benchmark.group = "rice-vit-tiny, cpu, fp32, 6 images"
    grid = image_grids(CPU_IMAGE_SIZES)
    run_case(
        benchmark,
        PRESETS["rice-vit-tiny"],
        grid,
        torch.device("cpu"),
        torch.float32,
        attention,
        cpu_matmul_rate,
        rounds=3,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["varlen", "dense"])
def test_large_preset_gpu_bf16_forward(benchmark, attention):
    benchmark.group = "rice-vit-large-patch14, cuda, bf16, 16 images"
    device = torch.device("cuda")
    rate = matmul_rate(device, torch.bfloat16, size=8192, repeats=50)
    grid = image_grids(GPU_IMAGE_SIZES)
    run_case(
        benchmark,
        PRESETS["rice-vit-large-patch14"],
        grid,
        device,
        torch.bfloat16,
        attention,
        rate,
        rounds=5,
    )


@pytest.mark.gpu
def test_large_preset_gpu_varlen_and_dense_agree():
    torch.manual_seed(0)
    model = RiceViT(PRESETS["rice-vit-large-patch14"]).to("cuda", torch.bfloat16).eval()
    grid = image_grids(GPU_IMAGE_SIZES[:4])
    pixel_values = torch.randn(int(grid.prod(dim=1).sum()), 588, device="cuda")
    with torch.inference_mode():
        varlen = model(pixel_values, grid).float()
        model.attention_backend = "dense"
        dense = model(pixel_values, grid).float()
    relative = (varlen - dense).norm() / dense.norm()
    assert relative < 2e-2
