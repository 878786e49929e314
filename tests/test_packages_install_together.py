"""Integration: every package of the workspace imports and every CLI answers --help and --version.

The CLIs run as real subprocesses through their installed console scripts, as a user calls them.
"""

import importlib
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

PACKAGES = {
    # import name: (distribution, console script)
    "rice_vit": ("rice-vit", "rice-vit"),
    "ov_packing": ("ov-packing", "ov-pack"),
    "ov_concepts": ("ov-concepts", "ov-concepts"),
    "ov_model": ("ov-model", "ov-model"),
    "ov_train": ("ov-train", "ov-train"),
    "ov_eval": ("ov-eval", "ov-eval"),
}
SCRIPTS_DIR = Path(sys.executable).parent


def test_every_workspace_member_is_listed_here():
    members = {path.name for path in (Path(__file__).parents[1] / "packages").iterdir()}
    assert members == set(PACKAGES)


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_package_imports_with_its_distribution_version(module):
    dist_name, _ = PACKAGES[module]
    package = importlib.import_module(module)
    assert package.__version__ == distribution(dist_name).version


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_console_script_answers_help_and_version(module):
    dist_name, script = PACKAGES[module]
    entry_points = {ep.name: ep.value for ep in distribution(dist_name).entry_points}
    assert entry_points[script] == f"{module}.cli:main"
    executable = SCRIPTS_DIR / script
    help_run = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert help_run.stdout.startswith(f"Usage: {script} ")
    version_run = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=True
    )
    assert version_run.stdout.strip() == f"{script}, version {distribution(dist_name).version}"


def test_compiled_packing_core_is_loaded():
    core = importlib.import_module("ov_packing._core")
    assert Path(core.__file__).suffix in {".so", ".pyd"}
    assert core.lower_bound_bins([8192, 1], 8192) == 2
