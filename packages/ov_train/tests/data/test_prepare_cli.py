"""`prepare_command`: options mapped from PrepareConfig with defaults shown, a real run, errors."""

import dataclasses
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
        assert f"--{config_field.name.replace('_', '-')}" in result.output
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
        *("--processor", str(tiny_model_dir), "--out", str(tmp_path / "out")),
        *("--max-length", "160", "--max-bins-per-shard", "4", "--no-progress"),
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
    base = ["--processor", str(tiny_model_dir), "--out", str(out)]
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
