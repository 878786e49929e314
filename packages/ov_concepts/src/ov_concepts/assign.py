"""`ov-concepts assign`: top-K concepts of every image, written as memory-mapped arrays.

The concept matrix is read once, validated, L2-normalised and kept on the compute device (memory
proportional to the vocabulary: 500K x 1024 is 2 GB in fp32, 1 GB in bf16). Images stream through in
blocks of `image_block` rows from their memory-mapped file; each block goes through
`ov_concepts.topk.blocked_topk` and its rows are written into `ids.npy` (int32, images x K, best
first) and `scores.npy` (float16). Concepts scoring below `min_similarity` are replaced by id -1 and
score -inf; they always sit at the end of a row because rows are sorted.

After every image block the arrays are flushed and the manifest's `done_rows` advanced, so a killed
run resumes at the first unfinished block. A directory holding a different assignment (other
inputs, K, threshold or precision) is refused.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import torch

from ov_concepts.embeddings import EmbeddingMatrix, normalise_rows
from ov_concepts.errors import AssignmentError, ManifestError
from ov_concepts.manifest import AssignmentManifest, has_manifest, read_manifest, write_manifest
from ov_concepts.progress import progress_bar
from ov_concepts.topk import blocked_topk

IDS_NAME = "ids.npy"
SCORES_NAME = "scores.npy"
NO_CONCEPT = -1
_JOB_FIELDS = (
    "images",
    "concepts",
    "dim",
    "topk",
    "min_similarity",
    "precision",
    "images_source",
    "concepts_source",
)


@dataclass(frozen=True, kw_only=True)
class AssignConfig:
    """Settings of a top-K assignment."""

    topk: int = 10
    min_similarity: float | None = None
    image_block: int = 4096
    concept_block: int = 16384
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise AssignmentError(f"topk must be >= 1, got {self.topk}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise AssignmentError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")
        if self.image_block < 1 or self.concept_block < 1:
            raise AssignmentError("image_block and concept_block must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise AssignmentError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except RuntimeError as error:
            raise AssignmentError(f"unknown device {self.device!r}: {error}") from None

    def torch_device(self) -> torch.device:
        """`auto` means CUDA when available, else CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AssignmentError(f"device {self.device!r} requested but CUDA is not available")
        return device

    def compute_precision(self, device: torch.device) -> Literal["fp32", "bf16"]:
        """`auto` means bf16 on CUDA, fp32 elsewhere."""
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        return self.precision


def load_concepts(
    concepts: EmbeddingMatrix, device: torch.device, dtype: torch.dtype, block_rows: int = 65536
) -> torch.Tensor:
    """All concept rows, validated and L2-normalised, on `device` in `dtype`."""
    out = torch.empty((concepts.rows, concepts.dim), dtype=dtype, device=device)
    for first, rows in concepts.blocks(block_rows):
        block = torch.from_numpy(rows).to(device)
        out[first : first + len(rows)] = normalise_rows(block, concepts.name, first).to(dtype)
    return out


def assign_concepts(
    images: EmbeddingMatrix,
    concepts: EmbeddingMatrix,
    out_dir: Path,
    config: AssignConfig | None = None,
    *,
    progress: bool = False,
) -> AssignmentManifest:
    """Write the top-K concepts of every image to `out_dir`, resuming an unfinished run there."""
    config = config or AssignConfig()
    if images.dim != concepts.dim:
        raise AssignmentError(
            f"{images.name} has {images.dim} dimensions but {concepts.name} has {concepts.dim}"
        )
    if config.topk > concepts.rows:
        raise AssignmentError(f"topk {config.topk} > {concepts.rows} concepts in {concepts.name}")
    device = config.torch_device()
    precision = config.compute_precision(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    wanted = AssignmentManifest(
        images=images.rows,
        concepts=concepts.rows,
        dim=images.dim,
        topk=config.topk,
        min_similarity=config.min_similarity,
        precision=precision,
        images_source=images.name,
        concepts_source=concepts.name,
        image_block=config.image_block,
        concept_block=config.concept_block,
        device=str(device),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, ids, scores = _open_outputs(out_dir, wanted)
    if manifest.complete:
        return manifest
    concept_matrix = load_concepts(concepts, device, dtype)
    bar = progress_bar(images.rows, "assign", progress, unit="img", initial=manifest.done_rows)
    with bar, torch.inference_mode():
        for first, rows in images.blocks(config.image_block, start=manifest.done_rows):
            block = normalise_rows(torch.from_numpy(rows).to(device), images.name, first)
            top_scores, top_ids = blocked_topk(
                block.to(dtype), concept_matrix, config.topk, config.concept_block
            )
            if config.min_similarity is not None:
                below = top_scores < config.min_similarity
                top_ids = top_ids.masked_fill(below, NO_CONCEPT)
                top_scores = top_scores.masked_fill(below, float("-inf"))
            stop = first + len(rows)
            ids[first:stop] = top_ids.to(torch.int32).cpu().numpy()
            scores[first:stop] = top_scores.to(torch.float16).cpu().numpy()
            ids.flush()
            scores.flush()
            manifest = msgspec.structs.replace(manifest, done_rows=stop)
            write_manifest(out_dir, manifest)
            bar.update(len(rows))
    manifest = msgspec.structs.replace(manifest, complete=True)
    write_manifest(out_dir, manifest)
    return manifest


def _open_outputs(
    out_dir: Path, wanted: AssignmentManifest
) -> tuple[AssignmentManifest, np.ndarray, np.ndarray]:
    shape = (wanted.images, wanted.topk)
    if has_manifest(out_dir):
        previous = read_manifest(out_dir, AssignmentManifest)
        for field in _JOB_FIELDS:
            old, new = getattr(previous, field), getattr(wanted, field)
            if old != new:
                raise ManifestError(
                    f"{out_dir} holds a different assignment ({field}: {old!r} there, {new!r} "
                    "now); use a new output directory"
                )
        try:
            ids = np.lib.format.open_memmap(out_dir / IDS_NAME, mode="r+")
            scores = np.lib.format.open_memmap(out_dir / SCORES_NAME, mode="r+")
        except (OSError, ValueError) as error:
            raise ManifestError(f"{out_dir}: assignment arrays unreadable ({error})") from None
        if ids.shape != shape or scores.shape != shape:
            raise ManifestError(f"{out_dir}: arrays have shape {ids.shape}, expected {shape}")
        return previous, ids, scores
    ids = np.lib.format.open_memmap(out_dir / IDS_NAME, mode="w+", dtype=np.int32, shape=shape)
    scores = np.lib.format.open_memmap(
        out_dir / SCORES_NAME, mode="w+", dtype=np.float16, shape=shape
    )
    write_manifest(out_dir, wanted)
    return wanted, ids, scores


@dataclass(frozen=True)
class Assignments:
    """A finished assignment directory, opened read-only (arrays memory-mapped)."""

    directory: Path
    manifest: AssignmentManifest
    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def open(cls, directory: Path) -> "Assignments":
        """Open `directory`; it must hold a complete assignment."""
        directory = Path(directory)
        manifest = read_manifest(directory, AssignmentManifest)
        if not manifest.complete:
            raise ManifestError(
                f"{directory}: the assignment is not finished ({manifest.done_rows} of "
                f"{manifest.images} images); rerun `ov-concepts assign` to resume"
            )
        shape = (manifest.images, manifest.topk)
        arrays = []
        for name, dtype in ((IDS_NAME, np.int32), (SCORES_NAME, np.float16)):
            try:
                array = np.load(directory / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                raise ManifestError(f"{directory / name}: unreadable ({error})") from None
            if array.shape != shape or array.dtype != dtype:
                raise ManifestError(
                    f"{directory / name}: {array.dtype} {array.shape}, expected "
                    f"{np.dtype(dtype)} {shape}"
                )
            arrays.append(array)
        return cls(directory, manifest, arrays[0], arrays[1])

    @property
    def images(self) -> int:
        """Number of images (rows)."""
        return self.manifest.images

    @property
    def concepts(self) -> int:
        """Vocabulary size (ids are in 0..concepts-1, or -1 for none)."""
        return self.manifest.concepts
