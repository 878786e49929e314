"""Exact resume with real kills: N steps, SIGKILL, resume to 2N == 2N steps uninterrupted.

Each run is a real child process, killed with SIGKILL at a chosen point. Children are forked
from the test process (torch already imported; a fresh interpreter would spend most of the test
importing it) and run on one CPU thread, which also keeps forking clear of the OpenMP pool. The
run: `stage1_5-tiny` (all modules, per-module lr, weight decay), 6 steps of 2 micro-batches
over 5 in-memory micro-batches, so steps straddle epoch ends, a checkpoint every 2 steps.

Compared bitwise with the uninterrupted run: the loss of every step (from metrics.jsonl) and, in
the final checkpoint, every parameter and every AdamW state tensor.
"""

import multiprocessing
import time
import warnings

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_train.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint
from ov_train.memory_loader import InMemoryLoader
from ov_train.metrics_log import read_metrics
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.schedule import build_scheduler
from ov_train.train_loop import Trainer, TrainerHooks

STEPS, EVERY = 6, 2
TIMEOUT = 120


def _recipe(make_recipe):
    return make_recipe(
        f"train.steps={STEPS}",
        f"checkpoint.every={EVERY}",
        "checkpoint.keep_last=2",
        "train.grad_accumulation=2",
        "train.deterministic=true",
        base="stage1_5-tiny",
    )


def _train(recipe, batches, run_dir, pause_after_step, pause_in_save):
    """The child: train (resuming if possible), or pause at the asked point until killed."""
    torch.set_num_threads(1)
    marker = run_dir.with_name(run_dir.name + ".paused")

    def pause():
        marker.write_text("paused")
        time.sleep(TIMEOUT)

    hooks = TrainerHooks(
        on_step_end=lambda step, _: pause() if step == pause_after_step else None,
        before_checkpoint_commit=lambda _, step: pause() if step == pause_in_save else None,
    )
    Trainer(recipe, InMemoryLoader(batches, seed=3), run_dir, hooks=hooks).run()


def _start(recipe, batches, run_dir, pause_after_step=None, pause_in_save=None):
    context = multiprocessing.get_context("fork")
    process = context.Process(
        target=_train, args=(recipe, batches, run_dir, pause_after_step, pause_in_save)
    )
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        process.start()
    return process


def _run_to_the_end(*args):
    process = _start(*args)
    process.join(TIMEOUT)
    assert process.exitcode == 0


def _kill_when_paused(kill_paused, *args, **pause):
    run_dir = args[2]
    process = _start(*args, **pause)
    kill_paused(process, run_dir.with_name(run_dir.name + ".paused"), TIMEOUT)


def _final_state(checkpoint, recipe):
    torch.manual_seed(123)  # any start: everything is overwritten by the checkpoint
    model = LlavaOV(PRESETS["tiny"])
    freeze(model, recipe.model.trainable)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    resumed = load_checkpoint(
        checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, world=SingleProcess()
    )
    moments = {
        f"{index}.{key}": value
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
    }
    return model.state_dict(), moments, resumed


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def _assert_same_run(run_dir, reference_dir, recipe):
    assert _losses(run_dir) == _losses(reference_dir)
    final = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    params, moments, resumed = _final_state(final, recipe)
    ref_params, ref_moments, ref_resumed = _final_state(
        reference_dir / "checkpoints" / f"step_{STEPS:08d}", recipe
    )
    assert params.keys() == ref_params.keys()
    for name, tensor in params.items():
        assert torch.equal(tensor, ref_params[name]), name
    assert moments.keys() == ref_moments.keys()
    for name, tensor in moments.items():
        assert torch.equal(tensor, ref_moments[name]), name
    assert resumed.data_state == ref_resumed.data_state
    assert resumed.rng_state == ref_resumed.rng_state


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_recipe, make_batches):
    """The uninterrupted run."""
    recipe, batches = _recipe(make_recipe), make_batches(5, 2, 1)
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    _run_to_the_end(recipe, batches, run_dir)
    assert [step for step, _ in _losses(run_dir)] == list(range(1, STEPS + 1))
    return recipe, batches, run_dir


def test_kill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    reference, tmp_path, kill_paused
):
    recipe, batches, reference_dir = reference
    run_dir = tmp_path / "killed"
    _kill_when_paused(kill_paused, recipe, batches, run_dir, pause_after_step=EVERY + 1)
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{EVERY:08d}"
    assert len(_losses(run_dir)) == EVERY + 1  # a step past the checkpoint was logged
    _run_to_the_end(recipe, batches, run_dir)
    _assert_same_run(run_dir, reference_dir, recipe)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        f"step_{s:08d}" for s in (STEPS - EVERY, STEPS)
    ]


def test_kill_during_a_save_leaves_the_previous_checkpoint_usable(reference, tmp_path, kill_paused):
    recipe, batches, reference_dir = reference
    run_dir = tmp_path / "killed_saving"
    _kill_when_paused(kill_paused, recipe, batches, run_dir, pause_in_save=2 * EVERY)
    root = run_dir / "checkpoints"
    partial = root / f".tmp-step_{2 * EVERY:08d}"
    assert partial.is_dir()
    assert any(partial.rglob("*.distcp"))
    assert latest_checkpoint(root).name == f"step_{EVERY:08d}"
    _, _, resumed = _final_state(latest_checkpoint(root), recipe)
    assert resumed.step == EVERY
    _run_to_the_end(recipe, batches, run_dir)
    assert not partial.exists()
    _assert_same_run(run_dir, reference_dir, recipe)
