"""The training loop: it trains, writes its run folder, freezes what the recipe freezes, and
treats optional sinks (TensorBoard) as optional."""

import logging
import math
import sys

import pytest
import torch

from ov_model import PRESETS, LlavaOV
from ov_train.config_io import load_recipe
from ov_train.errors import CheckpointError
from ov_train.export import export_checkpoint
from ov_train.memory_loader import InMemoryLoader
from ov_train.metrics_log import read_metrics
from ov_train.train_loop import Trainer, TrainerHooks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_run_writes_recipe_processor_metrics_plot_and_checkpoints(
    tmp_path, make_recipe, tiny_model_dir, processor_batches
):
    recipe = make_recipe(
        f"model.path={tiny_model_dir}", "train.steps=3", "checkpoint.every=2", "logging.plot=true"
    )
    run_dir = tmp_path / "run"
    result = Trainer(recipe, InMemoryLoader(processor_batches), run_dir).run()
    assert load_recipe(run_dir / "recipe.toml") == recipe
    assert (run_dir / "processor" / "tokenizer.json").is_file()
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) >= {"loss", "grad_norm", "lr", "tokens", "tokens_per_s", "elapsed_s"}
        assert set(record["lr"]) == {
            f"{m}.{d}" for m in ("vision", "projector", "llm") for d in ("decay", "no_decay")
        }
    assert result.losses == [(r["step"], r["loss"]) for r in records]
    assert result.final_step == 3
    assert result.tokens_per_second > 0
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert result.plot_path == run_dir / "loss.png"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000003"]
    assert (result.last_checkpoint / "processor" / "tokenizer.json").is_file()


def test_training_lowers_the_loss_on_repeated_data(
    tmp_path, make_recipe, tiny_model_dir, processor_batches
):
    recipe = make_recipe(
        f"model.path={tiny_model_dir}",
        "train.steps=12",
        "train.grad_accumulation=1",
        "optim.lr=2e-3",
        "optim.lr_vision=none",
        "schedule.warmup_fraction=0",
        "checkpoint.every=100",
    )
    result = Trainer(recipe, InMemoryLoader(processor_batches[:1]), tmp_path / "run").run()
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < 0.5 * losses[0]


def test_stage1_changes_the_projector_only(tmp_path, make_recipe, tiny_model, make_batches):
    recipe = make_recipe("train.steps=2", base="stage1-tiny")
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    trainer = Trainer(recipe, InMemoryLoader(make_batches(4)), tmp_path / "run", model=tiny_model)
    trainer.run()
    for name, parameter in trainer.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == name.startswith("projector."), name


def test_no_resume_refuses_a_run_folder_with_checkpoints(tmp_path, make_recipe, make_batches):
    recipe = make_recipe("train.steps=1")
    Trainer(recipe, InMemoryLoader(make_batches(2)), tmp_path / "run").run()
    again = Trainer(recipe, InMemoryLoader(make_batches(2)), tmp_path / "run", resume=False)
    with pytest.raises(CheckpointError, match="already has checkpoints"):
        again.run()


def test_a_finished_run_resumed_with_more_steps_continues(tmp_path, make_recipe, make_batches):
    run_dir = tmp_path / "run"
    Trainer(make_recipe("train.steps=2"), InMemoryLoader(make_batches(3)), run_dir).run()
    more = make_recipe("train.steps=3")
    result = Trainer(more, InMemoryLoader(make_batches(3)), run_dir).run()
    assert (result.start_step, result.final_step) == (2, 3)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_tensorboard_that_cannot_be_imported_is_a_notice_not_a_failure(
    tmp_path, make_recipe, make_batches, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    recipe = make_recipe("train.steps=1", "logging.tensorboard=true")
    with caplog.at_level(logging.WARNING, logger="ov_train"):
        result = Trainer(recipe, InMemoryLoader(make_batches(2)), tmp_path / "run").run()
    assert result.final_step == 1
    assert "TensorBoard logging skipped" in caplog.text
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_events_are_written_when_available(tmp_path, make_recipe, make_batches):
    pytest.importorskip("tensorboard")
    recipe = make_recipe("train.steps=1", "logging.tensorboard=true")
    Trainer(recipe, InMemoryLoader(make_batches(2)), tmp_path / "run").run()
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_deterministic_mode_is_restored_after_the_run(tmp_path, make_recipe, make_batches):
    assert not torch.are_deterministic_algorithms_enabled()
    recipe = make_recipe("train.steps=1", "train.deterministic=true")
    seen = []
    hooks = TrainerHooks(
        on_step_end=lambda step, _: seen.append(torch.are_deterministic_algorithms_enabled())
    )
    Trainer(recipe, InMemoryLoader(make_batches(2)), tmp_path / "run", hooks=hooks).run()
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
def test_a_cuda_run_trains_in_bf16_autocast_and_resumes(tmp_path, make_recipe, make_batches):
    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    model = LlavaOV(PRESETS["tiny"])
    seen = []
    model.language_model.layers[0].mlp.register_forward_hook(
        lambda module, args, output: seen.append(output.dtype)
    )
    recipe = make_recipe("train.steps=2", "train.device=cuda", "checkpoint.every=1")
    result = Trainer(recipe, InMemoryLoader(make_batches(3)), run_dir, model=model).run()
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype is torch.float32 and p.is_cuda for p in model.parameters())
    assert all(math.isfinite(loss) for _, loss in result.losses)
    more = make_recipe("train.steps=3", "train.device=cuda", "checkpoint.every=1")
    resumed = Trainer(more, InMemoryLoader(make_batches(3)), run_dir).run()
    assert (resumed.start_step, resumed.final_step) == (2, 3)
    exported = LlavaOV.from_pretrained(export_checkpoint(run_dir, tmp_path / "hf"))
    assert {p.dtype for p in exported.parameters()} == {torch.float32}
