"""`ov-train estimate-memory`: the table it prints, overrides, several world sizes, errors."""

import msgspec
from click.testing import CliRunner

from ov_train.cli import main
from ov_train.config_io import resolve_recipe
from ov_train.memory_estimate import GIB, estimate_recipe_memory


def _invoke(*args: str):
    return CliRunner().invoke(main, ["estimate-memory", *args])


def _row(output: str, label: str) -> list[str]:
    lines = [line for line in output.splitlines() if line.startswith(label)]
    assert len(lines) == 1, output
    return lines[0][len(label) :].split()


def test_table_prints_the_estimate_per_checkpointing_mode_and_whether_it_fits():
    result = _invoke("stage2-8b", "--gpus", "8")
    assert result.exit_code == 0, result.output
    recipe = resolve_recipe("stage2-8b")
    for column, mode in enumerate(("none", "full", "selective")):
        variant = msgspec.structs.replace(
            recipe, parallel=msgspec.structs.replace(recipe.parallel, activation_checkpointing=mode)
        )
        estimate = estimate_recipe_memory(variant, 8)
        assert _row(result.output, "total per GPU")[column] == f"{estimate.total / GIB:.1f}"
        assert _row(result.output, "parameters (fp32, sharded)")[column] == (
            f"{estimate.parameters / GIB:.1f}"
        )
    # the requirement: 8B Stage-2 fits 80 GB per GPU on 8 GPUs with full checkpointing
    assert _row(result.output, "fits 80 GiB") == ["no", "yes", "no"]
    assert "AC full*" in result.output  # the recipe's own mode is starred
    assert "dp_replicate 1 x dp_shard 8" in result.output


def test_overrides_change_the_layout_and_gpu_memory_the_verdict():
    sharded = _invoke("stage1_5-4b", "--gpus", "8")
    hybrid = _invoke(
        "stage1_5-4b",
        "--gpus",
        "8",
        "--set",
        "parallel.dp_replicate=2",
        "--set",
        "parallel.activation_checkpointing=full",
        "--gpu-memory-gib",
        "20",
    )
    assert sharded.exit_code == 0, sharded.output
    assert hybrid.exit_code == 0, hybrid.output
    assert "dp_replicate 2 x dp_shard 4" in hybrid.output
    shard_8 = float(_row(sharded.output, "optimizer (AdamW, sharded)")[0])
    shard_4 = float(_row(hybrid.output, "optimizer (AdamW, sharded)")[0])
    assert shard_4 == 2 * shard_8
    assert "AC full*" in hybrid.output
    assert _row(hybrid.output, "fits 20 GiB") == ["no", "no", "no"]


def test_several_world_sizes_print_one_table_each():
    result = _invoke("stage1_5-8b", "--gpus", "8", "--gpus", "128", "--image-fraction", "0.9")
    assert result.exit_code == 0, result.output
    assert result.output.count("total per GPU") == 2
    assert "128 GPUs: dp_replicate 1 x dp_shard 128" in result.output
    assert "90% image tokens" in result.output


def test_errors_are_one_line_without_a_traceback():
    for args in (
        ("no-such-recipe",),
        ("stage2-8b", "--set", "parallel.dp_replicate=3"),
        ("stage2-8b", "--set", "parallel.nope=1"),
    ):
        result = _invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ")
        assert len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_help_explains_every_flag_with_its_default():
    result = _invoke("--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for flag, default in (
        ("--gpus", "8"),
        ("--gpu-memory-gib", "80.0"),
        ("--image-fraction", "0.5"),
        ("--tokens-per-image", "1024"),
        ("--supervised-fraction", "(every text token)"),
    ):
        assert f"{flag} " in text
        assert f"default: {default}" in text
    assert "--set KEY=VALUE" in text
