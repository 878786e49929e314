"""Choosing the checkpoint to resume from: a corrupt latest one falls back to the previous with
a warning, `resume_from` picks an older one and sets the newer aside, and both resumed runs
continue the loss trace of the uninterrupted run."""

import logging
import shutil

import pytest

from ov_train.checkpointing import TENSORS_DIR, verify_checkpoint
from ov_train.errors import CheckpointError
from ov_train.memory_loader import InMemoryLoader
from ov_train.metrics_log import read_metrics
from ov_train.parallel import SingleProcess
from ov_train.resume_point import choose_resume_checkpoint
from ov_train.train_loop import Trainer

WORLD = SingleProcess()


def _recipe(make_recipe):
    return make_recipe("train.steps=4", "checkpoint.every=2", "train.deterministic=true")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_recipe, make_batches):
    """A 4-step run with checkpoints at steps 2 and 4, and its loss trace."""
    recipe, batches = _recipe(make_recipe), make_batches(3, 2, 4)
    run_dir = tmp_path_factory.mktemp("resume_point") / "run"
    result = Trainer(recipe, InMemoryLoader(batches, seed=1), run_dir).run()
    return recipe, batches, run_dir, result.losses


def _copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, copy / "checkpoints"


def _truncate_distcp(checkpoint):
    shard = next((checkpoint / TENSORS_DIR).glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


def _flip_a_distcp_byte(checkpoint):
    shard = next((checkpoint / TENSORS_DIR).glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the recorded hash can tell
    shard.write_bytes(bytes(data))


def _break_trainer_state(checkpoint):
    (checkpoint / "trainer_state.json").write_text('{"format": 2, "step"')


def _drop_rank_file(checkpoint):
    (checkpoint / "rank_00000.json").unlink()


def _truncate_metadata(checkpoint):
    metadata = checkpoint / TENSORS_DIR / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:100])


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_truncate_distcp, r"__0_0\.distcp: \d+ bytes, its index needs \d+ bytes"),
        (_flip_a_distcp_byte, r"__0_0\.distcp: SHA-256 differs from the one recorded"),
        (_break_trainer_state, r"trainer_state\.json: not valid JSON"),
        (_drop_rank_file, r"rank_00000\.json: missing"),
        (_truncate_metadata, r"\.metadata: unreadable"),
    ],
)
def test_a_corrupt_latest_checkpoint_is_set_aside_for_the_previous_one(
    finished, tmp_path, caplog, corrupt, reason
):
    _, _, run_dir, _ = finished
    _, root = _copy(run_dir, tmp_path)
    corrupt(root / "step_00000004")
    with pytest.raises(CheckpointError, match=reason):
        verify_checkpoint(root / "step_00000004")
    verify_checkpoint(root / "step_00000002")
    with caplog.at_level(logging.WARNING, logger="ov_train"):
        chosen = choose_resume_checkpoint(root, WORLD)
    assert chosen == root / "step_00000002"
    assert (root / ".corrupt-step_00000004").is_dir()
    assert not (root / "step_00000004").exists()
    assert "step_00000004 is unusable" in caplog.text
    assert "falling back" in caplog.text


def test_a_run_resumes_past_a_truncated_latest_checkpoint_and_matches(finished, tmp_path, caplog):
    recipe, batches, run_dir, losses = finished
    copy, root = _copy(run_dir, tmp_path)
    _truncate_distcp(root / "step_00000004")
    with caplog.at_level(logging.WARNING, logger="ov_train"):
        result = Trainer(recipe, InMemoryLoader(batches, seed=1), copy).run()
    assert "unusable" in caplog.text
    assert (result.start_step, result.final_step) == (2, 4)
    assert result.losses == losses[2:]
    assert [(r["step"], r["loss"]) for r in read_metrics(copy / "metrics.jsonl")] == losses
    verify_checkpoint(root / "step_00000004")  # saved again, whole


def test_resume_from_an_older_step_sets_newer_checkpoints_aside_and_matches(finished, tmp_path):
    recipe, batches, run_dir, losses = finished
    copy, root = _copy(run_dir, tmp_path)
    result = Trainer(recipe, InMemoryLoader(batches, seed=1), copy, resume_from=2).run()
    assert (result.start_step, result.final_step) == (2, 4)
    assert result.losses == losses[2:]
    assert (root / ".discarded-step_00000004" / "trainer_state.json").is_file()
    assert [(r["step"], r["loss"]) for r in read_metrics(copy / "metrics.jsonl")] == losses


def test_resume_from_a_step_without_checkpoint_or_all_corrupt_is_an_error(finished, tmp_path):
    _, _, run_dir, _ = finished
    _, root = _copy(run_dir, tmp_path)
    with pytest.raises(
        CheckpointError, match=r"no complete checkpoint of step 3 \(there are \[2, 4\]\)"
    ):
        choose_resume_checkpoint(root, WORLD, resume_from=3)
    _truncate_distcp(root / "step_00000002")
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp"):
        choose_resume_checkpoint(root, WORLD, resume_from=2)  # an explicit choice never falls back
    _break_trainer_state(root / "step_00000004")
    with pytest.raises(CheckpointError, match="every checkpoint is unusable"):
        choose_resume_checkpoint(root, WORLD)
