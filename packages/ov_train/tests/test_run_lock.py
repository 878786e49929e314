"""One run per run folder: a second run fails at once naming the holder; the lock goes with the
run (its end, or its process's death)."""

import os
import socket

import pytest
import torch

from ov_train.memory_loader import InMemoryLoader
from ov_train.parallel import SingleProcess
from ov_train.run_lock import LOCK_FILE, RunFolderInUseError, acquire_run_lock
from ov_train.train_loop import Trainer

CPU = torch.device("cpu")


def test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_holder(
    tmp_path, make_recipe, make_batches
):
    run_dir = tmp_path / "run"
    recipe = make_recipe("train.steps=1")
    with acquire_run_lock(run_dir, SingleProcess(), CPU) as held:
        with pytest.raises(RunFolderInUseError) as caught:
            Trainer(recipe, InMemoryLoader(make_batches(2)), run_dir).run()
        message = str(caught.value)
        assert str(run_dir) in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert f"run id {held.run_id:x}" in message
        assert not (run_dir / "checkpoints").exists()
        assert not (run_dir / "metrics.jsonl").exists()
    result = Trainer(recipe, InMemoryLoader(make_batches(2)), run_dir).run()
    assert result.final_step == 1
    with acquire_run_lock(run_dir, SingleProcess(), CPU):  # released at the run's end
        assert (run_dir / LOCK_FILE).is_file()


def test_the_lock_dies_with_its_process(tmp_path):
    run_dir = tmp_path / "run"
    child = os.fork()
    if child == 0:  # hold the lock, then die without releasing it
        acquire_run_lock(run_dir, SingleProcess(), CPU)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with acquire_run_lock(run_dir, SingleProcess(), CPU) as lock:
        assert lock.run_id > 0
