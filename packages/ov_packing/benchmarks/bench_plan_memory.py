"""Peak memory and time of `ov-pack plan` and `ov-pack verify`: before (JSONL input, plan format 1)
against after (Parquet input, plan format 2), in the same run, on the same samples.

Run: `uv run pytest packages/ov_packing/benchmarks/bench_plan_memory.py -o python_files='bench_*.py'
-s` (200,000 samples, as in CI); the issue's size is
`OV_PACK_BENCH_SAMPLES=10000000 uv run pytest ... -s` (about 4 minutes, 6 GB of disk-free temp
space not needed: the files are ~0.6 GB). The goal, checked from 5M samples up (below that the
interpreter's fixed cost dominates): at most 64 bytes per sample for `plan` from Parquet and for
`verify --input` of the Parquet file against a format-2 plan.

Method. Each command runs in its own process, started by a small launcher interpreter that reports
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` after it ends (the launcher is small, so the
child's peak is not inherited from the pytest process; see bench_pack's note). "Above the
interpreter" subtracts the peak of the same launcher running a bare `python -c pass`; the report
also gives the figure above an interpreter that has imported everything `ov-pack` imports
(`ov_packing.cli`, numpy, pyarrow, pyarrow.parquet, pyarrow.json), i.e. the per-sample data alone.
With `OV_PACK_BENCH_BASELINE=<commit>` (e.g. `369aacd`, the last commit before plan format 2) two
more rows run that commit's `ov-pack` (its Python sources from `git archive`, with this checkout's
compiled core) on the same JSONL: the code as it was, not only the old formats.

Samples: the `sft` generator (tokens and ViT patches), ids `s000000000`... (10 bytes), packed at
8192 tokens and 8192 patches per bin.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ov_packing.inputs import SampleLengths, write_lengths
from ov_packing.synthetic import generate_lengths

SAMPLES = int(os.environ.get("OV_PACK_BENCH_SAMPLES", "200000"))
GOAL_BYTES_PER_SAMPLE = 64
GOAL_FROM = 5_000_000
_LAUNCHER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
_IMPORTS = (
    "import numpy, pyarrow, pyarrow.parquet, pyarrow.json, pyarrow.compute, ov_packing.cli, "
    "ov_packing.inputs, ov_packing.verify, ov_packing.stats"
)
_OV_PACK = [sys.executable, "-m", "ov_packing"]
BASELINE = os.environ.get("OV_PACK_BENCH_BASELINE")
_OLD_RUNNER = """
import sys
sys.meta_path = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, {tree!r})
import ov_packing
assert ov_packing.__file__.startswith({tree!r}), ov_packing.__file__
from ov_packing.cli import main
main(sys.argv[1:], prog_name="ov-pack")
"""


def _baseline_command(folder: Path) -> list[str]:
    """`ov-pack` as it was at commit BASELINE: its sources, this checkout's compiled core."""
    import ov_packing._core

    tree = folder / "baseline"
    tree.mkdir()
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", root, "archive", BASELINE, "packages/ov_packing/src/ov_packing"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    package = tree / "ov_packing"
    (tree / "packages/ov_packing/src/ov_packing").rename(package)
    shutil.copy(ov_packing._core.__file__, package)
    return [sys.executable, "-c", _OLD_RUNNER.format(tree=str(tree))]


def _peak_kib(command: list[str]) -> tuple[int, float]:
    """Peak RSS (KiB) of `command`, run under the launcher, and its wall time in seconds."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise AssertionError(f"{command} failed:\n{out.stderr}")
    return int(out.stdout.strip()), seconds


def _ids(count: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(count)), pa.string()), 9, "0")
    return pc.binary_join_element_wise("s", digits, "")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plan_memory")
    base = generate_lengths("sft", SAMPLES, seed=0, with_ids=False)
    lengths = SampleLengths("bench", _ids(SAMPLES), base.tokens, base.patches)
    paths = {"jsonl": folder / "lengths.jsonl", "parquet": folder / "lengths.parquet"}
    for path in paths.values():
        write_lengths(path, lengths)
    paths["folder"] = folder
    return paths


def test_plan_and_verify_peak_memory_before_and_after(inputs):
    folder = inputs["folder"]
    bare, _ = _peak_kib([sys.executable, "-c", "pass"])
    imported, _ = _peak_kib([sys.executable, "-c", _IMPORTS])
    budgets = ["--capacity", "8192", "--patch-capacity", "8192"]
    runs = {
        "before: plan from JSONL, format 1": [
            *_OV_PACK, "plan", str(inputs["jsonl"]), *budgets, "--plan-format", "1",
            "-o", str(folder / "v1.ovp"), "--overwrite",
        ],
        "before: verify format 1 --input JSONL": [
            *_OV_PACK, "verify", str(folder / "v1.ovp"), "--input", str(inputs["jsonl"]),
        ],
        "after: plan from Parquet, format 2": [
            *_OV_PACK, "plan", str(inputs["parquet"]), *budgets, "-o", str(folder / "v2.ovp"),
            "--overwrite",
        ],
        "after: verify format 2 --input Parquet": [
            *_OV_PACK, "verify", str(folder / "v2.ovp"), "--input", str(inputs["parquet"]),
        ],
    }  # fmt: skip
    if BASELINE:
        old = _baseline_command(folder)
        runs[f"today ({BASELINE}): plan from JSONL"] = [
            *old,
            "plan",
            str(inputs["jsonl"]),
            *budgets,
            "-o",
            str(folder / "old.ovp"),
        ]
        runs[f"today ({BASELINE}): verify --input JSONL"] = [
            *old, "verify", str(folder / "old.ovp"), "--input", str(inputs["jsonl"]),
        ]  # fmt: skip
    results = {}
    for name, command in runs.items():
        peak, seconds = _peak_kib(command)
        results[name] = (
            (peak - bare) * 1024 / SAMPLES,
            (peak - imported) * 1024 / SAMPLES,
            seconds,
        )
    print(
        f"\n{SAMPLES:,} samples; bare interpreter peak {bare / 1024:.1f} MiB, "
        f"with ov-pack's imports {imported / 1024:.1f} MiB"
    )
    print(f"{'run':44} {'B/sample above bare':>20} {'above imports':>14} {'seconds':>8}")
    for name, (above_bare, above_imports, seconds) in results.items():
        print(f"{name:44} {above_bare:20.1f} {above_imports:14.1f} {seconds:8.2f}")
    assert (folder / "v1.ovp").read_bytes()[:6] == b"OVPLAN"
    assert (folder / "v2.ovp").read_bytes()[:6] == b"ARROW1"
    if SAMPLES >= GOAL_FROM:
        for name in (
            "after: plan from Parquet, format 2",
            "after: verify format 2 --input Parquet",
        ):
            assert results[name][0] <= GOAL_BYTES_PER_SAMPLE, (name, results[name])
