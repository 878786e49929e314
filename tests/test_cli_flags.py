"""The six onevision CLIs spell and mean their common flags the same way (issue 18, item 4).

The claims of ARCHITECTURE.md's flag table, checked on the click commands themselves (no
subprocess): which commands have each common flag, its spelling, default and choices; that the
old spellings still parse but stay out of --help; that no command uses another spelling for a
common meaning. Then every writer's `--overwrite` refusal (one `Error:` line naming the path and
the flag, exit status 2, nothing touched) and the progress display (a bar on a terminal, plain
periodic lines otherwise, nothing with --quiet).
"""

import io
import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from ov_concepts.cli import main as ov_concepts
from ov_eval.cli import main as ov_eval
from ov_model.cli import main as ov_model
from ov_packing.cli import main as ov_pack
from ov_train.cli import main as ov_train
from rice_vit import cli_conventions
from rice_vit.cli import main as rice_vit
from rice_vit.cli_conventions import (
    COMPUTE_DTYPES,
    STORE_DTYPES,
    ByteSize,
    DeviceType,
    LineProgress,
    claim_output,
    progress_bar,
)

ROOT = Path(__file__).parents[1]
VIT = ROOT / "fixtures" / "rice_vit_mlcd_tiny" / "hf"
LLAVA_OV = ROOT / "fixtures" / "llava_ov_tiny" / "hf"
IMAGE = ROOT / "fixtures" / "llava_ov_tiny" / "image_0_h53_w37.png"

CLIS = {
    "rice-vit": rice_vit,
    "ov-pack": ov_pack,
    "ov-concepts": ov_concepts,
    "ov-model": ov_model,
    "ov-train": ov_train,
    "ov-eval": ov_eval,
}
COMMANDS = {
    f"{prog} {name}": command
    for prog, group in CLIS.items()
    for name, command in sorted(group.commands.items())
}

# --- the table (ARCHITECTURE.md, "Flags every CLI shares") -------------------------------------

WRITERS = {
    "rice-vit embed",
    "rice-vit convert",
    "ov-pack plan",
    "ov-pack synth",
    "ov-pack write",
    "ov-concepts synth",
    "ov-concepts embed-images",
    "ov-concepts embed-concepts",
    "ov-concepts assign",
    "ov-concepts balance",
    "ov-concepts report",
    "ov-model init",
    "ov-model convert",
    "ov-train prepare",
    "ov-train run",
    "ov-train export",
    "ov-train quickstart",
    "ov-eval run",
    "ov-eval report",
}
# writers that continue their own earlier run in --out; --overwrite starts over
RESUMING = {
    "ov-concepts embed-images",
    "ov-concepts embed-concepts",
    "ov-concepts assign",
    "ov-train run",
    "ov-eval run",
}
# --out is optional: report prints to stdout or writes beside its input, run and quickstart have
# a default folder, rice-vit convert also takes the older positional DESTINATION
OPTIONAL_OUT = {
    "ov-concepts report",
    "ov-eval report",
    "ov-train run",
    "ov-train quickstart",
    "rice-vit convert",
}
MODEL_FOLDER = {
    "rice-vit embed",
    "ov-model chat",
    "ov-eval run",
    "ov-train prepare",
    "ov-train run",
}
DEVICE = {
    "rice-vit embed",
    "ov-concepts embed-images",
    "ov-concepts embed-concepts",
    "ov-concepts assign",
    "ov-model chat",
    "ov-model serve",
    "ov-eval run",
}
# compute dtype: (choices, default)
DTYPE = {
    "rice-vit embed": (COMPUTE_DTYPES, "auto"),
    "ov-model chat": (COMPUTE_DTYPES, "auto"),
    "ov-model serve": (COMPUTE_DTYPES, "auto"),
    "ov-eval run": (COMPUTE_DTYPES, "float32"),
    "ov-concepts embed-images": (COMPUTE_DTYPES, "float32"),
    "ov-concepts embed-concepts": (COMPUTE_DTYPES, "float32"),
    "ov-concepts assign": (("auto", "float32", "bfloat16"), "auto"),  # no float16 top-K kernel
}
# storage dtype of what is written: (choices, default)
STORE_DTYPE = {
    "rice-vit convert": (STORE_DTYPES, "keep"),
    "ov-model convert": (STORE_DTYPES, "bfloat16"),
    "ov-train export": (("float32", "bfloat16", "float16"), "float32"),  # trains in float32
    "ov-concepts embed-images": (("float32", "float16"), "float32"),  # numpy has no bfloat16
    "ov-concepts embed-concepts": (("float32", "float16"), "float32"),
}
SEED = {
    "ov-pack plan",
    "ov-pack synth",
    "ov-concepts synth",
    "ov-concepts balance",
    "ov-model init",
    "ov-model chat",
    "ov-train prepare",
    "ov-train quickstart",
}
WORKERS = {
    "ov-pack plan": 2,
    "ov-pack write": None,
    "ov-concepts embed-images": None,
    "ov-concepts embed-concepts": None,
    "ov-concepts assign": None,
    "ov-train prepare": None,
}
# commands that run resumable work units: --engine local|ray and --ray-address
ENGINE = {
    "ov-pack write",
    "ov-concepts embed-images",
    "ov-concepts embed-concepts",
    "ov-concepts assign",
    "ov-train prepare",
}
QUIET = {
    "rice-vit embed",
    "ov-pack write",
    "ov-concepts embed-images",
    "ov-concepts embed-concepts",
    "ov-concepts assign",
    "ov-concepts balance",
    "ov-train prepare",
    "ov-train run",
    "ov-train quickstart",
    "ov-eval run",
}
# max shard size: default in bytes (None: no limit)
SHARD_SIZE = {
    "rice-vit convert": 5 * 10**9,
    "ov-model convert": 5 * 10**9,
    "ov-train export": 5 * 10**9,
    "ov-pack write": None,
    "ov-train prepare": None,
}
# other spellings of a common meaning: allowed only as hidden aliases
OLD_SPELLINGS = {
    "--output",
    "--to",
    "--threads",
    "--processor",
    "--model-dtype",
    "--precision",
    "--no-progress",
    "--progress",
    "--shard-size",
    "--max-shard-bytes",
    "--num-workers",
    "--jobs",
    "--out-dir",
    "--output-dir",
}
# (command, an old invocation's arguments with {paths}, parameter, the value it must give)
ALIASES = [
    ("ov-pack plan", "{lengths} --capacity 8 --output {root}/p.ovp", "out", "{root}/p.ovp"),
    ("ov-pack plan", "{lengths} --capacity 8 -o p --threads 3", "workers", 3),
    ("ov-pack synth", "uniform --output {root}/s.jsonl", "out", "{root}/s.jsonl"),
    ("ov-pack write", "--plan p --source s --out o --max-shard-bytes 1000", "max_shard_size", 1000),
    ("ov-pack write", "--plan p --source s --out o --no-progress", "quiet", True),
    ("rice-vit convert", f"{VIT} {{root}}/dst --to mlcd", "layout", "mlcd"),
    ("rice-vit convert", f"{VIT} {{root}}/dst --to mlcd", "destination", "{root}/dst"),
    ("rice-vit convert", f"{VIT} -o d --layout mlcd --dtype stored", "store_dtype", "keep"),
    ("rice-vit embed", f"--model {VIT} {IMAGE} -o e --dtype stored", "dtype", "auto"),
    ("ov-model convert", f"{LLAVA_OV} -o d --dtype bf16", "store_dtype", "bfloat16"),
    ("ov-model convert", f"{LLAVA_OV} -o d --shard-size 2GiB", "max_shard_size", 2**31),
    ("ov-model chat", f"--model {LLAVA_OV} --dtype keep hi", "dtype", "auto"),
    ("ov-model chat", f"--model {LLAVA_OV} --dtype fp16 hi", "dtype", "float16"),
    ("ov-train export", "{root} -o x --dtype bf16", "store_dtype", "bfloat16"),
    ("ov-train prepare", "--processor {root} -o x", "processor_dir", "{root}"),
    ("ov-train prepare", "--model {root} -o x --max-shard-bytes 500", "max_shard_size", 500),
    ("ov-train prepare", "--model {root} -o x --no-progress", "quiet", True),
    ("ov-train quickstart", "--no-progress", "quiet", True),
    ("ov-train quickstart", "--progress", "quiet", False),
    ("ov-eval report", "{root} --output r.md", "out", "r.md"),
    ("ov-concepts assign", "--images i --concepts c -o a --precision bf16", "dtype", "bfloat16"),
    ("ov-concepts assign", "--images i --concepts c -o a --no-progress", "quiet", True),
    ("ov-concepts embed-images", "-o e --model-dtype float16", "dtype", "float16"),
    (
        "ov-concepts embed-images",
        "-o e --model ViT-B-32-quickgelu",
        "clip_model",
        "ViT-B-32-quickgelu",
    ),
]


def _options(command: click.Command) -> dict[str, click.Option]:
    """Every option of `command` under each of its names."""
    found = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in [*param.opts, *param.secondary_opts]:
                found[name] = param
    return found


def _is_convention(value: object, cls: type) -> bool:
    """`value` is a `cls` of one of the three identical cli_conventions copies."""
    kind = type(value)
    return kind.__name__ == cls.__name__ and kind.__module__.endswith(".cli_conventions")


def _has(name: str, flag: str) -> bool:
    return flag in _options(COMMANDS[name])


def _visible_names(param: click.Option) -> set[str]:
    hidden = set(getattr(param, "hidden_aliases", ()))
    return {name for name in [*param.opts, *param.secondary_opts] if name not in hidden}


def _help(name: str) -> str:
    prog, sub = name.split(" ", 1)
    result = CliRunner().invoke(CLIS[prog], [sub, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_has_out_and_overwrite_exactly_when_it_writes(name):
    assert _has(name, "--out") == (name in WRITERS)
    assert _has(name, "--overwrite") == (name in WRITERS)
    if name in WRITERS:
        out = _options(COMMANDS[name])["--out"]
        assert out.opts[:2] == ["--out", "-o"]
        assert out.required == (name not in OPTIONAL_OUT)
        overwrite = _options(COMMANDS[name])["--overwrite"]
        assert overwrite.is_flag
        assert overwrite.default is False


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_model_folder_device_seed_workers_quiet_and_shard_size_where_the_table_says(name):
    options = _options(COMMANDS[name])
    assert ("--model" in options and "--model" in _visible_names(options["--model"])) == (
        name in MODEL_FOLDER
    )
    assert ("--device" in options) == (name in DEVICE)
    assert ("--seed" in options) == (name in SEED)
    assert ("--workers" in options) == (name in WORKERS)
    assert ("--quiet" in options) == (name in QUIET)
    assert ("--max-shard-size" in options) == (name in SHARD_SIZE)
    assert ("--dtype" in options and "--dtype" in _visible_names(options["--dtype"])) == (
        name in DTYPE
    )
    assert ("--store-dtype" in options) == (name in STORE_DTYPE)


@pytest.mark.parametrize("name", sorted(DEVICE))
def test_device_is_auto_by_default_with_one_validation(name):
    device = _options(COMMANDS[name])["--device"]
    assert device.default == "auto"
    assert _is_convention(device.type, DeviceType)
    assert "[auto|cpu|cuda|cuda:N]" in _help(name)


def test_device_auto_is_cuda_when_available_and_bad_devices_fail_at_the_flag():
    import torch

    device = DeviceType()
    assert device.convert("auto", None, None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device.convert("CPU", None, None) == "cpu"
    for bad in ("gpu", "meta", "cuda:x", "cuda:"):
        with pytest.raises(click.BadParameter, match="auto, cpu, cuda, cuda:N"):
            device.convert(bad, None, None)
    if not torch.cuda.is_available():
        with pytest.raises(click.BadParameter, match="no CUDA device"):
            device.convert("cuda:0", None, None)
    else:
        with pytest.raises(click.BadParameter, match="CUDA device"):
            device.convert(f"cuda:{torch.cuda.device_count()}", None, None)


@pytest.mark.parametrize("name", sorted(DTYPE))
def test_compute_dtype_choices_and_default(name):
    choices, default = DTYPE[name]
    dtype = _options(COMMANDS[name])["--dtype"]
    assert tuple(dtype.type.choices) == choices
    assert dtype.default == default


@pytest.mark.parametrize("name", sorted(STORE_DTYPE))
def test_store_dtype_choices_and_default(name):
    choices, default = STORE_DTYPE[name]
    store = _options(COMMANDS[name])["--store-dtype"]
    assert tuple(store.type.choices) == choices
    assert store.default == default


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_is_a_non_negative_integer_defaulting_to_0(name):
    seed = _options(COMMANDS[name])["--seed"]
    assert seed.default == 0
    assert isinstance(seed.type, click.IntRange)
    assert seed.type.min == 0


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_is_a_positive_integer(name):
    workers = _options(COMMANDS[name])["--workers"]
    assert workers.default == WORKERS[name]
    assert workers.type.min == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_engine_and_ray_address_exactly_where_work_units_run(name):
    options = _options(COMMANDS[name])
    assert ("--engine" in options) == (name in ENGINE)
    assert ("--ray-address" in options) == (name in ENGINE)
    if name in ENGINE:
        engine = options["--engine"]
        assert engine.default == "local"
        assert tuple(engine.type.choices) == ("local", "ray")
        assert options["--ray-address"].default is None
        assert "[default: local]" in _help(name)


@pytest.mark.parametrize("name", sorted(QUIET))
def test_quiet_has_a_short_form_and_no_progress_as_a_hidden_alias(name):
    quiet = _options(COMMANDS[name])["--quiet"]
    assert "-q" in quiet.opts
    assert "--no-progress" in quiet.opts
    assert quiet.default is False
    assert "--no-progress" not in _help(name)


@pytest.mark.parametrize("name", sorted(SHARD_SIZE))
def test_max_shard_size_reads_units_and_has_the_same_default_everywhere(name):
    option = _options(COMMANDS[name])["--max-shard-size"]
    assert _is_convention(option.type, ByteSize)
    default = None if option.default is None else option.type.convert(option.default, None, None)
    assert default == SHARD_SIZE[name]
    assert option.type.convert("500MB", None, None) == 500 * 10**6
    assert option.type.convert("2GiB", None, None) == 2 * 2**30
    assert option.type.convert("1000", None, None) == 1000
    with pytest.raises(click.BadParameter, match="5GB, 500MB, 2GiB"):
        option.type.convert("five gigs", None, None)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_command_shows_another_spelling_of_a_common_flag(name):
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option):
            continue
        visible = _visible_names(param)
        assert not visible & OLD_SPELLINGS, (name, visible & OLD_SPELLINGS)
        shown = _help(name)
        for alias in getattr(param, "hidden_aliases", ()):
            assert f"{alias} " not in shown, (name, alias)
            assert f"{alias}," not in shown, (name, alias)
    # the only --dtype that is a storage dtype is a hidden alias of --store-dtype
    if "--store-dtype" in _options(COMMANDS[name]) and name not in DTYPE:
        assert "--dtype" not in _visible_names(_options(COMMANDS[name])["--store-dtype"])


@pytest.mark.parametrize(
    ("name", "arguments", "param", "expected"),
    ALIASES,
    ids=[f"{case[0]}:{case[2]}:{number}" for number, case in enumerate(ALIASES)],
)
def test_an_old_spelling_still_parses_to_the_same_parameter(
    name, arguments, param, expected, tmp_path
):
    lengths = tmp_path / "lengths.jsonl"
    lengths.write_text('{"id": "a", "tokens": 5}\n')
    paths = {"root": tmp_path, "lengths": lengths}
    command = COMMANDS[name]
    with command.make_context(name, arguments.format(**paths).split()) as ctx:
        value = ctx.params[param]
    if isinstance(expected, str):
        expected = expected.format(**paths)
        value = str(value)
    assert value == expected


def test_the_three_copies_of_cli_conventions_are_identical():
    source = Path(cli_conventions.__file__).read_bytes()
    for package in ("ov_packing", "ov_concepts"):
        copy = ROOT / "packages" / package / "src" / package / "cli_conventions.py"
        assert copy.read_bytes() == source, f"{copy} differs from rice_vit's; copy it again"


# --- --overwrite ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concept_runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny synth -> assign -> balance chain of ov-concepts folders."""
    root = tmp_path_factory.mktemp("concepts")
    runner = CliRunner()
    steps = [
        f"synth -o {root}/corpus --images 60 --concepts 12 --dim 8",
        f"assign --images {root}/corpus/images.npy --concepts {root}/corpus/concepts.npy "
        f"--topk 2 -o {root}/assigned -q --device cpu",
        f"balance {root}/assigned --target 20 -o {root}/balanced -q",
    ]
    for step in steps:
        result = runner.invoke(ov_concepts, step.split())
        assert result.exit_code == 0, result.output
    return {name: root / name for name in ("corpus", "assigned", "balanced")}


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    lengths = root / "lengths.jsonl"
    lengths.write_text('{"id": "a", "tokens": 5}\n{"id": "b", "tokens": 6}\n')
    result = CliRunner().invoke(
        ov_pack, ["plan", str(lengths), "--capacity", "8", "-o", str(root / "p.ovp")]
    )
    assert result.exit_code == 0, result.output
    return root / "p.ovp"


# (writer, arguments: {out} is the occupied output, {folder} an empty folder, {file} a file)
REFUSALS = [
    ("rice-vit", f"embed --model {VIT} {IMAGE} --out {{out_file}}"),
    ("rice-vit", f"convert {VIT} --out {{out_dir}} --layout llava-ov"),
    ("ov-pack", "plan {file} --capacity 8 -o {out_file}"),
    ("ov-pack", "synth uniform -n 5 -o {out_file}"),
    ("ov-pack", "write --plan {plan} --source {folder} -o {out_dir}"),
    ("ov-concepts", "synth -o {out_dir} --images 10 --concepts 5 --dim 4"),
    ("ov-concepts", "balance {assigned} --target 5 -o {out_dir}"),
    ("ov-concepts", "report {balanced} -o {out_report}"),
    ("ov-model", f"init --vit {VIT} --llm {LLAVA_OV} -o {{out_dir}}"),
    ("ov-model", f"convert {LLAVA_OV} -o {{out_dir}}"),
    ("ov-train", "prepare --llava {file} --model {folder} -o {out_dir}"),
    ("ov-train", "export {folder} -o {out_dir}"),
    ("ov-train", "quickstart -o {out_dir}"),
    ("ov-eval", "report {folder} -o {out_file}"),
]


@pytest.mark.parametrize(
    ("prog", "arguments"), REFUSALS, ids=[f"{p} {a.split()[0]}" for p, a in REFUSALS]
)
def test_a_writer_refuses_an_occupied_output_without_overwrite(
    prog, arguments, tmp_path, plan_file, concept_runs
):
    out_dir = tmp_path / "out_dir"
    out_dir.mkdir()
    (out_dir / "earlier.txt").write_text("keep me\n")
    out_file = tmp_path / "out_file.txt"
    out_file.write_text("keep me\n")
    out_report = tmp_path / "report_dir"
    out_report.mkdir()
    (out_report / "report.md").write_text("keep me\n")
    folder = tmp_path / "empty"
    folder.mkdir()
    file = tmp_path / "input.jsonl"
    file.write_text('{"id": "a", "tokens": 5}\n')
    paths = {
        "out_dir": out_dir,
        "out_file": out_file,
        "out_report": out_report,
        "folder": folder,
        "file": file,
        "plan": plan_file,
        **concept_runs,
    }
    result = CliRunner().invoke(CLIS[prog], arguments.format(**paths).split())
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    occupied = {"out_dir": out_dir, "out_file": out_file, "out_report": out_report / "report.md"}
    named = [key for key in occupied if "{" + key + "}" in arguments]
    assert str(occupied[named[0]]) in errors[0]
    assert "--overwrite" in errors[0]
    assert "Traceback" not in result.output
    assert (out_dir / "earlier.txt").read_text() == "keep me\n"
    assert out_file.read_text() == "keep me\n"
    assert (out_report / "report.md").read_text() == "keep me\n"


def test_with_overwrite_a_writer_replaces_its_output(tmp_path):
    out = tmp_path / "lengths.jsonl"
    out.write_text("old\n")
    result = CliRunner().invoke(
        ov_pack, ["synth", "uniform", "-n", "3", "-o", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "stale.txt").write_text("old\n")
    arguments = ["synth", "-o", str(folder), "--images", "10", "--concepts", "5", "--dim", "4"]
    result = CliRunner().invoke(ov_concepts, [*arguments, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (folder / "stale.txt").exists()
    assert (folder / "images.npy").is_file()


def test_a_resuming_writer_keeps_its_folder_and_starts_over_with_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "earlier.txt").write_text("partial\n")
    claim_output(run, False, resumable=True)
    assert (run / "earlier.txt").is_file()  # resumed, not refused
    claim_output(run, True, resumable=True)
    assert not run.exists()


def test_overwrite_never_removes_an_input_or_the_working_directory(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    with pytest.raises(click.ClickException, match="holds"):
        claim_output(out, True, keep=(out / "model",))
    monkeypatch.chdir(out / "model")
    with pytest.raises(click.ClickException, match="holds"):
        claim_output(out, True)
    assert (out / "model").is_dir()


def test_overwrite_never_removes_the_home_folder_or_one_above_it(tmp_path, monkeypatch):
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("keep\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for path in (home, tmp_path / "users"):
        with pytest.raises(click.ClickException, match="holds"):
            claim_output(path, True)
    assert (home / "notes.txt").is_file()


def test_overwrite_with_resume_from_is_a_usage_error():
    result = CliRunner().invoke(
        ov_train, ["run", "stage1-tiny", "--overwrite", "--resume-from", "3"]
    )
    assert result.exit_code == 2
    assert "--overwrite" in result.output


def test_resuming_writers_document_it_in_their_help():
    for name in RESUMING:
        text = " ".join(_help(name).split())
        assert "resume" in text.lower(), name
        assert "Start over" in text or "starts it over" in text or "start over" in text, name


# --- progress -------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_a_plain_line_per_tenth_with_rate_and_eta():
    stream = io.StringIO()
    with progress_bar(total=200, desc="work", unit="img", stream=stream) as bar:
        for _ in range(200):
            bar.update(1)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert all(line.startswith("work: ") for line in lines)
    assert all("img/s" in line and "<" in line for line in lines)  # rate and ETA
    assert lines[-1].startswith("work: 100% 200/200")


def test_progress_without_a_total_prints_a_line_every_interval():
    stream = io.StringIO()
    bar = LineProgress(total=None, desc="scan", stream=stream, every_s=0.0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        line for line in stream.getvalue().splitlines() if line.startswith("scan: ")
    ]
    assert len(stream.getvalue().splitlines()) == 3


def test_progress_on_a_terminal_is_a_redrawn_bar_and_disabled_is_silent():
    terminal = _Terminal()
    with progress_bar(range(50), desc="work", stream=terminal) as bar:
        for _ in bar:
            pass
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    with progress_bar(range(50), desc="work", stream=quiet, enabled=False) as bar:
        for _ in bar:
            pass
    assert quiet.getvalue() == ""


def test_a_command_logs_plain_progress_lines_and_none_with_quiet(concept_runs, tmp_path):
    arguments = [
        "balance",
        str(concept_runs["assigned"]),
        "--target",
        "20",
        "--rule",
        "sum",
    ]
    logged = CliRunner().invoke(ov_concepts, [*arguments, "-o", str(tmp_path / "a")])
    quiet = CliRunner().invoke(ov_concepts, [*arguments, "-o", str(tmp_path / "b"), "--quiet"])
    assert logged.exit_code == quiet.exit_code == 0
    progress = [line for line in logged.stderr.splitlines() if line.startswith("weights: ")]
    assert progress, logged.stderr
    assert "100%" in progress[-1]
    assert "\r" not in logged.stderr
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("weights: ")]
    selected = [np.load(tmp_path / name / "selected.npy") for name in ("a", "b")]
    assert np.array_equal(*selected)
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["selected"] == 20
