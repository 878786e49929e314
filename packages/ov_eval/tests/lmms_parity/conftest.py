"""Shared fixtures of the lmms-eval parity tests.

The helper modules of this folder (`lmms_harness.py`, `mc_corpus.py`, `freeform_corpus.py`) are
loaded by path, as the test modules are imported without a package path: `lmms` is the harness
(lmms-eval's task objects built offline and its scoring pipeline, see its docstring),
`parity_helper("<module>")` loads any helper module of this folder by name. Every test module
starts with `pytest.importorskip("lmms_eval")`, so without the extra they skip before the
harness (which imports lmms-eval) is loaded.
"""

import importlib.util
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

_HERE = Path(__file__).parent


def _load(name: str):
    module_name = f"ov_eval_lmms_parity_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def parity_helper():
    """`parity_helper("mc_corpus")`: a helper module of this folder, loaded once."""
    return _load


@pytest.fixture(scope="session")
def lmms():
    """The lmms-eval harness module (load_task, prompt, visuals, reference_results, ...)."""
    return _load("lmms_harness")


@pytest.fixture(scope="session")
def mc_corpus():
    """The multiple-choice output corpus module (see mc_corpus.py)."""
    return _load("mc_corpus")


def png_cell(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> dict:
    """A Hugging Face `Image` cell holding a small PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": "image.png"}


@pytest.fixture(scope="session")
def image_cell():
    """`image_cell((r, g, b))`: a Hugging Face `Image` cell (distinct colours tell images apart)."""
    return png_cell


def to_lmms_doc(row: dict) -> dict:
    """The document lmms-eval's functions receive for a dataset `row`: the same columns, with
    `Image` cells decoded to PIL images as `datasets` does."""
    doc = {}
    for key, value in row.items():
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
            value = Image.open(io.BytesIO(value["bytes"]))
        doc[key] = value
    return doc


@pytest.fixture(scope="session")
def lmms_doc():
    """`lmms_doc(row)`: the lmms-eval document for a dataset row (images decoded)."""
    return to_lmms_doc


def image_signature(images) -> list[tuple]:
    """What tells the test images apart: size and the colour of the first pixel, in order."""
    return [(image.size, image.convert("RGB").getpixel((0, 0))) for image in images]


@pytest.fixture(scope="session")
def images_of():
    """`images_of(images)`: comparable signatures of a list of PIL images."""
    return image_signature
