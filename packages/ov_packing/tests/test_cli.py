"""The `ov-pack` entry point: help and version."""

import json
import pathlib
import tomllib

from click.testing import CliRunner

from ov_packing import __version__
from ov_packing.cli import main

PYPROJECT = pathlib.Path(__file__).parents[1] / "pyproject.toml"


def test_version_flag_prints_the_version_declared_in_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ov-pack, version {declared}"
    assert __version__ == declared


def test_help_describes_the_package():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: ov-pack" in result.output


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_plan_stats_show_verify_work_end_to_end(tmp_path):
    lengths, plan = tmp_path / "lengths.jsonl.zst", tmp_path / "plan.ovp"
    run("synth", "sft", "-n", "500", "--seed", "3", "-o", str(lengths))
    printed = run(
        "plan", str(lengths), "--capacity", "4096", "--patch-capacity", "9000", "-o", str(plan)
    )
    assert "bins" in printed
    assert "padding" in printed
    stats = json.loads(run("stats", str(plan), "--json"))
    assert stats["samples_in"] == 500
    assert stats["max_bin_tokens"] <= 4096
    assert stats["max_bin_patches"] <= 9000
    rows = [json.loads(line) for line in run("show", str(plan)).splitlines()]
    assert len(rows) == stats["bins"]
    assert sum(len(row["ids"]) for row in rows) == stats["samples_packed"]
    assert all(row["tokens"] <= 4096 for row in rows)
    assert "ok:" in run("verify", str(plan), "--input", str(lengths))


def test_plan_bytes_do_not_depend_on_threads(tmp_path):
    lengths = tmp_path / "lengths.npy"
    run("synth", "caption", "-n", "2000", "-o", str(lengths))
    outputs = set()
    for threads in ("1", "2", "8"):
        plan = tmp_path / f"plan{threads}.ovp"
        run("plan", str(lengths), "--capacity", "8192", "--workers", threads, "-o", str(plan))
        outputs.add(plan.read_bytes())
    assert len(outputs) == 1


def test_synth_to_text_format_drops_patch_counts(tmp_path):
    lengths = tmp_path / "lengths.txt"
    run("synth", "caption", "-n", "10", "-o", str(lengths))
    assert lengths.read_text().splitlines()[0].startswith("s000000000:")


def test_bad_input_is_a_one_line_error_naming_file_and_line(tmp_path):
    lengths = tmp_path / "bad.jsonl"
    lengths.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": -1}\n')
    result = CliRunner().invoke(main, ["plan", str(lengths), "--capacity", "8", "-o", "x"])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output
    assert "Traceback" not in result.output


def test_empty_input_writes_an_empty_plan_with_a_warning(tmp_path):
    lengths, plan = tmp_path / "empty.jsonl", tmp_path / "plan.ovp"
    lengths.write_text("")
    result = CliRunner().invoke(main, ["plan", str(lengths), "--capacity", "8", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    assert "holds no samples" in result.output
    assert json.loads(run("stats", str(plan), "--json"))["bins"] == 0


def test_verify_fails_on_a_plan_that_does_not_match_its_input(tmp_path):
    first, second, plan = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "p.ovp"
    first.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": 6}\n')
    second.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": 7}\n')
    run("plan", str(first), "--capacity", "8", "-o", str(plan))
    result = CliRunner().invoke(main, ["verify", str(plan), "--input", str(second)])
    assert result.exit_code == 1
    assert "token count differs" in result.output
