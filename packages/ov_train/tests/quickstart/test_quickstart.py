"""The quickstart end to end, in a reduced size: every artefact exists and loads."""

import json

import pytest
import torch
from click.testing import CliRunner

from ov_model import LlavaOV, OVProcessor
from ov_train.cli import main
from ov_train.quickstart.pipeline import QuickstartConfig, QuickstartError, run_quickstart


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "run"
    config = QuickstartConfig(
        out=out,
        images=60,
        eval_per_type=4,
        stage1_steps=3,
        stage1_5_steps=3,
        stage2_steps=6,
        progress=False,
    )
    run_quickstart(config)
    return out


def test_summary_records_every_stage_with_accuracies(reduced):
    out = reduced
    saved = json.loads((out / "summary.json").read_text())
    assert [stage["stage"] for stage in saved["stages"]] == ["1", "1.5", "2"]
    for stage, steps in zip(saved["stages"], (3, 3, 6), strict=True):
        assert stage["steps"] == steps
        assert stage["final_loss"] > 0
        assert stage["tokens_per_second"] > 0
        assert set(stage["accuracy_after"]) == {"colour", "shape", "count", "side"}
        assert all(0.0 <= value <= 1.0 for value in stage["accuracy_after"].values())
    # each stage starts where the previous one ended
    assert saved["stages"][1]["accuracy_before"] == saved["stages"][0]["accuracy_after"]
    packing = saved["data"]["questions"]["packing"]
    assert packing["samples_packed"] == saved["data"]["questions"]["counts"]["packed_copies"]
    assert saved["data"]["captions"]["selection"]["method"] == "ov_concepts.balance"
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_checkpoint_loads_with_its_processor(reduced):
    out = reduced
    model = LlavaOV.from_pretrained(out / "hf")
    processor = OVProcessor.from_pretrained(out / "hf")
    prompt = processor.prompt([{"from": "human", "value": "What colour is the shape?"}])
    with torch.no_grad():
        logits = model(prompt.input_ids[None]).logits
    assert logits.shape[-1] == model.config.text.vocab_size
    trained = LlavaOV.from_pretrained(out / "stage2" / "hf")
    for (name, a), (_, b) in zip(
        model.state_dict().items(), trained.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_used_folder_is_refused(reduced):
    out = reduced
    with pytest.raises(QuickstartError, match="not empty"):
        run_quickstart(QuickstartConfig(out=out, images=10))


def test_cli_lists_the_quickstart_with_its_defaults():
    result = CliRunner().invoke(main, ["quickstart", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # click wraps the help at any space
    assert "[default: runs/quickstart]" in text
    assert "[default: 1500" in text


@pytest.mark.slow
def test_full_quickstart_teaches_colour_far_above_chance(tmp_path):
    """The README's job at its default size (about 2.5 minutes on 2 cores)."""
    summary = run_quickstart(QuickstartConfig(out=tmp_path / "run", progress=False))
    final = summary.stages[-1].accuracy_after
    assert final["colour"] >= 0.6  # chance 1/6; measured 1.00
    assert summary.stages[0].accuracy_before["colour"] <= 0.2
    assert summary.stages[-1].final_loss < 0.5
