"""`prepare_command`: options mapped from PrepareConfig with defaults shown, a real run, errors."""

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ov_train.data.prepare_cli import prepare_command
from ov_train.data.prepare_config import PrepareConfig
from ov_train.data.report import load_report


def test_help_lists_every_config_field_with_its_default():
    result = CliRunner().invoke(prepare_command, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for config_field in dataclasses.fields(PrepareConfig):
        if config_field.name in ("inputs", "out_dir"):
            continue
        flag = f"--{config_field.name.replace('_', '-')}"
        # two fields take the spelling all the onevision CLIs share (cli_conventions)
        flag = {"--max-shard-bytes": "--max-shard-size", "--progress": "--quiet"}.get(flag, flag)
        assert flag in result.output
    assert "[default: 8192; x>=1]" in result.output
    assert "[default: (max_length); x>=1]" in result.output
    assert "[default: verify-images]" in result.output
    assert "--parquet-caption-column TEXT" in result.output


def test_importing_the_command_and_package_does_not_import_torch():
    code = "import sys, ov_train.data, ov_train.data.prepare_cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_package_exports_resolve():
    import ov_train.data

    for name in ov_train.data.__all__:
        assert getattr(ov_train.data, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = ov_train.data.nothing


def test_a_run_over_all_three_formats(tmp_path, raw_corpus, tiny_model_dir):
    llava, webdataset, parquet, captions = raw_corpus.inputs
    arguments = [
        *("--llava", str(llava.path), "--image-root", str(llava.image_root)),
        *("--webdataset", str(webdataset.path)),
        *("--parquet", str(parquet.path), "--parquet", str(captions.path)),
        *("--model", str(tiny_model_dir), "--out", str(tmp_path / "out")),
        *("--max-length", "160", "--max-bins-per-shard", "4", "--quiet", "--workers", "1"),
    ]
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 0, result.output
    report = load_report(tmp_path / "out")
    assert report.counts.packed == len(raw_corpus.good)
    assert report.counts.rejected == len(raw_corpus.bad)
    assert report.shards["num_shards"] == -(-report.shards["num_bins"] // 4)
    assert f"{report.counts.rows} samples: {len(raw_corpus.good)} packed" in result.output
    assert "undecodable_image: 4" in result.output


def test_errors_are_one_line_and_usage_is_checked(tmp_path, raw_corpus, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    llava = raw_corpus.inputs[0]
    base = ["--model", str(tiny_model_dir), "--out", str(out)]
    result = CliRunner().invoke(prepare_command, [*base, "--llava", str(llava.path)])
    assert result.exit_code == 2
    assert "Error: " in result.output
    assert "not empty" in result.output
    result = CliRunner().invoke(prepare_command, base)
    assert result.exit_code == 2
    assert "give at least one input" in result.output
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    result = CliRunner().invoke(
        prepare_command,
        [*base, "--llava", str(llava.path), "--select-ids", str(ids), "--balanced", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "not both" in result.output


def test_recipe_gives_epochs_per_run_and_warns_on_a_capacity_that_does_not_divide_its_budget(
    tmp_path, raw_corpus, tiny_model_dir
):
    from ov_train.config_io import apply_overrides, save_recipe
    from ov_train.data.bin_table import load_bin_table
    from ov_train.data.run_fit import run_fit
    from ov_train.recipes import RECIPES

    llava = raw_corpus.inputs[0]
    base = [
        *("--llava", str(llava.path), "--image-root", str(llava.image_root)),
        *("--model", str(tiny_model_dir), "--max-length", "160", "--quiet", "--workers", "1"),
    ]
    result = CliRunner().invoke(
        prepare_command, [*base, "--out", str(tmp_path / "a"), "--recipe", "stage1-tiny"]
    )
    assert result.exit_code == 0, result.output
    report = load_report(tmp_path / "a")
    table = load_bin_table(tmp_path / "a" / "shards")
    expected = run_fit(
        table.tokens,
        report.counts.packed_copies,
        capacity=160,
        recipe_name="stage1-tiny",
        steps=60,
        grad_accumulation=2,
        micro_batch_tokens=2048,
        seed=0,
    )
    assert report.run_fit == expected.to_builtins()
    assert report.run_fit["tokens"] == report.tokens.llm_tokens
    assert expected.summary() in result.output
    assert (
        "Warning: stage1-tiny's train.micro_batch_tokens 2,048 is not a multiple of packing "
        "capacity 160: a micro-batch holds at most 12 full bins (1,920 tokens), 128 tokens (6%) "
        "of the budget unused; pack with --capacity 128"
    ) in result.output
    assert "## Fit to the recipe" in (tmp_path / "a" / "report.md").read_text()

    matching = save_recipe(
        apply_overrides(RECIPES["stage1-tiny"], ["train.micro_batch_tokens=1600"]),
        tmp_path / "mine.toml",
    )
    result = CliRunner().invoke(
        prepare_command, [*base, "--out", str(tmp_path / "b"), "--recipe", str(matching)]
    )
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output
    assert load_report(tmp_path / "b").run_fit["warnings"] == []
    assert load_report(tmp_path / "b").run_fit["micro_batch_tokens"] == 1600


def test_without_a_recipe_the_report_has_no_run_fit(tmp_path, raw_corpus, tiny_model_dir):
    llava = raw_corpus.inputs[0]
    arguments = [
        *("--llava", str(llava.path), "--image-root", str(llava.image_root)),
        *("--model", str(tiny_model_dir), "--max-length", "160", "--quiet", "--workers", "1"),
        *("--out", str(tmp_path / "out")),
    ]
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 0, result.output
    assert load_report(tmp_path / "out").run_fit is None
    assert "epochs per run" not in result.output


def test_an_unknown_recipe_is_one_error_line(tmp_path, raw_corpus, tiny_model_dir):
    llava = raw_corpus.inputs[0]
    arguments = [
        *("--llava", str(llava.path), "--model", str(tiny_model_dir)),
        *("--out", str(tmp_path / "out"), "--recipe", "stage9-tiny"),
    ]
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 2
    assert "stage9-tiny" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_is_resumed_by_the_same_command(tmp_path, raw_corpus, tiny_model_dir):
    llava = raw_corpus.inputs[0]
    turns = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "more", "conversations": turns}) + "\n{cut")
    arguments = [
        *("--llava", str(llava.path), "--image-root", str(llava.image_root)),
        *("--llava", str(more), "--model", str(tiny_model_dir), "--max-length", "160"),
        *("--quiet", "--workers", "1", "--out", str(tmp_path / "out")),
    ]
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 2
    assert f"Error: {more}:2: line is not JSON" in result.output
    assert "Traceback" not in result.output
    more.write_text(json.dumps({"id": "more", "conversations": turns}) + "\n")
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 0, result.output
    assert "measuring (resumed): 2 units: 1 run, 1 already done (verified)" in result.output
    assert load_report(tmp_path / "out").counts.packed == 7
    # --overwrite starts over; without it a finished preparation is refused
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 2
    assert "out is not empty; pass --overwrite to replace it" in result.output
    result = CliRunner().invoke(prepare_command, [*arguments, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "resumed" not in result.output


def test_an_image_path_outside_the_image_root_is_one_error_line(tmp_path, tiny_model_dir):
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "x", "image": "../../etc/passwd", "conversations": turns}]))
    (tmp_path / "images").mkdir()
    arguments = [
        *("--llava", str(data), "--image-root", str(tmp_path / "images")),
        *("--model", str(tiny_model_dir), "--quiet", "--workers", "1"),
        *("--out", str(tmp_path / "out")),
    ]
    result = CliRunner().invoke(prepare_command, arguments)
    assert result.exit_code == 2
    assert (
        f"Error: {data}#0: sample 'x', image 0: path '../../etc/passwd' has a '..' component"
        in result.output
    )
    result = CliRunner().invoke(
        prepare_command, [*arguments, "--engine", "local", "--ray-address", "x:1"]
    )
    assert result.exit_code == 2
    assert "ray_address needs engine='ray'" in result.output
