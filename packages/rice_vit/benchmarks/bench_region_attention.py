"""Throughput of region attention (RICE pretraining): `encode` with region layers and N = 10
regions per image against a plain `encode` of the same images (CPU), and one region-pretraining
step of a ViT-L (forward + margin-softmax loss + backward + AdamW) on CUDA.

    uv run pytest packages/rice_vit/benchmarks/bench_region_attention.py -q -s           # CPU
    uv run pytest packages/rice_vit/benchmarks/bench_region_attention.py -q -s -m gpu    # ViT-L

Every case times its plain and region variants back to back in each round and reports the
median of the per-round region/plain ratios (paired rounds cancel the drifting load of a shared
machine); on CPU the clock is the process's CPU time (`time.process_time`) with torch on one
thread (on a shared, oversubscribed machine OpenMP threads spin and small ops become 100x
slower, which measures the load, not the code), on CUDA the synchronised wall time.
`extra_info` (printed with -s, stored with --benchmark-json) holds the medians, the ratio,
images, patches, regions and rates; pytest-benchmark's own table times the pair.

The GPU step: RICE-ViT-L/14 (24 x 1024, 16 heads) with the last 2 blocks as region layers (the
`rice-vit pretrain` default), fp32 master weights under bf16 autocast, 128 images of 224 x 224
(16 x 16 patches, RICE's pretraining resolution; `RICE_BENCH_GPU_IMAGES` changes the count), 10
regions per image, `MarginSoftmaxLoss` over K = 100,000 centres with rho = 0.1 on the one device,
AdamW (lr 1e-3, weight decay 0.2, fused). The `plain` variant trains the same step on the class
tokens (one embedding per image, the region layers not run): the difference is the regions' cost.
"""

import math
import os
import statistics
import time

import pytest
import torch

from rice_vit.config import PRESETS, RiceViTConfig
from rice_vit.model import RiceViT
from rice_vit.pretrain.margin_loss import MarginSoftmaxLoss
from rice_vit.processor import ImageProcessor
from rice_vit.region_boxes import RegionBoxes
from rice_vit.token_layout import TokenLayout

REGIONS_PER_IMAGE = 10
# The native photo and document sizes of bench_forward (mixed sizes and aspect ratios).
CPU_IMAGE_SIZES = [(333, 500), (90, 1200), (560, 420), (224, 224), (480, 640), (280, 280)]
# A ViT-S/14-shaped encoder: the region layers' share of the work as in a deep model.
SMALL = RiceViTConfig(hidden_size=384, depth=12, num_heads=6, intermediate_size=1536)
GPU_IMAGES = int(os.environ.get("RICE_BENCH_GPU_IMAGES", "128"))
GPU_CLASSES = 100_000


def image_grids(sizes: list[tuple[int, int]]) -> torch.Tensor:
    """grid_thw of images of these pixel sizes after the default smart_resize."""
    processor = ImageProcessor()
    rows = [processor.resized_size(h, w) for h, w in sizes]
    return torch.tensor([[1, h // 14, w // 14] for h, w in rows])


def random_regions(grid: torch.Tensor, per_image: int, seed: int = 0) -> RegionBoxes:
    """`per_image` random boxes (any size from one patch to the whole image) per image."""
    generator = torch.Generator().manual_seed(seed)

    def span(size: int) -> tuple[int, int]:
        start = int(torch.randint(0, size, (), generator=generator))
        return start, int(torch.randint(start + 1, size + 1, (), generator=generator))

    boxes_per_image = []
    for _, h, w in grid.tolist():
        boxes = []
        for _ in range(per_image):
            (row0, row1), (col0, col1) = span(h), span(w)
            boxes.append((row0, col0, row1, col1))
        boxes_per_image.append(boxes)
    return RegionBoxes.from_per_image(boxes_per_image)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(benchmark, runners: dict, clock, rounds: int, group: str, **info) -> dict[str, float]:
    """Time `runners` ({"plain": fn, "regions": fn}) back to back in every round (after one
    warm-up round) with `clock`; records and prints the median time of each and the median of
    the per-round region/plain ratios. pytest-benchmark's own statistics are those of the
    pair."""
    times: dict[str, list[float]] = {name: [] for name in runners}

    def pair() -> None:
        for name, run in runners.items():
            start = clock()
            run()
            times[name].append(clock() - start)

    pair()
    for values in times.values():
        values.clear()
    benchmark.pedantic(pair, rounds=rounds, warmup_rounds=0, iterations=1)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = statistics.median(r / p for r, p in zip(times["regions"], times["plain"], strict=True))
    benchmark.extra_info.update(
        {f"{name}_median_seconds": round(value, 5) for name, value in medians.items()},
        regions_over_plain=round(ratio, 3),
        **info,
    )
    print(
        f"\n{group}: plain {medians['plain'] * 1e3:.1f} ms, regions "
        f"{medians['regions'] * 1e3:.1f} ms, region/plain = {ratio:.3f}x (median of {rounds} "
        "paired rounds)"
    )
    return medians


@pytest.fixture
def one_cpu_thread():
    """torch on one thread for the duration of a CPU case (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- CPU: encode


CPU_CASES = {
    "rice-vit-tiny (2 x 64, both blocks region layers), 6 mixed native images": (
        PRESETS["rice-vit-tiny"].replace(region_layers=2),
        image_grids(CPU_IMAGE_SIZES),
    ),
    "ViT-S/14 shape (12 x 384, last 2 blocks region layers), 4 images 224x224": (
        SMALL.replace(region_layers=2),
        torch.tensor([[1, 16, 16]] * 4),
    ),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_encode_with_region_layers_vs_plain(benchmark, one_cpu_thread, case):
    """CPU time of one inference `encode`, plain vs with region layers and 10 regions/image."""
    group = f"cpu fp32 encode, {case}, {REGIONS_PER_IMAGE} regions/image"
    benchmark.group = group
    config, grid = CPU_CASES[case]
    torch.manual_seed(0)
    model = RiceViT(config).eval()
    patches = int(grid.prod(dim=1).sum())
    pixel_values = torch.randn(patches, config.patch_dim)
    layout = TokenLayout.from_grid_thw(grid, config.spatial_merge_size)
    regions = random_regions(grid, REGIONS_PER_IMAGE)

    def encode(boxes: RegionBoxes | None):
        def run() -> None:
            with torch.inference_mode():
                model.encode(pixel_values, None, layout=layout, regions=boxes)

        return run

    runners = {"plain": encode(None), "regions": encode(regions)}
    if benchmark.disabled:  # --benchmark-disable: each variant once, as a smoke test
        benchmark(lambda: [run() for run in runners.values()])
        return
    medians = paired(
        benchmark,
        runners,
        time.process_time,
        7,
        group,
        images=len(grid),
        patches=patches,
        regions=len(regions),
    )
    for variant, seconds in medians.items():
        benchmark.extra_info[f"{variant}_images_per_cpu_second"] = round(len(grid) / seconds, 2)
    print(benchmark.extra_info)


# ----------------------------------------------------------------------------- training step


class PretrainingStep:
    """One region-pretraining step: encode (regions or plain class tokens), margin-softmax loss
    over the class centres, backward, AdamW over the encoder and the centres."""

    def __init__(
        self,
        config: RiceViTConfig,
        grid: torch.Tensor,
        device: torch.device,
        *,
        use_regions: bool,
        num_classes: int,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        torch.manual_seed(0)
        self.device, self.autocast_dtype = device, autocast_dtype
        self.model = RiceViT(config).to(device).train()
        self.loss = MarginSoftmaxLoss(num_classes, config.hidden_size, sample_rate=0.1).to(device)
        parameters = [*self.model.parameters(), *self.loss.parameters()]
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.2, fused=fused)
        patches = int(grid.prod(dim=1).sum())
        self.pixel_values = torch.randn(patches, config.patch_dim, device=device)
        self.layout = TokenLayout.from_grid_thw(grid, config.spatial_merge_size)  # host
        self.regions = random_regions(grid, REGIONS_PER_IMAGE) if use_regions else None
        rows = len(grid) if self.regions is None else len(self.regions)
        generator = torch.Generator().manual_seed(1)
        self.offsets = torch.arange(rows + 1, device=device)  # one positive class per row
        self.classes = torch.randint(0, num_classes, (rows,), generator=generator).to(device)
        self.rows = rows
        self.step_index = 0

    def __call__(self) -> torch.Tensor:
        """Run one step; returns the loss (detached, on the device)."""
        self.optimizer.zero_grad(set_to_none=True)
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            output = self.model.encode(
                self.pixel_values, None, layout=self.layout, regions=self.regions
            )
            embeddings = output.class_tokens if self.regions is None else output.region_embeddings
        loss = self.loss(embeddings, self.offsets, self.classes, self.step_index)
        loss.backward()
        self.optimizer.step()
        self.step_index += 1
        return loss.detach()


def run_step_case(benchmark, group, config, grid, device, autocast_dtype, classes, rounds):
    """Paired timing of the plain and region pretraining steps (see `paired`)."""
    steps = {
        variant: PretrainingStep(
            config,
            grid,
            device,
            use_regions=variant == "regions",
            num_classes=classes,
            autocast_dtype=autocast_dtype,
        )
        for variant in ("plain", "regions")
    }

    def runner(step: PretrainingStep):
        def run() -> None:
            step()
            synchronize(device)

        return run

    runners = {variant: runner(step) for variant, step in steps.items()}
    for run in runners.values():  # warm up the allocator, kernels and optimizer state
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def check_every_step() -> None:
        for variant, step in steps.items():
            loss = float(step())
            assert math.isfinite(loss), f"{variant}: loss {loss}"

    if benchmark.disabled:  # --benchmark-disable: each variant's step once, as a smoke test
        benchmark(check_every_step)
        return
    check_every_step()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    medians = paired(
        benchmark,
        runners,
        clock,
        rounds,
        group,
        images=len(grid),
        patches=int(grid.prod(dim=1).sum()),
        regions=len(steps["regions"].regions),
    )
    for variant, seconds in medians.items():
        benchmark.extra_info[f"{variant}_ms_per_step"] = round(seconds * 1e3, 2)
        benchmark.extra_info[f"{variant}_images_per_second"] = round(len(grid) / seconds, 1)
    if device.type == "cuda":
        benchmark.extra_info["peak_memory_gib"] = round(
            torch.cuda.max_memory_allocated(device) / 2**30, 1
        )
    print(benchmark.extra_info)


def test_cpu_tiny_region_pretraining_step(benchmark, one_cpu_thread):
    """The GPU benchmark's step on a tiny encoder (CPU time), plain vs regions."""
    group = "cpu fp32 pretraining step, rice-vit-tiny (2 x 64, 2 region layers), 8 images 112x112"
    benchmark.group = group
    config = PRESETS["rice-vit-tiny"].replace(region_layers=2)
    grid = torch.tensor([[1, 8, 8]] * 8)
    run_step_case(benchmark, group, config, grid, torch.device("cpu"), None, 1000, rounds=9)


@pytest.mark.gpu
def test_vit_l_region_pretraining_step_gpu(benchmark):
    """Synchronised wall time per step on CUDA, plain vs regions."""
    group = (
        f"cuda bf16-autocast pretraining step, ViT-L/14 (24 x 1024, 2 region layers), "
        f"{GPU_IMAGES} images 224x224, K = {GPU_CLASSES:,}"
    )
    benchmark.group = group
    config = PRESETS["rice-vit-large-patch14"].replace(region_layers=2)
    grid = torch.tensor([[1, 16, 16]] * GPU_IMAGES)
    start = time.perf_counter()
    run_step_case(
        benchmark, group, config, grid, torch.device("cuda"), torch.bfloat16, GPU_CLASSES, 10
    )
    print(f"case wall time {time.perf_counter() - start:.1f} s")
