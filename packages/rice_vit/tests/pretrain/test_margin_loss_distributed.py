"""The sharded MarginSoftmaxLoss on 2 gloo processes equals one process: loss, gradients of the
embeddings (each rank's own rows) and of the centres (each rank's shard), rtol 1e-5.

One fork-started launch runs every check (workers inherit the cases; nothing is pickled)."""

import datetime
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rice_vit.errors import InputError
from rice_vit.pretrain.margin_loss import MarginSoftmaxLoss

pytestmark = pytest.mark.dist

K, D = 37, 8  # odd K: shards of 18 and 19 classes


def assert_close(got, want, *, rtol, atol=0.0):
    """|got - want| <= atol + rtol |want| elementwise, same shape and dtype (torch.allclose:
    torch.testing.assert_close imports torch.distributed.tensor, seconds on a busy machine)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    worst = (got - want).abs().max().item() if got.numel() else 0.0
    assert torch.allclose(got, want, rtol=rtol, atol=float(atol)), f"max |diff| {worst}"


def make_case(seed, sizes, multi):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(K, D, generator=g)
    per_rank = []
    for size in sizes:
        sets = []
        for i in range(size):
            count = 1 + (i % 3 if multi else 0)
            sets.append(torch.randperm(K, generator=g)[:count].tolist())
        first = torch.stack([centres[s[0]] for s in sets]) if sets else torch.zeros(0, D)
        embeddings = torch.randn(size, D, generator=g) * 0.3 + first / first.norm(dim=1)[:, None]
        offsets = torch.tensor(
            [0, *torch.tensor([len(s) for s in sets], dtype=torch.int64).cumsum(0).tolist()]
        )
        classes = torch.tensor([c for s in sets for c in s], dtype=torch.int64)
        per_rank.append((embeddings, offsets, classes))
    return centres, per_rank


CASES = {
    "arcface_multi_full": dict(seed=0, sizes=[5, 5], multi=True, margin_type="arcface", rate=1.0),
    "cosface_single_sampled": dict(
        seed=1, sizes=[6, 6], multi=False, margin_type="cosface", rate=0.3
    ),
    "cosface_rank1_empty": dict(seed=3, sizes=[6, 0], multi=True, margin_type="cosface", rate=0.5),
    "arcface_uneven_sampled": dict(
        seed=2, sizes=[7, 3], multi=True, margin_type="arcface", rate=0.5
    ),
}


def evaluate(case, world_rank=None, data_parallel_mean=False):
    """(loss, embedding grads per rank-slice, centre grad of this shard) for `case`, on this
    process's world (the whole batch on one process when not distributed)."""
    spec = CASES[case]
    centres, per_rank = make_case(spec["seed"], spec["sizes"], spec["multi"])
    fn = MarginSoftmaxLoss(
        K,
        D,
        margin_type=spec["margin_type"],
        sample_rate=spec["rate"],
        seed=11,
        data_parallel_mean=data_parallel_mean,
    )
    fn.load_full_weight(centres)
    if world_rank is None:  # one process, the global batch
        embeddings = torch.cat([e for e, _, _ in per_rank])
        classes = torch.cat([c for _, _, c in per_rank])
        counts = torch.cat([o.diff() for _, o, _ in per_rank])
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    else:
        embeddings, offsets, classes = per_rank[world_rank]
    x = embeddings.clone().requires_grad_(True)
    loss = fn(x, offsets, classes, step=3)
    loss.backward()
    return {"loss": loss.detach(), "grad_e": x.grad, "grad_w": fn.weight.grad}


def worker(rank):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    results = {}
    for case in CASES:
        results[case] = evaluate(case, world_rank=rank)
    results["dp_mean"] = evaluate("arcface_multi_full", rank, data_parallel_mean=True)
    results["range"] = MarginSoftmaxLoss(K, D).class_range
    # A bad input on one rank is an error on both (no rank left waiting on a collective).
    fn = MarginSoftmaxLoss(K, D)
    classes = torch.tensor([0, K + 5]) if rank == 1 else torch.tensor([0, 1])
    try:
        fn(torch.randn(2, D), torch.tensor([0, 1, 2]), classes, 0)
        results["error"] = None
    except InputError as error:
        results["error"] = str(error)
    return results


def test_two_gloo_ranks_equal_one_process():
    results = run_workers(worker, 2)
    for case, spec in CASES.items():
        want = evaluate(case)
        sizes = spec["sizes"]
        starts = [0, sizes[0]]
        for rank, got in enumerate(results):
            r = got[case]
            assert_close(r["loss"], want["loss"], rtol=1e-5, atol=0)
            rows = slice(starts[rank], starts[rank] + sizes[rank])
            scale = want["grad_e"].abs().max()
            assert_close(r["grad_e"], want["grad_e"][rows], rtol=1e-5, atol=1e-5 * scale)
            lo, hi = got["range"]
            scale = want["grad_w"].abs().max()
            assert_close(r["grad_w"], want["grad_w"][lo:hi], rtol=1e-5, atol=1e-5 * scale)
    assert [r["range"] for r in results] == [(0, 18), (18, 37)]
    # DDP-mean convention: embeddings' gradient x world, centres' gradient unchanged.
    want = evaluate("arcface_multi_full")
    for rank, got in enumerate(results):
        rows = slice(5 * rank, 5 * rank + 5)
        scale = want["grad_e"].abs().max()
        assert_close(
            got["dp_mean"]["grad_e"], 2 * want["grad_e"][rows], rtol=1e-5, atol=1e-5 * scale
        )
        assert torch.equal(got["dp_mean"]["grad_w"], got["arcface_multi_full"]["grad_w"])
    assert "rank(s) [1]" in results[0]["error"]
    assert "rank(s) [1]" in results[1]["error"]
    assert f"positive class {K + 5} outside" in results[1]["error"]


# ------------------------------------------------------------------------------ fork runner
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(fn, size, timeout_s=120.0):
    """`fn(rank)` on `size` forked processes forming a gloo world; their return values."""
    context = mp.get_context("fork")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        processes = [
            context.Process(target=_child, args=(fn, rank, size, port, out)) for rank in range(size)
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
            raise AssertionError("\n".join(failures))
        return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(size)]


def _child(fn, rank, size, port, out):
    code = 1
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size)
        )
        torch.set_num_threads(1)
        torch.save(fn(rank), out / f"rank{rank}.pt")
        code = 0
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
    finally:
        if code == 0 and dist.is_initialized():
            dist.destroy_process_group()
        os._exit(code)
