"""The training commands: recipes, run (on packed shards from `prepare`), export."""

import re
import tomllib

import pytest
from click.testing import CliRunner

from ov_model import LlavaOV
from ov_train.commands import export_command, recipes_command, run_command
from ov_train.config_io import recipe_from_dict
from ov_train.metrics_log import read_metrics
from ov_train.recipes import RECIPES


def _invoke(command, *args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    return result


def test_recipes_lists_every_registered_recipe():
    result = _invoke(recipes_command)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["name", "stage", "trainable"]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == list(RECIPES)
    assert re.search(
        r"^stage1-4b\s+1\s+projector\s+0.0001\s+2500\s+8\s+32768$", result.output, re.M
    )


def test_recipes_name_prints_a_toml_file_of_the_recipe():
    result = _invoke(recipes_command, "stage1_5-8b")
    assert result.exit_code == 0, result.output
    assert recipe_from_dict(tomllib.loads(result.output)) == RECIPES["stage1_5-8b"]
    unknown = _invoke(recipes_command, "stage9-8b")
    assert unknown.exit_code == 2
    assert "neither a registered recipe nor a TOML file" in unknown.output


def test_run_show_prints_the_recipe_with_overrides_and_data(tmp_path):
    result = _invoke(
        run_command, "stage2-4b", "--set", "optim.lr=2e-5", "--data", tmp_path, "--show"
    )
    assert result.exit_code == 0, result.output
    recipe = recipe_from_dict(tomllib.loads(result.output))
    assert recipe.optim.lr == 2e-5
    assert recipe.data.path == str(tmp_path)
    assert recipe.train == RECIPES["stage2-4b"].train


def test_run_reports_recipe_errors_in_one_line_naming_the_key():
    result = _invoke(run_command, "stage2-tiny", "--set", "optim.lrr=1")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: unknown key optim.lrr; did you mean optim.lr?"
    missing = _invoke(run_command, "stage2-tiny")
    assert missing.exit_code == 2
    assert "model.path is required" in missing.output


def test_run_refuses_a_wrong_data_folder_before_loading_the_model(
    tmp_path, tiny_model_dir, monkeypatch
):
    import ov_train.train_loop

    def must_not_load(*args, **kwargs):
        raise AssertionError("the processor was loaded before --data was checked")

    monkeypatch.setattr(ov_train.train_loop, "load_processor", must_not_load)
    (tmp_path / "notes").mkdir()
    result = _invoke(
        run_command, "stage2-tiny", "--model", tiny_model_dir, "--data", tmp_path / "notes"
    )
    assert result.exit_code == 2, result.output
    assert f"Error: {tmp_path / 'notes'}" in result.output


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (run_command, ["--set", "--data", "--out", "--resume", "--resume-from", "--show"]),
        (export_command, ["--out", "--store-dtype", "--max-shard-size"]),
    ],
)
def test_help_shows_every_option_with_its_default(command, options):
    result = _invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for option in options:
        assert option in text
    if command is run_command:
        assert "[default: (the recipe's data.path)]" in text
        assert "[default: (runs/<recipe name>)]" in text
        assert "[default: resume]" in text
    else:
        assert "[default: float32]" in text
        assert "[default: 5GB]" in text
        assert "[required]" in text


def test_run_trains_on_prepared_shards_then_export_loads(tmp_path, tiny_model_dir, packed_shards):
    run_dir = tmp_path / "run"
    args = [
        "stage2-tiny",
        "--data",
        packed_shards,
        "--out",
        run_dir,
        "--set",
        f"model.path={tiny_model_dir}",
        "--set",
        "train.steps=2",
        "--set",
        "train.micro_batch_tokens=256",
        "--set",
        "logging.progress_bar=false",
    ]
    result = _invoke(run_command, *args)
    assert result.exit_code == 0, result.output
    assert "steps:           0 -> 2" in result.output
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
    again = _invoke(run_command, *args, "--set", "train.steps=3")
    assert again.exit_code == 0, again.output
    assert "steps:           2 -> 3" in again.output
    refused = _invoke(run_command, *args, "--no-resume")
    assert refused.exit_code == 2
    assert "already has checkpoints" in refused.output
    started_over = _invoke(run_command, *args, "--overwrite")  # not resumed: from step 0
    assert started_over.exit_code == 0, started_over.output
    assert "steps:           0 -> 2" in started_over.output
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
    exported = _invoke(export_command, run_dir, "--out", tmp_path / "hf")
    assert exported.exit_code == 0, exported.output
    assert LlavaOV.from_pretrained(tmp_path / "hf").config.text.vocab_size > 0
    exported_again = _invoke(export_command, run_dir, "--out", tmp_path / "hf")
    assert exported_again.exit_code == 2
    assert "pass --overwrite" in exported_again.output
