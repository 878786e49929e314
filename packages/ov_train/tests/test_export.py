"""Export: a checkpoint becomes an HF folder that ov_model loads with the trained logits."""

import pytest
import torch

from ov_model import LlavaOV, OVProcessor
from ov_train.errors import CheckpointError
from ov_train.export import export_checkpoint
from ov_train.memory_loader import InMemoryLoader
from ov_train.train_loop import Trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, make_recipe, tiny_model_dir, processor_batches):
    """A two-step Stage-2 run from the tiny model folder, and its trained model."""
    recipe = make_recipe(f"model.path={tiny_model_dir}", "train.steps=2")
    run_dir = tmp_path_factory.mktemp("export") / "run"
    trainer = Trainer(recipe, InMemoryLoader(processor_batches), run_dir)
    trainer.run()
    return run_dir, trainer.model.eval(), processor_batches[0].batch


def test_export_loads_in_ov_model_with_equal_logits(trained_run, tmp_path, tiny_model_dir):
    run_dir, trained, batch = trained_run
    out = export_checkpoint(run_dir, tmp_path / "hf")
    exported = LlavaOV.from_pretrained(out)
    with torch.no_grad():
        expected = trained(**batch.model_inputs()).logits
        logits = exported(**batch.model_inputs()).logits
    assert torch.equal(logits, expected)
    original = LlavaOV.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.equal(original(**batch.model_inputs()).logits, expected)
    processor = OVProcessor.from_pretrained(out)
    reference = OVProcessor.from_pretrained(tiny_model_dir)
    text = "a red circle"
    assert processor.tokenizer.encode(text) == reference.tokenizer.encode(text)
    assert {"config.json", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }


def test_export_can_cast_to_bf16(trained_run, tmp_path):
    run_dir, trained, _ = trained_run
    exported = LlavaOV.from_pretrained(export_checkpoint(run_dir, tmp_path / "hf", dtype="bf16"))
    assert {p.dtype for p in exported.parameters()} == {torch.bfloat16}
    expected = trained.projector.mlp[0].weight.detach().to(torch.bfloat16)
    assert torch.equal(exported.projector.mlp[0].weight, expected)


def test_export_refuses_a_folder_that_is_not_empty_or_a_missing_checkpoint(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        export_checkpoint(run_dir, tmp_path / "busy")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="choose one of"):
        export_checkpoint(run_dir, tmp_path / "hf", dtype="int8")
