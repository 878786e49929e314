"""Speed of the cluster-label and loss steps of RICE pretraining: one k-means iteration (torch
CPU vs faiss-cpu), flat vs two-level (hierarchical) k-means for the same K, and one
forward + backward of the sharded margin loss with partial-FC sampling.

    uv run pytest packages/rice_vit/benchmarks/bench_kmeans.py -q -s          # CPU
    uv run pytest packages/rice_vit/benchmarks/bench_kmeans.py -q -s -m gpu   # CUDA cases

Each case prints its rate with -s and stores it in `extra_info`. What the numbers are for: the
cost of one Lloyd iteration is N K D multiply-adds, so rows/s at a given K and D extrapolates to
the paper's scale (N = 2B regions, K = 1M, D = 768); the hierarchical case shows the saving
that makes K = 1M reachable (N (K1 + K / K1) D instead of N K D).
"""

import time

import numpy as np
import pytest
import torch

from rice_vit.pretrain.kmeans import hierarchical_kmeans, kmeans
from rice_vit.pretrain.margin_loss import MarginSoftmaxLoss


def _features(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d)).astype(np.float32) * 3
    return centres[rng.integers(0, 64, n)] + rng.normal(size=(n, d)).astype(np.float32)


def _report(benchmark, name: str, value: float, unit: str) -> None:
    benchmark.extra_info[unit] = value
    print(f"\n{name}: {value:,.1f} {unit}")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_iteration_cpu(benchmark, backend):
    """One Lloyd iteration, N = 20,000, D = 64, K = 256, on CPU."""
    x = _features(20_000, 64)
    seconds = benchmark.pedantic(
        lambda: _timed(lambda: kmeans(x, 256, iterations=1, backend=backend, block_rows=8192)),
        rounds=3,
        iterations=1,
    )
    _report(benchmark, f"k-means iteration, {backend}", 20_000 / seconds, "rows_per_s")


def test_hierarchical_vs_flat_cpu(benchmark):
    """K = 2,048 centres of N = 20,000 rows, D = 32, 3 iterations: flat vs 32 coarse x 64 fine
    (multiply-adds per iteration: N K D flat, about N (32 + 64) D two-level)."""
    x = _features(20_000, 32)
    flat = _timed(lambda: kmeans(x, 2048, iterations=3, block_rows=4096))

    def two_level():
        return _timed(lambda: hierarchical_kmeans(x, 2048, coarse_k=32, iterations=3))

    hierarchical = benchmark.pedantic(two_level, rounds=1, iterations=1)
    _report(benchmark, "flat k-means, K=2048", flat, "flat_s")
    _report(benchmark, "two-level k-means, 32 coarse", hierarchical, "hierarchical_s")
    _report(benchmark, "flat / two-level", flat / hierarchical, "speedup")


def test_margin_loss_step_cpu(benchmark):
    """Forward + backward of the loss: 1,024 regions, K = 20,000, D = 256, rho = 0.1."""
    torch.manual_seed(0)
    fn = MarginSoftmaxLoss(20_000, 256, sample_rate=0.1)
    x = torch.randn(1024, 256, requires_grad=True)
    offsets = torch.arange(1025)
    classes = torch.randint(0, 20_000, (1024,))
    steps = iter(range(10**6))

    def step():
        loss = fn(x, offsets, classes, next(steps))
        loss.backward()
        return loss

    seconds = benchmark.pedantic(lambda: _timed(step), rounds=3, iterations=1, warmup_rounds=1)
    _report(benchmark, "margin loss fwd+bwd, K=20k, rho=0.1", seconds * 1000, "ms_per_step")


@pytest.mark.gpu
def test_kmeans_iteration_cuda(benchmark):
    """One Lloyd iteration on CUDA, N = 200,000, D = 768, K = 65,536 (block 4,096 rows): the
    measured rows/s times 65,536 / 1M is the rate at K = 1M."""
    x = torch.from_numpy(_features(200_000, 768)).cuda()

    def run():
        torch.cuda.synchronize()
        seconds = _timed(lambda: kmeans(x, 65_536, iterations=1, device="cuda", block_rows=4096))
        torch.cuda.synchronize()
        return seconds

    seconds = benchmark.pedantic(run, rounds=2, iterations=1)
    rate = 200_000 / seconds
    _report(benchmark, "k-means iteration, CUDA, K=65,536", rate, "rows_per_s")
    _report(benchmark, "  extrapolated to K=1M", rate * 65_536 / 1_000_000, "rows_per_s_at_1M")


@pytest.mark.gpu
def test_margin_loss_step_cuda(benchmark):
    """Forward + backward of the loss on CUDA: 8,192 regions, K = 1,000,000, D = 1,024,
    rho = 0.1 (the paper's K; one rank holding every centre)."""
    torch.manual_seed(0)
    fn = MarginSoftmaxLoss(1_000_000, 1024, sample_rate=0.1).cuda()
    x = torch.randn(8192, 1024, device="cuda", requires_grad=True)
    offsets = torch.arange(8193, device="cuda")
    classes = torch.randint(0, 1_000_000, (8192,), device="cuda")
    steps = iter(range(10**6))

    def step():
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn(x, offsets, classes, next(steps)).backward()
        torch.cuda.synchronize()
        return time.perf_counter() - started

    seconds = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    _report(benchmark, "margin loss fwd+bwd, CUDA, K=1M", seconds * 1000, "ms_per_step")
