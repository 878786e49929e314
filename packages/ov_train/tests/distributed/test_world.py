"""`init_world`: one process without torchrun, checked errors before any process group starts,
and a process-group timeout that turns a dead peer into an error."""

import time

import pytest
import torch
import torch.distributed as torch_dist

from ov_train.config import ParallelConfig
from ov_train.errors import RecipeError, TrainingError
from ov_train.parallel import SingleProcess, init_world, is_main

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def torchrun_env(monkeypatch):
    """A clean torchrun environment; set(**values) fills it."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    return set_env


@pytest.mark.parametrize("world_size", [None, 1])
def test_without_torchrun_the_world_is_one_process_on_the_recipe_device(torchrun_env, world_size):
    if world_size is not None:
        torchrun_env(WORLD_SIZE=world_size, RANK=0, LOCAL_RANK=0)
    world = init_world(ParallelConfig(), "cpu")
    assert world == SingleProcess(device=torch.device("cpu"))
    assert is_main(world)
    value = torch.tensor([2.0])
    assert world.sum(value) is value
    world.barrier()
    world.close()
    assert not torch_dist.is_initialized()


def test_degrees_that_do_not_fit_the_world_fail_before_a_process_group_starts(torchrun_env):
    torchrun_env(WORLD_SIZE=2, RANK=0, LOCAL_RANK=0)
    with pytest.raises(RecipeError, match="dp_replicate 3 x cp 1 x tp 1 = 3"):
        init_world(ParallelConfig(dp_replicate=3), "cpu")
    with pytest.raises(RecipeError, match="1 x dp_shard 4 = 4 processes, but the run has 2"):
        init_world(ParallelConfig(dp_shard=4), "cpu")
    torchrun_env(WORLD_SIZE=1)
    with pytest.raises(RecipeError, match="1 processes cannot be split into pp 1 x dp_replicate 2"):
        init_world(ParallelConfig(dp_replicate=2), "cpu")
    assert not torch_dist.is_initialized()


def test_a_torchrun_environment_missing_its_rank_is_an_error(torchrun_env):
    torchrun_env(WORLD_SIZE=2, LOCAL_RANK=0)
    with pytest.raises(TrainingError, match="RANK is not set although WORLD_SIZE is"):
        init_world(ParallelConfig(), "cpu")
    torchrun_env(RANK="one")
    with pytest.raises(TrainingError, match="RANK='one' is not an integer"):
        init_world(ParallelConfig(), "cpu")
    torchrun_env(RANK=2)
    with pytest.raises(TrainingError, match=r"RANK=2 is outside 0\.\.1"):
        init_world(ParallelConfig(), "cpu")


def test_one_gpu_named_for_every_process_is_refused(torchrun_env):
    torchrun_env(WORLD_SIZE=2, RANK=0, LOCAL_RANK=0)
    with pytest.raises(TrainingError, match="'cuda:1', one GPU for every process"):
        init_world(ParallelConfig(), "cuda:1")
    assert not torch_dist.is_initialized()


def _timeout_worker(rank, timeout_s):
    world = init_world(ParallelConfig(timeout_s=timeout_s), "cpu")
    if rank == 1:
        time.sleep(3 * timeout_s)  # a stuck peer: never joins the sum
        return None
    start = time.monotonic()
    try:
        world.sum(torch.ones(1))
    except RuntimeError as error:  # the outcome under test, returned to the test
        return {"error": str(error), "waited": time.monotonic() - start}
    return {"error": None, "waited": time.monotonic() - start}


@pytest.mark.dist
def test_a_rank_waiting_on_a_stuck_peer_fails_after_the_process_group_timeout(dist):
    timeout_s = 2.0
    first, _ = dist.run_workers(_timeout_worker, 2, timeout_s, timeout_s=60)
    assert "Timed out waiting 2000ms" in first["error"]
    assert timeout_s * 0.9 <= first["waited"] < timeout_s * 2.5
