"""Shared fixtures: tiny images and parquet/JSONL benchmark files written on the spot.

Fixture files follow the layout of the published datasets (Hugging Face parquet, images as the
Hub's `Image` struct {"bytes", "path"}), so the loaders are tested on the real shape of the data
without any download.
"""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image


def png(color=(255, 0, 0), size=(4, 3)) -> bytes:
    """A small PNG image, as encoded bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_cell(data: bytes | None = None, name: str = "image.png") -> dict:
    """A Hugging Face `Image` cell."""
    return {"bytes": png() if data is None else data, "path": name}


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """Write `rows` as one parquet file at `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def make_png():
    return png


@pytest.fixture
def make_image_cell():
    return image_cell


@pytest.fixture
def make_parquet():
    return write_parquet
