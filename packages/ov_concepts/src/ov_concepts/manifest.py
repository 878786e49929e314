"""The manifests that make ov_concepts' outputs self-describing and its long jobs resumable.

Each output directory holds a `manifest.json` written atomically (temporary file, then rename), so a
job killed at any instant leaves either the previous manifest or the new one, never half of one.
Jobs append a chunk to the manifest only after the chunk's data file is complete on disk; on restart
they trust exactly what the manifest lists and redo everything else. A manifest also records the
settings and inputs of its job, and a restart with different ones is refused instead of mixing two
jobs' rows in one directory.
"""

import os
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from ov_concepts.errors import ManifestError

MANIFEST_NAME = "manifest.json"
EMBEDDINGS_FORMAT = "ov-concepts/embeddings"
ASSIGNMENTS_FORMAT = "ov-concepts/assignments"
VERSION = 1


class FailedInput(msgspec.Struct, frozen=True):
    """An input that could not be loaded (a corrupt image): index, key, reason."""

    input: int
    key: str
    reason: str


class EmbeddingChunk(msgspec.Struct, frozen=True):
    """One finished chunk: inputs [first_input, first_input + inputs) minus `failed`, in order."""

    index: int
    file: str
    first_input: int
    inputs: int
    rows: int
    failed: list[FailedInput] = []


class EmbeddingManifest(msgspec.Struct, frozen=True):
    """An embedding directory: L2-normalised rows of `dim` values in chunk files, in input order."""

    kind: Literal["images", "concepts"]
    encoder: str
    dim: int
    dtype: Literal["float32", "float16"]
    inputs: int
    inputs_digest: str
    chunk_inputs: int
    chunks: list[EmbeddingChunk] = []
    complete: bool = False
    format: str = EMBEDDINGS_FORMAT
    version: int = VERSION

    @property
    def rows(self) -> int:
        """Embedding rows written so far (inputs minus failures)."""
        return sum(chunk.rows for chunk in self.chunks)


class AssignmentManifest(msgspec.Struct, frozen=True):
    """An assignment directory: ids.npy (int32, images x topk) and scores.npy (float16)."""

    images: int
    concepts: int
    dim: int
    topk: int
    min_similarity: float | None
    precision: Literal["fp32", "bf16"]
    images_source: str
    concepts_source: str
    image_block: int
    concept_block: int
    done_rows: int = 0
    unit_rows: int | None = None
    complete: bool = False
    device: str = "cpu"
    format: str = ASSIGNMENTS_FORMAT
    version: int = VERSION


M = TypeVar("M", EmbeddingManifest, AssignmentManifest)
_FORMATS = {EmbeddingManifest: EMBEDDINGS_FORMAT, AssignmentManifest: ASSIGNMENTS_FORMAT}


def write_manifest(directory: Path, manifest: EmbeddingManifest | AssignmentManifest) -> None:
    """Atomically replace `directory/manifest.json`."""
    path = Path(directory) / MANIFEST_NAME
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_manifest(directory: Path, kind: type[M]) -> M:
    """Read and validate `directory/manifest.json` as a manifest of type `kind`."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"{directory}: no {MANIFEST_NAME} (not an ov-concepts output)"
        ) from None
    try:
        header = msgspec.json.decode(raw, type=dict)
    except msgspec.DecodeError as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from None
    expected = _FORMATS[kind]
    if header.get("format") != expected:
        raise ManifestError(f"{path}: format {header.get('format')!r}, expected {expected!r}")
    if header.get("version") != VERSION:
        raise ManifestError(
            f"{path}: version {header.get('version')!r}, this reader knows {VERSION}"
        )
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as error:
        raise ManifestError(f"{path}: {error}") from None


def has_manifest(directory: Path) -> bool:
    """Whether `directory` holds a manifest (of any kind)."""
    return (Path(directory) / MANIFEST_NAME).is_file()
