"""`ov-concepts assign`: top-K concepts of every image, written as memory-mapped arrays.

The concept matrix is read once per worker, validated, L2-normalised and kept on the compute device
(memory proportional to the vocabulary: 500K x 1024 is 2 GB in fp32, 1 GB in bf16). The images are
cut into work units of `unit_rows` rows (`ov_concepts.work_units`); a unit streams its rows from
the memory-mapped file in blocks of `image_block`, runs each block through
`ov_concepts.topk.blocked_topk` (one host sync per block, none per concept block) and writes its
rows to `parts/rows-<first>.ids.npy` (int32, best first) and `.scores.npy` (float16). Concepts
scoring below `min_similarity` are replaced by id -1 and score -inf; they always sit at the end of a
row because rows are sorted. When every unit is done, the parts are concatenated in row order into
`ids.npy` and `scores.npy` (each written to a temporary file, fsynced, renamed), the manifest is
marked complete and the parts are removed.

Units are atomic and recorded with their SHA-256, so a run killed at any point (SIGKILL included)
resumes with the unfinished units. `unit_rows` must be a multiple of `image_block`, so image blocks
start at the same rows whatever the unit size, and the bytes are the same for an interrupted and
resumed run, for 1 or N workers (local processes, or Ray actors with a GPU each) and for any
`unit_rows`. A directory holding a different assignment (other inputs, K, threshold, precision,
device type, image or concept block) is refused: the block sizes and the device decide which matmul
kernel computes the scores, and the top-K is exact with respect to those scores (`topk.py`).
"""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import torch

from ov_concepts.embeddings import EmbeddingMatrix, normalise_rows
from ov_concepts.errors import AssignmentError, ConceptsError, ManifestError
from ov_concepts.manifest import AssignmentManifest, has_manifest, read_manifest, write_manifest
from ov_concepts.topk import blocked_topk
from ov_concepts.work_units import (
    STAGING_DIR,
    UNITS_DIR,
    Engine,
    LocalEngine,
    UnitFailed,
    WorkUnit,
    run_units,
)

IDS_NAME = "ids.npy"
SCORES_NAME = "scores.npy"
PARTS_DIR = "parts"
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
    "image_block",
    "concept_block",
    "unit_rows",
)


@dataclass(frozen=True, kw_only=True)
class AssignConfig:
    """Settings of a top-K assignment."""

    topk: int = 10
    min_similarity: float | None = None
    image_block: int = 4096
    concept_block: int = 16384
    unit_rows: int | None = None  # default: 64 image blocks (262,144 rows at the default)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise AssignmentError(f"topk must be >= 1, got {self.topk}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise AssignmentError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")
        if self.image_block < 1 or self.concept_block < 1:
            raise AssignmentError("image_block and concept_block must be >= 1")
        if self.unit_rows is not None and (self.unit_rows < 1 or self.unit_rows % self.image_block):
            raise AssignmentError(
                f"unit_rows ({self.unit_rows}) must be a positive multiple of image_block "
                f"({self.image_block}), so blocks start at the same rows whatever the unit size"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise AssignmentError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except RuntimeError as error:
            raise AssignmentError(f"unknown device {self.device!r}: {error}") from None

    @property
    def rows_per_unit(self) -> int:
        """`unit_rows`, or 64 image blocks."""
        return self.unit_rows if self.unit_rows is not None else 64 * self.image_block

    def torch_device(self, check: bool = True) -> torch.device:
        """`auto` means CUDA when available, else CPU. `check`: refuse CUDA where there is none
        (off when the work runs elsewhere, on Ray actors)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if check and device.type == "cuda" and not torch.cuda.is_available():
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
    engine: Engine | None = None,
) -> AssignmentManifest:
    """Write the top-K concepts of every image to `out_dir`, resuming an unfinished run there.

    `engine`: where the row units run (default: this process); see `ov_concepts.work_units`.
    """
    config = config or AssignConfig()
    engine = engine or LocalEngine(1)
    if images.dim != concepts.dim:
        raise AssignmentError(
            f"{images.name} has {images.dim} dimensions but {concepts.name} has {concepts.dim}"
        )
    if config.topk > concepts.rows:
        raise AssignmentError(f"topk {config.topk} > {concepts.rows} concepts in {concepts.name}")
    local = isinstance(engine, LocalEngine)
    device = config.torch_device(check=local)
    precision = config.compute_precision(device)
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
        unit_rows=config.rows_per_unit,
        device=str(device),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_job(out_dir, wanted)
    if previous is not None and previous.complete:
        return previous
    write_manifest(out_dir, wanted)
    units = [
        WorkUnit(
            key=f"rows-{first:012d}",
            outputs=(
                f"{PARTS_DIR}/rows-{first:012d}.ids.npy",
                f"{PARTS_DIR}/rows-{first:012d}.scores.npy",
            ),
            params=msgspec.msgpack.encode([first, min(first + config.rows_per_unit, images.rows)]),
        )
        for first in range(0, images.rows, config.rows_per_unit)
    ]
    threads = None
    if local and engine.workers > 1 and device.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // engine.workers)
    task = AssignTask(
        images=(str(images.path), images.tensor),
        concepts=(str(concepts.path), concepts.tensor),
        topk=config.topk,
        min_similarity=config.min_similarity,
        image_block=config.image_block,
        concept_block=config.concept_block,
        device=str(device),
        precision=precision,
        threads=threads,
    )
    if local and engine.workers == 1:
        task.matrices = (images, concepts)  # already open: not opened again inline
    try:
        run_units(
            task,
            units,
            out_dir,
            engine=engine,
            job_digest=_job_digest(wanted),
            progress=progress,
            description=f"assign ({config.rows_per_unit:,} images per unit)",
        )
    except UnitFailed as failure:
        if isinstance(failure.error, ConceptsError):  # names the file and row already
            raise failure.error from None
        raise
    _merge(out_dir, units, wanted)
    manifest = msgspec.structs.replace(wanted, done_rows=wanted.images, complete=True)
    write_manifest(out_dir, manifest)
    shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    shutil.rmtree(out_dir / UNITS_DIR, ignore_errors=True)
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
    return manifest


def _job_digest(manifest: AssignmentManifest) -> str:
    """What every unit depends on besides its rows: the job's manifest, device type included."""
    import hashlib

    pinned = msgspec.structs.replace(manifest, device=torch.device(manifest.device).type)
    return hashlib.sha256(msgspec.json.encode(pinned)).hexdigest()


def _previous_job(out_dir: Path, wanted: AssignmentManifest) -> AssignmentManifest | None:
    """The manifest of this job in `out_dir`, if any; another job's directory is refused."""
    if not has_manifest(out_dir):
        return None
    previous = read_manifest(out_dir, AssignmentManifest)
    for name in _JOB_FIELDS:
        old, new = getattr(previous, name), getattr(wanted, name)
        if name == "unit_rows" and old is None and previous.complete:
            continue  # finished before units existed: the arrays do not depend on unit_rows
        if old != new:
            raise ManifestError(
                f"{out_dir} holds a different assignment ({name}: {old!r} there, {new!r} "
                "now); use a new output directory"
            )
    old_type, new_type = torch.device(previous.device).type, torch.device(wanted.device).type
    if old_type != new_type:
        raise ManifestError(
            f"{out_dir} holds an assignment computed on {old_type}, this run is on {new_type} "
            "(other kernels, other last bits); use a new output directory"
        )
    return previous


def _merge(out_dir: Path, units: list[WorkUnit], manifest: AssignmentManifest) -> None:
    """Concatenate the units' parts, in row order, into ids.npy and scores.npy (atomically)."""
    shape = (manifest.images, manifest.topk)
    for position, (name, dtype) in enumerate(((IDS_NAME, np.int32), (SCORES_NAME, np.float16))):
        temporary = out_dir / (name + ".tmp")
        merged = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
        row = 0
        for unit in units:
            part = np.load(out_dir / unit.outputs[position], mmap_mode="r", allow_pickle=False)
            first, stop = msgspec.msgpack.decode(unit.params)
            if first != row or part.shape != (stop - first, manifest.topk) or part.dtype != dtype:
                raise ManifestError(
                    f"{out_dir / unit.outputs[position]}: {part.dtype} {part.shape}, expected "
                    f"{np.dtype(dtype)} ({stop - first}, {manifest.topk}) at row {first}"
                )
            merged[first:stop] = part
            row = stop
        merged.flush()
        del merged
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, out_dir / name)


@dataclass
class AssignTask:
    """Top-K of one row range per unit (the `UnitTask` of `assign_concepts`)."""

    images: tuple[str, str | None]
    concepts: tuple[str, str | None]
    topk: int
    min_similarity: float | None
    image_block: int
    concept_block: int
    device: str
    precision: str
    threads: int | None = None
    matrices: tuple[EmbeddingMatrix, EmbeddingMatrix] | None = field(default=None, repr=False)
    _concepts: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["matrices"] = state["_concepts"] = None  # opened per worker by setup()
        return state

    def setup(self) -> None:
        """Open the matrices; load the concepts onto the device."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.matrices is None:
            self.matrices = (
                EmbeddingMatrix(Path(self.images[0]), self.images[1]),
                EmbeddingMatrix(Path(self.concepts[0]), self.concepts[1]),
            )
        if self._concepts is None:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self._concepts = load_concepts(self.matrices[1], torch.device(self.device), dtype)

    def run(self, unit: WorkUnit, staging: Path) -> None:
        """Rows [first, stop): their top-K ids (int32) and scores (float16)."""
        first, stop = msgspec.msgpack.decode(unit.params)
        assert self.matrices is not None
        images = self.matrices[0]
        device = torch.device(self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        ids = np.empty((stop - first, self.topk), dtype=np.int32)
        scores = np.empty((stop - first, self.topk), dtype=np.float16)
        with torch.inference_mode():
            for start in range(first, stop, self.image_block):
                end = min(start + self.image_block, stop)
                rows = images.read(start, end)
                block = normalise_rows(torch.from_numpy(rows).to(device), images.name, start)
                top_scores, top_ids = blocked_topk(
                    block.to(dtype), self._concepts, self.topk, self.concept_block
                )
                if self.min_similarity is not None:
                    below = top_scores < self.min_similarity
                    top_ids = top_ids.masked_fill(below, NO_CONCEPT)
                    top_scores = top_scores.masked_fill(below, float("-inf"))
                ids[start - first : end - first] = top_ids.to(torch.int32).cpu().numpy()
                scores[start - first : end - first] = top_scores.to(torch.float16).cpu().numpy()
        for array, name in ((ids, unit.outputs[0]), (scores, unit.outputs[1])):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                np.save(handle, array, allow_pickle=False)


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
                f"{directory}: the assignment of {manifest.images} images is not finished; "
                "rerun `ov-concepts assign` to resume"
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
