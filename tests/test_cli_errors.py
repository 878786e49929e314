"""Every onevision CLI answers a user's mistake with one line naming the culprit, exit status 2.

One table of bad invocations across the six CLIs (issue 18, item 3). Each row is run through
click's CliRunner (no subprocess: the whole table takes seconds) and must end with exit status
2, exactly one `Error: ` line that names the file, sample, flag or key at fault, and no
traceback. Click's own usage errors print a `Usage:` header above that line; that is the same
one error line with the command's synopsis, so it counts as one.
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from ov_concepts.cli import main as ov_concepts
from ov_eval.cli import main as ov_eval
from ov_model.cli import main as ov_model
from ov_packing.cli import main as ov_pack
from ov_train.cli import main as ov_train
from rice_vit.cli import main as rice_vit

FIXTURES = Path(__file__).parents[1] / "fixtures"
VIT = FIXTURES / "llava_ov_tiny" / "hf"
IMAGE = FIXTURES / "llava_ov_tiny" / "image_0_h53_w37.png"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The bad inputs the table points at, in one folder."""
    root = tmp_path_factory.mktemp("cli_errors")
    lengths = root / "lengths.jsonl"
    lengths.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": 6}\n')
    negative = root / "negative.jsonl"
    negative.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": -1}\n')
    not_shards = root / "not_shards"
    not_shards.mkdir()
    (not_shards / "notes.txt").write_text("not packed shards\n")
    used_out = root / "used_out"
    used_out.mkdir()
    (used_out / "earlier.txt").write_text("an earlier run\n")
    broken_image = root / "broken.png"
    broken_image.write_bytes(IMAGE.read_bytes()[:60])
    bad_model = root / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{}")
    empty = root / "empty"
    empty.mkdir()
    return {
        "root": root,
        "lengths": lengths,
        "negative": negative,
        "not_shards": not_shards,
        "used_out": used_out,
        "broken_image": broken_image,
        "bad_model": bad_model,
        "empty": empty,
    }


# (id, cli, arguments with {name} for a path from `files`, text the error line must contain)
CASES = [
    ("pack-synth-unknown-suffix", ov_pack, "synth uniform -n 5 -o {root}/x.csv", "x.csv"),
    (
        "pack-plan-missing-folder",
        ov_pack,
        "plan {lengths} --capacity 8 -o {root}/missing_dir/x",
        "missing_dir",
    ),
    (
        "pack-capacity-beyond-int32",
        ov_pack,
        "plan {lengths} --capacity 9999999999 -o {root}/p",
        "--capacity",
    ),
    (
        "pack-synth-capacity-beyond-int32",
        ov_pack,
        "synth uniform --capacity 9999999999 -o {root}/s.jsonl",
        "--capacity",
    ),
    (
        "pack-negative-length",
        ov_pack,
        "plan {negative} --capacity 8 -o {root}/p",
        "negative.jsonl:2",
    ),
    ("pack-stats-missing-plan", ov_pack, "stats {root}/nope.ovp", "nope.ovp"),
    ("train-unknown-recipe", ov_train, "recipes stage9-8b", "stage9-8b"),
    ("train-unknown-key", ov_train, "run stage2-tiny --set optim.lrr=1", "optim.lrr"),
    (
        "train-data-not-shards",
        ov_train,
        "run stage1-tiny --set model.path={tiny_model} --data {not_shards} --out {root}/run",
        "not_shards",
    ),
    (
        "train-model-path-missing",
        ov_train,
        "run stage1-tiny --set model.path={root}/no_model --data {not_shards} --out {root}/run",
        "no_model: does not exist",
    ),
    (
        "train-model-path-not-a-model",
        ov_train,
        "run stage1-tiny --set model.path={empty} --data {not_shards} --out {root}/run",
        "exists but is not a model folder: no config.json",
    ),
    (
        "train-data-missing",
        ov_train,
        "run stage1-tiny --set model.path={tiny_model} --data {root}/no_data --out {root}/run",
        "no_data: no such data folder",
    ),
    (
        "train-prepare-unknown-recipe",
        ov_train,
        "prepare --model {empty} --llava {lengths} --recipe stage9-tiny --out {root}/prep",
        "stage9-tiny",
    ),
    (
        "train-prepare-capacity-beyond-int32",
        ov_train,
        "prepare --model {empty} --llava {lengths} --capacity 9999999999 --out {root}/prep",
        "capacity",
    ),
    ("train-quickstart-used-out", ov_train, "quickstart --out {used_out}", "used_out"),
    (
        "vit-embed-only-bad-images",
        rice_vit,
        f"embed --model {VIT} {{broken_image}} --out {{root}}/e.safetensors",
        "none of the 1 images",
    ),
    ("vit-info-not-a-checkpoint", rice_vit, "info {empty}", "config.json"),
    ("model-info-bad-config", ov_model, "info {bad_model}", "model_type"),
    ("eval-report-not-results", ov_eval, "report {empty}", "results.json"),
    (
        "eval-run-unknown-task",
        ov_eval,
        "run --model {bad_model} --tasks nope --data-dir {empty} --out {root}/ev",
        "nope",
    ),
    (
        "concepts-balance-no-manifest",
        ov_concepts,
        "balance {empty} --target 5 --out {root}/b",
        "manifest.json",
    ),
    ("concepts-report-no-stats", ov_concepts, "report {empty}", "stats.json"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A model folder with a tokenizer, so that `ov-train run` gets as far as the data."""
    from ov_model.tiny import create_tiny_model

    folder = tmp_path_factory.mktemp("tiny_model")
    create_tiny_model(folder, ["a red circle and a blue square"] * 20, seed=0)
    return folder


@pytest.mark.parametrize(
    ("cli", "arguments", "culprit"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_invocation_is_one_error_line_naming_the_culprit_with_exit_status_2(
    cli, arguments, culprit, files, request
):
    if "{tiny_model}" in arguments:
        files = {**files, "tiny_model": request.getfixturevalue("tiny_model")}
    result = CliRunner().invoke(cli, arguments.format(**files).split())
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.output
    assert culprit in error_lines[0], result.output


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (OSError(28, "No space left on device", "/data/out/x.bin"), 1, "/data/out/x.bin: No space"),
        (PermissionError(13, "Permission denied", "/data/out"), 1, "/data/out: Permission denied"),
        (NotADirectoryError(20, "Not a directory", "a/file/x"), 2, "a/file/x: Not a directory"),
    ],
    ids=["disk-full", "permission", "not-a-directory"],
)
@pytest.mark.parametrize(
    "cli",
    [rice_vit, ov_pack, ov_concepts, ov_model, ov_train, ov_eval],
    ids=["rice-vit", "ov-pack", "ov-concepts", "ov-model", "ov-train", "ov-eval"],
)
def test_an_os_error_in_any_command_is_one_line_naming_the_path(cli, error, status, line):
    """What the machine refuses (a full disk, a folder not writable, a file where a folder
    goes) ends every CLI with one line naming the path: status 1 when the machine is at fault,
    2 when the path given is wrong."""
    import click

    @click.command(name="raises-os-error")
    def raises() -> None:
        raise error

    cli.add_command(raises)
    try:
        result = CliRunner().invoke(cli, ["raises-os-error"])
    finally:
        cli.commands.pop("raises-os-error")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == status, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {line}"), result.output
