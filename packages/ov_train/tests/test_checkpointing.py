"""Checkpoints: what is saved comes back, folders commit atomically, old ones are pruned, and a
checkpoint cannot run code when loaded."""

import contextlib
import copy
import json
import os
import pickle
import random

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_train.checkpointing import (
    TENSORS_DIR,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
    resolve_checkpoint,
    save_checkpoint,
)
from ov_train.errors import CheckpointError
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.rng import capture_rng_state, restore_rng_state
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan
from ov_train.train_step import train_step

WORLD = SingleProcess()


def _training_state(recipe, seed=0):
    torch.manual_seed(seed)
    model = LlavaOV(PRESETS["tiny"]).train()
    freeze(model, recipe.model.trainable)
    optimizer = build_optimizer(model, recipe)
    return model, optimizer, build_scheduler(optimizer, recipe)


def _save(root, step, model, optimizer, scheduler, recipe, **changes):
    arguments = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "data_state": {"epoch": 1, "position": 7},
        "rng_state": capture_rng_state(),
        "recipe": recipe,
        "model_config": model.config,
        "processor_dir": None,
        "world": WORLD,
        "keep_last": 3,
        **changes,
    }
    return save_checkpoint(root, step, **arguments)


@pytest.fixture
def trained(make_recipe, samples):
    """A tiny model, optimizer and scheduler after two steps."""
    recipe = make_recipe("optim.weight_decay=0.1")
    model, optimizer, scheduler = _training_state(recipe)
    for step in (1, 2):
        train_step(
            model,
            optimizer,
            scheduler,
            StepPlan.of([samples.pack(samples.make_samples(3, seed=step))]),
            world=WORLD,
            device=torch.device("cpu"),
            autocast=contextlib.nullcontext,
            clip_grad_norm=1.0,
            step=step,
        )
    return recipe, model, optimizer, scheduler


def test_a_checkpoint_restores_model_optimizer_scheduler_data_and_rng(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    random.seed(5)
    torch.manual_seed(5)
    folder = _save(tmp_path, 2, model, optimizer, scheduler, recipe)
    expected_draws = (random.random(), torch.rand(3))
    model2, optimizer2, scheduler2 = _training_state(recipe, seed=99)
    resumed = load_checkpoint(
        folder, model=model2, optimizer=optimizer2, scheduler=scheduler2, world=WORLD
    )
    assert resumed.step == 2
    assert resumed.data_state == {"epoch": 1, "position": 7}
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state, state2 = optimizer.state_dict(), optimizer2.state_dict()
    for index, moments in state["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, state2["state"][index][key]), (index, key)
    assert state["param_groups"] == state2["param_groups"]
    assert scheduler2.state_dict() == scheduler.state_dict()
    restore_rng_state(resumed.rng_state)
    assert (random.random(), torch.rand(3).tolist()) == (
        expected_draws[0],
        expected_draws[1].tolist(),
    )


def test_checkpoint_folder_holds_the_documented_files(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    processor = tmp_path / "processor"
    processor.mkdir()
    (processor / "tokenizer.json").write_text("{}")
    folder = _save(
        tmp_path / "ckpt", 2, model, optimizer, scheduler, recipe, processor_dir=processor
    )
    assert folder.name == "step_00000002"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        TENSORS_DIR,
        "trainer_state.json",
        "rank_00000.json",
        "recipe.toml",
        "config.json",
        "processor",
    }
    assert (folder / "processor" / "tokenizer.json").read_text() == "{}"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert {g["name"] for g in state["optimizer_param_groups"]} >= {"llm.decay", "llm.no_decay"}


def test_only_the_last_checkpoints_are_kept_and_leftovers_are_ignored(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    for step in (1, 2, 3):
        _save(tmp_path, step, model, optimizer, scheduler, recipe, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    stale = tmp_path / ".tmp-step_00000004"
    stale.mkdir()
    (stale / "trainer_state.json").write_text("{}")
    (tmp_path / "step_00000009").mkdir()  # no trainer_state.json: not complete
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    _save(tmp_path, 4, model, optimizer, scheduler, recipe, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    with pytest.raises(CheckpointError, match="a checkpoint of step 4 already exists"):
        _save(tmp_path, 4, model, optimizer, scheduler, recipe)


def test_resolve_checkpoint_accepts_a_run_folder_a_root_or_a_checkpoint(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    root = tmp_path / "run" / "checkpoints"
    _save(root, 1, model, optimizer, scheduler, recipe)
    latest = _save(root, 2, model, optimizer, scheduler, recipe)
    assert resolve_checkpoint(tmp_path / "run") == latest
    assert resolve_checkpoint(root) == latest
    assert resolve_checkpoint(root / "step_00000001").name == "step_00000001"
    with pytest.raises(CheckpointError, match="no complete checkpoint here"):
        resolve_checkpoint(tmp_path)


def test_a_data_state_that_is_not_json_is_an_error(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    with pytest.raises(CheckpointError, match="state is not plain JSON"):
        _save(tmp_path, 1, model, optimizer, scheduler, recipe, data_state={"t": torch.zeros(1)})


def test_resuming_with_other_trainable_modules_is_refused(trained, tmp_path, make_recipe):
    recipe, model, optimizer, scheduler = trained
    folder = _save(tmp_path, 2, model, optimizer, scheduler, recipe)
    stage1 = make_recipe(base="stage1-tiny")
    model2, optimizer2, scheduler2 = _training_state(stage1)
    with pytest.raises(CheckpointError, match=r"did model\.trainable change"):
        load_checkpoint(
            folder, model=model2, optimizer=optimizer2, scheduler=scheduler2, world=WORLD
        )


def test_load_model_state_reads_only_the_model(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    folder = _save(tmp_path, 2, model, optimizer, scheduler, recipe)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    load_model_state(folder, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoint_metadata_that_would_run_code_is_refused(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    folder = _save(tmp_path, 2, model, optimizer, scheduler, recipe)
    target = tmp_path / "pwned"
    (folder / TENSORS_DIR / ".metadata").write_bytes(pickle.dumps(_Exploit(target)))
    with pytest.raises(CheckpointError, match=r"refuses to load posix\.system"):
        load_model_state(folder, copy.deepcopy(model))
    assert not target.exists()


def test_a_format_1_checkpoint_of_one_process_still_resumes(trained, tmp_path):
    recipe, model, optimizer, scheduler = trained
    folder = _save(tmp_path, 2, model, optimizer, scheduler, recipe)
    state = json.loads((folder / "trainer_state.json").read_text())
    data = state.pop("data")
    (folder / "trainer_state.json").write_text(json.dumps({**state, "format": 1}))
    rank = json.loads((folder / "rank_00000.json").read_text())
    (folder / "rank_00000.json").write_text(json.dumps({**rank, "data": data}))
    model2, optimizer2, scheduler2 = _training_state(recipe, seed=99)
    resumed = load_checkpoint(
        folder, model=model2, optimizer=optimizer2, scheduler=scheduler2, world=WORLD
    )
    assert (resumed.step, resumed.data_state) == (2, {"epoch": 1, "position": 7})
    assert resumed.rng_state == rank["rng"]
    assert resumed.saved_world_size == 1
    (folder / "trainer_state.json").write_text(json.dumps({**state, "format": 9}))
    with pytest.raises(CheckpointError, match=r"format 9, this version reads \[1, 2\]"):
        load_checkpoint(
            folder, model=model2, optimizer=optimizer2, scheduler=scheduler2, world=WORLD
        )


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    """The process umask set to the parameter for the test, restored after."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_checkpoints_and_exports_are_readable_by_the_group_as_the_umask_allows(
    trained, tmp_path, umask
):
    from ov_train.export import export_checkpoint

    recipe, model, optimizer, scheduler = trained
    checkpoint = _save(tmp_path / "checkpoints", 2, model, optimizer, scheduler, recipe)
    export_checkpoint(checkpoint, tmp_path / "hf", max_shard_size="100KB")
    roots = [tmp_path / "checkpoints", tmp_path / "hf"]
    written = [path for root in roots for path in (root, *root.rglob("*"))]
    assert {"trainer_state.json", ".metadata", "model.safetensors.index.json"} <= {
        p.name for p in written
    }
    expected = {"folder": 0o777 & ~umask, "file": 0o666 & ~umask}
    assert {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in written} == {
        str(p.relative_to(tmp_path)): expected["folder" if p.is_dir() else "file"] for p in written
    }
