"""Chunked, resumable embedding jobs: `ov-concepts embed-images` and `embed-concepts`.

The inputs are cut into fixed chunks of `chunk_inputs` (the last one shorter); each chunk is a work
unit (`ov_concepts.work_units`): the unit carries the chunk's keys (image paths, row numbers or
concept texts), encodes them in batches of `batch_size`, validates and L2-normalises the rows, and
writes `chunk-NNNNNN.npy` plus `chunk-NNNNNN.json` (its `EmbeddingChunk`: input range, rows, the
inputs that failed to load). Units are written atomically and recorded with their SHA-256, so a job
killed at any point (SIGKILL included) loses at most the chunks in flight: rerunning the same
command verifies the finished chunks and encodes only the others. When every unit is done the
manifest lists the chunks in order (the merge is that list: the directory reads as one matrix) and
`keys.txt` and `failures.jsonl` are written. A manifest names the job (encoder, inputs and their
SHA-256, chunk size, dtype); a different job in the same directory is refused.

Bytes do not depend on how the job runs: chunk boundaries depend only on `chunk_inputs`, batch
boundaries only on `batch_size`, and each chunk is a pure function of its keys and the encoder, so
an interrupted and resumed run, 1 or N unit workers (`--workers`, each with its own encoder, e.g.
one per GPU through Ray) and any number of decoding processes (`decode_workers`, feeding one
encoder batches in input order, `ov_concepts.decode`) write the same files.

Inputs that fail to load (corrupt images) are recorded in their chunk and skipped; `keys.txt` holds
the key of each embedding row, in row order. A NaN/inf or zero-norm embedding is an error naming the
input, because it means the encoder, not the image, is broken.

Chunks cost two files each; 8192 inputs per chunk makes about 10,400 chunks for 85M images, and a
kill redoes at most 8192 encodings per worker.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import torch

from ov_concepts.decode import DecodePool, load_images
from ov_concepts.embeddings import normalise_rows
from ov_concepts.encoders import Encoder, EncoderSpec
from ov_concepts.errors import ConceptsError, EmbeddingError, ManifestError
from ov_concepts.inputs import (
    ImageLoader,
    Inputs,
    RowLoader,
    TextLoader,
    inputs_digest,
    iter_ranges,
)
from ov_concepts.manifest import (
    EmbeddingChunk,
    EmbeddingManifest,
    FailedInput,
    has_manifest,
    read_manifest,
    write_manifest,
)
from ov_concepts.work_units import (
    Engine,
    LocalEngine,
    UnitFailed,
    WorkUnit,
    run_units,
)

KEYS_NAME = "keys.txt"
FAILURES_NAME = "failures.jsonl"
_JOB_FIELDS = ("kind", "encoder", "dim", "dtype", "inputs", "inputs_digest", "chunk_inputs")


@dataclass(frozen=True, kw_only=True)
class EmbedJobConfig:
    """How an embedding job cuts and stores its work."""

    chunk_inputs: int = 8192
    batch_size: int = 64
    dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        if self.chunk_inputs < 1:
            raise ConceptsError(f"chunk_inputs must be >= 1, got {self.chunk_inputs}")
        if self.batch_size < 1:
            raise ConceptsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("float32", "float16"):
            raise ConceptsError(f"dtype must be float32 or float16, got {self.dtype!r}")


def run_embedding_job(
    inputs: Inputs,
    encoder: Encoder | EncoderSpec,
    out_dir: Path,
    config: EmbedJobConfig | None = None,
    *,
    progress: bool = False,
    engine: Engine | None = None,
    decode_workers: int = 0,
) -> EmbeddingManifest:
    """Embed every input into `out_dir`, resuming a previous run of the same job there.

    `engine`: where the chunks run (default: this process). An engine with worker processes or Ray
    actors needs an `EncoderSpec` (picklable), built once per worker. `decode_workers`: processes
    decoding and preparing images for each encoder (0: in the encoder's process).
    """
    config = config or EmbedJobConfig()
    engine = engine or LocalEngine(1)
    if decode_workers < 0:
        raise ConceptsError(f"decode_workers must be >= 0, got {decode_workers}")
    inline = isinstance(engine, LocalEngine) and engine.workers == 1
    if not inline and not is_spec(encoder):
        raise ConceptsError(
            f"{engine.describe()} runs chunks in other processes: pass an EncoderSpec "
            f"(picklable, e.g. ClipEncoderSpec or PrecomputedImagesSpec), not a "
            f"{type(encoder).__name__}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = EmbeddingManifest(
        kind=inputs.kind,  # type: ignore[arg-type]
        encoder=encoder.description,
        dim=encoder.dim,
        dtype=config.dtype,
        inputs=len(inputs),
        inputs_digest=inputs_digest(inputs),
        chunk_inputs=config.chunk_inputs,
    )
    if _previous_job(out_dir, wanted):
        return read_manifest(out_dir, EmbeddingManifest)
    write_manifest(out_dir, wanted)
    units = [
        WorkUnit(
            key=_chunk_name(index),
            outputs=(_chunk_name(index) + ".npy", _chunk_name(index) + ".json"),
            params=msgspec.msgpack.encode([index, first, list(inputs.keys(first, stop))]),
        )
        for index, (first, stop) in enumerate(iter_ranges(len(inputs), config.chunk_inputs))
    ]
    task = EmbedTask(
        kind=inputs.kind,
        loader=inputs.loader(),
        encoder=encoder,
        dim=encoder.dim,
        dtype=config.dtype,
        batch_size=config.batch_size,
        decode_workers=decode_workers,
    )
    try:
        run_units(
            task,
            units,
            out_dir,
            engine=engine,
            job_digest=_job_digest(wanted),
            progress=progress,
            description=f"embed {inputs.kind} ({config.chunk_inputs} per chunk)",
        )
    except UnitFailed as failure:
        if isinstance(failure.error, ConceptsError):  # names the input already
            raise failure.error from None
        raise
    finally:
        task.close()
    chunks = [_read_chunk(out_dir, unit.outputs[1]) for unit in units]
    _write_keys_and_failures(inputs, out_dir, chunks)
    manifest = msgspec.structs.replace(wanted, chunks=chunks, complete=True)
    write_manifest(out_dir, manifest)
    return manifest


def is_spec(encoder: object) -> bool:
    """Whether `encoder` is an `EncoderSpec` (has `build`), not an encoder."""
    return callable(getattr(type(encoder), "build", None))


def _chunk_name(index: int) -> str:
    return f"chunk-{index:06d}"


def _job_digest(manifest: EmbeddingManifest) -> str:
    """What every chunk depends on besides its keys: the job's manifest (no chunks yet)."""
    bare = msgspec.structs.replace(manifest, chunks=[], complete=False)
    return hashlib.sha256(msgspec.json.encode(bare)).hexdigest()


def _previous_job(out_dir: Path, wanted: EmbeddingManifest) -> bool:
    """Whether `out_dir` holds this job, complete; refuses another job's directory."""
    if not has_manifest(out_dir):
        return False
    previous = read_manifest(out_dir, EmbeddingManifest)
    for name in _JOB_FIELDS:
        old, new = getattr(previous, name), getattr(wanted, name)
        if old != new:
            raise ManifestError(
                f"{out_dir} holds a different embedding job ({name}: {old!r} there, {new!r} now); "
                "use a new output directory"
            )
    return previous.complete


def _read_chunk(out_dir: Path, name: str) -> EmbeddingChunk:
    try:
        return msgspec.json.decode((out_dir / name).read_bytes(), type=EmbeddingChunk)
    except (OSError, msgspec.DecodeError) as error:
        raise ManifestError(f"{out_dir / name}: unreadable chunk record ({error})") from None


@dataclass
class EmbedTask:
    """One chunk of an embedding job per unit (the `UnitTask` of `run_embedding_job`)."""

    kind: str
    loader: ImageLoader | RowLoader | TextLoader
    encoder: Encoder | EncoderSpec
    dim: int
    dtype: str
    batch_size: int
    decode_workers: int = 0
    _model: Any = field(default=None, repr=False)
    _pool: DecodePool | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = state["_pool"] = None  # built per worker by setup()
        return state

    def setup(self) -> None:
        """Build the encoder; start the decoding processes for image files."""
        if self._model is None:
            built = self.encoder.build() if is_spec(self.encoder) else self.encoder
            self._model = built
        if isinstance(self.loader, ImageLoader) and self._pool is None:
            preparer = getattr(self._model, "image_preparer", None)
            self._pool = DecodePool(self.decode_workers, preparer() if preparer else None)

    def close(self) -> None:
        """Stop the decoding processes (this process's copy of the task)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run(self, unit: WorkUnit, staging: Path) -> None:
        """Encode the unit's inputs; write its .npy rows and .json chunk record."""
        index, first, keys = msgspec.msgpack.decode(unit.params)
        stream = self._loaded(keys)
        parts: list[np.ndarray] = []
        failed: list[FailedInput] = []
        for start in range(0, len(keys), self.batch_size):
            batch_keys = keys[start : start + self.batch_size]
            items, labels = [], []
            for offset, key in enumerate(batch_keys):
                ok, value = next(stream)
                position = first + start + offset
                if ok:
                    items.append(value)
                    labels.append(f"input {position} ({key})")
                else:
                    failed.append(FailedInput(position, key, value))
            if items:
                parts.append(self._encode(items, labels))
        data = np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=self.dtype)
        npy_name, json_name = unit.outputs
        with open(staging / npy_name, "wb") as handle:
            np.save(handle, data, allow_pickle=False)
        chunk = EmbeddingChunk(index, npy_name, first, len(keys), len(data), failed)
        (staging / json_name).write_bytes(msgspec.json.encode(chunk))

    def _loaded(self, keys: list[str]):
        if isinstance(self.loader, ImageLoader):
            if self._pool is not None:
                return iter(self._pool.load(self.loader.root, keys))
            return iter(load_images(self.loader.root, keys))
        return iter((True, item) for item in self.loader.items(keys))

    def _encode(self, items: list, labels: list[str]) -> np.ndarray:
        """Encode one batch; validate and L2-normalise its rows, named by input index and key."""
        model = self._model
        encode = model.encode_images if self.kind == "images" else model.encode_texts
        raw = np.asarray(encode(items))
        if raw.shape != (len(items), self.dim):
            raise EmbeddingError(
                f"encoder {model.description} returned shape {raw.shape} for {len(items)} "
                f"{self.kind}, expected ({len(items)}, {self.dim})"
            )
        rows = normalise_rows(
            torch.from_numpy(raw.astype(np.float32, copy=False)),
            f"{self.kind} embeddings of {model.description}",
            labels=labels,
        )
        return rows.numpy().astype(self.dtype)


def _write_keys_and_failures(inputs: Inputs, out_dir: Path, chunks: list[EmbeddingChunk]) -> None:
    encoder = msgspec.json.Encoder()
    with (
        open(out_dir / KEYS_NAME, "w", encoding="utf-8", newline="\n") as keys_file,
        open(out_dir / FAILURES_NAME, "wb") as failures_file,
    ):
        for chunk in chunks:
            failed = {f.input for f in chunk.failed}
            keys = inputs.keys(chunk.first_input, chunk.first_input + chunk.inputs)
            for offset, key in enumerate(keys):
                if chunk.first_input + offset not in failed:
                    keys_file.write(key + "\n")
            for failure in chunk.failed:
                failures_file.write(encoder.encode(failure) + b"\n")
