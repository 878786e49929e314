"""`ov-train run` on 2 processes with tp = 2 (sequence parallel) trains like 1 process.

Both ranks form one tp group: they read the same micro-batches (the loader's data rank is the
dp coordinate, here 0 for both), pad each row to a multiple of 2 tokens, and the loss trace
written to metrics.jsonl must equal the single-process run's (up to float summation order:
rel 1e-5). The data are the shared `packed_shards` corpus (six captioned images); the workers
are forked with the `dist` harness (60 s process-group timeout).
"""

import os

import pytest

from ov_train.commands import run_command
from ov_train.metrics_log import read_metrics

pytestmark = pytest.mark.dist

STEPS = 2


def _args(shards, run_dir, tiny_model_dir, *extra: str) -> list[str]:
    overrides = [
        f"model.path={tiny_model_dir}",
        f"train.steps={STEPS}",
        "train.grad_accumulation=2",
        "train.micro_batch_tokens=1",  # one bin per micro-batch
        "train.deterministic=true",
        "train.dtype=fp32",
        "checkpoint.every=100",
        "data.num_workers=0",
        "parallel.timeout_s=60",
        "logging.progress_bar=false",
        "logging.plot=false",
        *extra,
    ]
    sets = [part for override in overrides for part in ("--set", override)]
    return ["stage2-tiny", "--data", str(shards), "--out", str(run_dir), *sets]


def _cli_worker(rank, args):
    run_command.main(args, standalone_mode=False)


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_a_two_process_tensor_parallel_run_has_the_loss_trace_of_one_process(
    dist, packed_shards, tiny_model_dir, tmp_path
):
    one, two = tmp_path / "one", tmp_path / "tp2"
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert name not in os.environ
    run_command.main(_args(packed_shards, one, tiny_model_dir), standalone_mode=False)
    tp = ("parallel.tp=2", "parallel.dp_shard=1")
    dist.run_workers(_cli_worker, 2, _args(packed_shards, two, tiny_model_dir, *tp), timeout_s=180)
    assert "tp = 2" in (two / "recipe.toml").read_text()
    want, got = _losses(one), _losses(two)
    assert [step for step, _ in want] == list(range(1, STEPS + 1))
    assert [step for step, _ in got] == [step for step, _ in want]  # each line once
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
