"""The ov_packing wheel installs alone in an empty venv and plans from the command line.

A team may adopt only the packer: this builds the wheel (compiling the C++ core), installs it with
its third-party dependencies only, and runs `ov-pack plan` and `ov-pack verify` there.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1]


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


@pytest.mark.slow
def test_wheel_installs_alone_and_plans(tmp_path):
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([*_uv(), "build", "--wheel", "-q", "-o", dist, PACKAGE], check=True)
    (wheel,) = dist.glob("ov_packing-*.whl")
    subprocess.run([*_uv(), "venv", "-q", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*_uv(), "pip", "install", "-q", "--python", python, wheel], check=True)
    listed = subprocess.run(
        [*_uv(), "pip", "list", "--python", python, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert "ov-packing" in names
    assert not names & {"torch", "rice-vit", "ov-model"}

    lengths, plan = tmp_path / "lengths.jsonl", tmp_path / "plan.ovp"
    lengths.write_text("".join(f'{{"id": "s{i}", "tokens": {100 + 37 * i}}}\n' for i in range(50)))
    ov_pack = venv / "bin" / "ov-pack"
    planned = subprocess.run(
        [ov_pack, "plan", lengths, "--capacity", "1024", "-o", plan],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "bins" in planned.stdout
    verified = subprocess.run(
        [ov_pack, "verify", plan, "--input", lengths], capture_output=True, text=True, check=True
    )
    assert verified.stdout.startswith("ok:")
    core = subprocess.run(
        [python, "-c", "import ov_packing._core as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in core.stdout
