"""Whole runs on several processes: `ov-train run` on 2 ranks trains like 1 rank, checkpoints
reshard (2 -> 1 and 1 -> 2 ranks), a SIGKILLed rank stops its peer with a clear error (mid-step and
mid-save), and the run resumes to the trace of the uninterrupted one.

The data are packed shards made by `prepare` from 12 samples (two of them text-only, padded with
an image by the loader), at most two per bin, so every micro-batch is one bin and a step crosses
epoch ends. 2 ranks x 1 micro-batch per step take the same global micro-batches as 1 rank x 2
(the loader's global stream), so the loss traces agree up to float summation order (FSDP2's
reduce-scatter sums gradients in another order than one process's accumulation: rel 1e-5).

Workers are forked from pytest (the `dist` harness for runs that must succeed, a small launcher
here for runs where one rank is killed), with a 60 s process-group timeout. One `slow` test
starts a real `torchrun --max-restarts 1` and kills a rank under it.
"""

import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings

import pytest
import torch

from ov_model.processor import OVProcessor
from ov_train.commands import run_command
from ov_train.config_io import apply_overrides
from ov_train.errors import TrainingError
from ov_train.metrics_log import read_metrics
from ov_train.parallel import SingleProcess, init_world
from ov_train.recipes import RECIPES
from ov_train.run_lock import RunFolderInUseError, acquire_run_lock
from ov_train.source import open_packed_shards
from ov_train.train_loop import Trainer, TrainerHooks

pytestmark = pytest.mark.dist

STEPS = 4
TIMEOUT_S = 60


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square")


def _drawn(colour, shape, path):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (56, 56), "white")
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, 48, 48), fill=COLOURS[colour])
    image.save(path)


@pytest.fixture(scope="module")
def shards(tiny_model_dir, tmp_path_factory):
    """Packed shards of 12 samples, at most 2 per bin; two samples have no image."""
    from ov_train.data.ingest_llava import LlavaSource
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_config import PrepareConfig

    folder = tmp_path_factory.mktemp("dist_corpus")
    rows = []
    for index, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES for _ in "ab"):
        question = "<image>\nWhat is shown?" if index not in (3, 8) else f"Name a {shape}."
        row = {
            "id": str(index),
            "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": f"a {colour} {shape}"},
            ],
        }
        if index not in (3, 8):
            _drawn(colour, shape, folder / f"{index}.png")
            row["image"] = f"{index}.png"
        rows.append(row)
    (folder / "data.json").write_text(json.dumps(rows))
    config = PrepareConfig(
        inputs=(LlavaSource(folder / "data.json"),),
        out_dir=folder / "prepared",
        max_length=256,
        capacity=256,
        max_per_bin=2,
        progress=False,
    )
    return prepare(config, OVProcessor.from_pretrained(tiny_model_dir)).shards_dir


def _overrides(tiny_model_dir, ranks: int) -> list[str]:
    return [
        f"model.path={tiny_model_dir}",
        f"train.steps={STEPS}",
        "train.grad_accumulation=2",  # the global batch: 2 micro-batches, 1 per rank on 2
        "train.micro_batch_tokens=1",  # one bin per micro-batch
        "train.deterministic=true",
        "train.dtype=fp32",
        "checkpoint.every=2",
        "checkpoint.keep_last=5",
        "data.num_workers=0",
        f"parallel.timeout_s={TIMEOUT_S}",
        "logging.progress_bar=false",
        "logging.plot=false",
    ]


def _cli_args(shards, run_dir, tiny_model_dir, ranks, *extra):
    sets = [a for o in _overrides(tiny_model_dir, ranks) for a in ("--set", o)]
    return ["stage2-tiny", "--data", str(shards), "--out", str(run_dir), *sets, *extra]


def _recipe(shards, tiny_model_dir, ranks, *extra):
    overrides = [f"data.path={shards}", *_overrides(tiny_model_dir, ranks), *extra]
    return apply_overrides(RECIPES["stage2-tiny"], overrides)


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def _run_cli_in_process(args):
    """`ov-train run` in this process (one rank: no torchrun environment)."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert name not in os.environ
    run_command.main(args, standalone_mode=False)


def _two_rank_cli_run(rank, shards, run_dir, locked_dir, tiny_model_dir):
    """Worker: a run on a folder another run holds fails on both ranks at once; then the real
    2-rank `ov-train run`."""
    recipe = _recipe(shards, tiny_model_dir, 2)
    world = init_world(recipe.parallel, recipe.train.device)
    processor = OVProcessor.from_pretrained(tiny_model_dir)
    began = time.monotonic()
    try:
        Trainer(recipe, open_packed_shards(recipe, processor, world), locked_dir, world=world).run()
        refused = None
    except RunFolderInUseError as error:
        refused = (str(error), time.monotonic() - began)
    run_command.main(_cli_args(shards, run_dir, tiny_model_dir, 2), standalone_mode=False)
    return refused


@pytest.fixture(scope="module")
def runs(dist, shards, tiny_model_dir, tmp_path_factory):
    """The uninterrupted 1-rank and 2-rank runs (the 2-rank launch also tries a locked folder)."""
    root = tmp_path_factory.mktemp("dist_runs")
    one, two, locked = root / "one", root / "two", root / "locked"
    _run_cli_in_process(_cli_args(shards, one, tiny_model_dir, 1))
    with acquire_run_lock(locked, SingleProcess(), torch.device("cpu")):
        refused = dist.run_workers(
            _two_rank_cli_run, 2, shards, two, locked, tiny_model_dir, timeout_s=180
        )
    return one, two, refused


def test_two_ranks_train_like_one_write_shared_files_once_and_refuse_a_busy_folder(runs):
    one, two, refused = runs
    reference = _losses(one)
    assert [step for step, _ in reference] == list(range(1, STEPS + 1))
    losses = _losses(two)
    assert [step for step, _ in losses] == [step for step, _ in reference]  # each line once
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in reference], rel=1e-5)
    assert {p.name for p in two.iterdir()} == {
        ".lock",
        "recipe.toml",
        "processor",
        "metrics.jsonl",
        "checkpoints",
    }
    checkpoint = two / "checkpoints" / f"step_{STEPS:08d}"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json",
        "model_optim",
        "processor",
        "rank_00000.json",
        "rank_00001.json",
        "recipe.toml",
        "trainer_state.json",
    ]
    assert len(list((checkpoint / "model_optim").glob("*.distcp"))) == 2
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert "data" in state
    for message, seconds in refused:  # both ranks, at once
        assert "is in use by another run" in message
        assert seconds < 10
    assert f"pid {os.getpid()}" in refused[0][0]


def test_a_two_rank_checkpoint_resumes_on_one_rank_and_continues_the_trace(
    runs, shards, tiny_model_dir, tmp_path, caplog
):
    one, two, _ = runs
    copy = tmp_path / "two_to_one"
    shutil.copytree(two, copy)
    with caplog.at_level(logging.WARNING, logger="ov_train"):
        _run_cli_in_process(_cli_args(shards, copy, tiny_model_dir, 1, "--resume-from", "2"))
    assert "saved by 2 processes, this run has 1" in caplog.text
    assert "reseeded from (seed, step, rank)" in caplog.text
    assert (copy / "checkpoints" / ".discarded-step_00000004").is_dir()
    got, want = _losses(copy), _losses(one)
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
    state = json.loads((copy / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 1


def _cli_worker(rank, args):
    run_command.main(args, standalone_mode=False)


def test_a_one_rank_checkpoint_resumes_on_two_ranks_and_continues_the_trace(
    dist, runs, shards, tiny_model_dir, tmp_path
):
    one, two, _ = runs
    copy = tmp_path / "one_to_two"
    shutil.copytree(one, copy)
    args = _cli_args(shards, copy, tiny_model_dir, 2, "--resume-from", "2")
    dist.run_workers(_cli_worker, 2, args, timeout_s=120)
    got, want = _losses(copy), _losses(two)
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
    state = json.loads((copy / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2


# --------------------------------------------------------------------------------- kills
def _killable_rank(rank, port, run, kill_rank, kill_after_step, kill_in_save):
    """A rank of a 2-rank run that SIGKILLs itself at the asked point (if it is `kill_rank`);
    writes its outcome (done, or the error and how long after its peer died it came) as JSON."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    run_dir, shards, tiny_model_dir = run
    outcome = run_dir.with_name(f"{run_dir.name}.rank{rank}.json")
    killed_at = run_dir.with_name(f"{run_dir.name}.killed")

    def die(step):
        if rank == kill_rank and step == kill_after_step:
            killed_at.write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    hooks = TrainerHooks(
        on_step_end=lambda step, _: die(step) if kill_in_save is None else None,
        before_checkpoint_commit=lambda _, step: die(step) if kill_in_save else None,
    )
    code = 1
    try:
        recipe = _recipe(shards, tiny_model_dir, 2, "checkpoint.every=1")
        world = init_world(recipe.parallel, recipe.train.device)
        processor = OVProcessor.from_pretrained(tiny_model_dir)
        source = open_packed_shards(recipe, processor, world)
        Trainer(recipe, source, run_dir, world=world, hooks=hooks).run()
        outcome.write_text(json.dumps({"done": True}))
        code = 0
    except TrainingError as error:
        died = float(killed_at.read_text()) if killed_at.is_file() else None
        waited = None if died is None else time.time() - died
        outcome.write_text(json.dumps({"error": str(error), "after_s": waited}))
    except BaseException:
        outcome.write_text(json.dumps({"crash": traceback.format_exc()}))
    finally:
        os._exit(code)


def _launch(dist, run, kill_rank=None, kill_after_step=None, kill_in=None):
    """Start both ranks of `run` (run folder, shards, model folder); wait for them; return their
    exit codes and outcomes."""
    run_dir = run[0]
    context = multiprocessing.get_context("fork")
    port = dist.free_port()
    args = (port, run, kill_rank, kill_after_step, kill_in)
    processes = [context.Process(target=_killable_rank, args=(r, *args)) for r in range(2)]
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        for process in processes:
            process.start()
    deadline = time.monotonic() + 3 * TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    outcomes = []
    for rank in range(2):
        file = run_dir.with_name(f"{run_dir.name}.rank{rank}.json")
        outcomes.append(json.loads(file.read_text()) if file.is_file() else None)
        file.unlink(missing_ok=True)
    run_dir.with_name(f"{run_dir.name}.killed").unlink(missing_ok=True)
    return [p.exitcode for p in processes], outcomes


def _steps_saved(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))


def _assert_peer_failed(codes, outcomes, killed):
    survivor = 1 - killed
    assert codes[killed] == -signal.SIGKILL
    assert codes[survivor] == 1, outcomes[survivor]
    outcome = outcomes[survivor]
    assert "error" in outcome, outcome
    assert f"rank {survivor} of 2: a collective failed" in outcome["error"]
    assert "restart the job to resume" in outcome["error"]
    assert outcome["after_s"] < TIMEOUT_S


def test_a_killed_rank_stops_its_peer_and_the_run_resumes_exactly(
    dist, runs, shards, tiny_model_dir, tmp_path
):
    _, two, _ = runs
    run_dir = tmp_path / "killed"
    root = run_dir / "checkpoints"
    run = (run_dir, shards, tiny_model_dir)
    # rank 1 dies after step 3 was logged, before its checkpoint: rank 0 fails in that save
    codes, outcomes = _launch(dist, run, 1, 3)
    _assert_peer_failed(codes, outcomes, killed=1)
    assert f"the last checkpoint is {root / 'step_00000002'}" in outcomes[0]["error"]
    assert _steps_saved(root) == ["step_00000001", "step_00000002"]
    assert [step for step, _ in _losses(run_dir)] == [1, 2, 3]
    # resumed from step 2; rank 0 dies while saving step 4 (step 3 is saved): rank 1 fails
    codes, outcomes = _launch(dist, run, 0, 4, "save")
    _assert_peer_failed(codes, outcomes, killed=0)
    assert (root / ".tmp-step_00000004").is_dir()
    assert _steps_saved(root)[-1] == "step_00000003"
    # resumed from step 3 to the end: the trace of the uninterrupted 2-rank run
    codes, outcomes = _launch(dist, run)
    assert codes == [0, 0], outcomes
    assert not (root / ".tmp-step_00000004").exists()
    assert _losses(run_dir) == _losses(two)


# ------------------------------------------------------------------------ real torchrun
@pytest.mark.slow
def test_torchrun_with_max_restarts_resumes_a_run_whose_rank_was_killed(
    shards, tiny_model_dir, tmp_path
):
    """`torchrun --max-restarts 1 -m ov_train run`: rank 0 (its pid from the run lock) is
    SIGKILLed mid-run; torchrun restarts both ranks, the run resumes from its latest checkpoint
    by itself and ends with the trace of one uninterrupted rank."""
    steps = 10
    longer = ["--set", f"train.steps={steps}"]
    reference = tmp_path / "one"
    _run_cli_in_process([*_cli_args(shards, reference, tiny_model_dir, 1), *longer])
    run_dir = tmp_path / "torchrun"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "ov_train",
        "run",
        *_cli_args(shards, run_dir, tiny_model_dir, 2),
        *longer,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150  # about 45 s when it works
        while len(_steps_logged(run_dir)) < 3:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        killed = json.loads((run_dir / ".lock").read_text())["pid"]
        os.kill(killed, signal.SIGKILL)
        output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    resumed = re.search(r"steps:\s+(\d+) -> 10", text)
    assert resumed is not None, text
    assert int(resumed.group(1)) >= 2, text
    assert json.loads((run_dir / ".lock").read_text())["pid"] != killed
    got, want = _losses(run_dir), _losses(reference)
    assert [step for step, _ in got] == list(range(1, steps + 1))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)


def _steps_logged(run_dir):
    metrics = run_dir / "metrics.jsonl"
    return metrics.read_text().splitlines() if metrics.is_file() else []
