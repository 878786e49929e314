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

pytestmark = pytest.mark.dist


def test_a_two_process_tensor_parallel_run_has_the_loss_trace_of_one_process(
    dist, packed_shards, tiny_model_dir, tmp_path
):
    one, two = tmp_path / "one", tmp_path / "tp2"
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert name not in os.environ
    run_command.main(dist.run_args(packed_shards, one, tiny_model_dir), standalone_mode=False)
    tp = ("parallel.tp=2", "parallel.dp_shard=1")
    dist.run_workers(
        dist.run_cli, 2, dist.run_args(packed_shards, two, tiny_model_dir, *tp), timeout_s=180
    )
    assert "tp = 2" in (two / "recipe.toml").read_text()
    dist.assert_same_loss_trace(two, one, steps=2, rel=1e-5)
