"""Chunked, resumable embedding jobs: `ov-concepts embed-images` and `embed-concepts`.

The inputs are cut into fixed chunks of `chunk_inputs` (the last one shorter). Each chunk is encoded
in batches, its rows are validated and L2-normalised, and it is written to `chunk-NNNNNN.npy`
(temporary file, fsync, rename) before the manifest records it. A job killed at any point therefore
loses at most the chunk it was working on: rerunning the same command reads the manifest, checks
that encoder, inputs (a SHA-256 over every key), chunk size and dtype are unchanged, and encodes
only the chunks the manifest does not list. Chunk boundaries depend only on `chunk_inputs`, so a
resumed job writes the same bytes as an uninterrupted one.

Inputs that fail to load (corrupt images) are recorded in their chunk's manifest entry and skipped;
when the job completes it writes `keys.txt` (the key of each embedding row, in row order, so row i
of the matrix is the i-th line) and `failures.jsonl`. A NaN/inf or zero-norm embedding is an error
naming the input, because it means the encoder, not the image, is broken.

Chunks cost one file each; 8192 inputs per chunk makes about 10,000 files for 85M images, and a
kill redoes at most 8192 encodings.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import torch
from tqdm import tqdm

from ov_concepts.embeddings import normalise_rows
from ov_concepts.encoders import Encoder
from ov_concepts.errors import ConceptsError, EmbeddingError, ManifestError
from ov_concepts.inputs import Inputs, LoadFailure, inputs_digest, iter_ranges
from ov_concepts.manifest import (
    EmbeddingChunk,
    EmbeddingManifest,
    FailedInput,
    has_manifest,
    read_manifest,
    write_manifest,
)
from ov_concepts.progress import progress_bar

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
    encoder: Encoder,
    out_dir: Path,
    config: EmbedJobConfig | None = None,
    *,
    progress: bool = False,
) -> EmbeddingManifest:
    """Embed every input into `out_dir`, resuming a previous run of the same job there."""
    config = config or EmbedJobConfig()
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
    chunks = _finished_chunks(out_dir, wanted)
    manifest = msgspec.structs.replace(wanted, chunks=chunks)
    if len(chunks) == _chunk_count(wanted) and has_manifest(out_dir):
        previous = read_manifest(out_dir, EmbeddingManifest)
        if previous.complete:
            return previous
    write_manifest(out_dir, manifest)
    done = {chunk.index for chunk in chunks}
    bar = progress_bar(
        len(inputs),
        f"embed {inputs.kind}",
        progress,
        unit=inputs.kind[:-1],
        initial=sum(chunk.inputs for chunk in chunks),
    )
    with bar:
        for index, (first, stop) in enumerate(iter_ranges(len(inputs), config.chunk_inputs)):
            if index in done:
                continue
            chunks.append(_embed_chunk(inputs, encoder, out_dir, config, index, first, stop, bar))
            failed = sum(len(chunk.failed) for chunk in chunks)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            chunks.sort(key=lambda chunk: chunk.index)
            manifest = msgspec.structs.replace(manifest, chunks=list(chunks))
            write_manifest(out_dir, manifest)
    _write_keys_and_failures(inputs, out_dir, chunks)
    manifest = msgspec.structs.replace(manifest, complete=True)
    write_manifest(out_dir, manifest)
    return manifest


def _chunk_count(manifest: EmbeddingManifest) -> int:
    return -(-manifest.inputs // manifest.chunk_inputs)


def _finished_chunks(out_dir: Path, wanted: EmbeddingManifest) -> list[EmbeddingChunk]:
    """Chunks of a previous run of the same job whose files are intact; [] for a fresh job."""
    if not has_manifest(out_dir):
        return []
    previous = read_manifest(out_dir, EmbeddingManifest)
    for field in _JOB_FIELDS:
        old, new = getattr(previous, field), getattr(wanted, field)
        if old != new:
            raise ManifestError(
                f"{out_dir} holds a different embedding job ({field}: {old!r} there, {new!r} now); "
                "use a new output directory"
            )
    intact = []
    for chunk in previous.chunks:
        try:
            array = np.load(out_dir / chunk.file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            continue  # missing or damaged: encode it again
        if array.shape == (chunk.rows, wanted.dim) and array.dtype == np.dtype(wanted.dtype):
            intact.append(chunk)
    return intact


def _embed_chunk(
    inputs: Inputs,
    encoder: Encoder,
    out_dir: Path,
    config: EmbedJobConfig,
    index: int,
    first: int,
    stop: int,
    bar: tqdm,
) -> EmbeddingChunk:
    parts: list[np.ndarray] = []
    failed: list[FailedInput] = []
    for batch_start, batch_stop in iter_ranges(stop, config.batch_size, first):
        items, failures = inputs.load(batch_start, batch_stop)
        failed.extend(FailedInput(f.input, f.key, f.reason) for f in failures)
        if items:
            parts.append(_encode(inputs, encoder, items, batch_start, batch_stop, failures, config))
        bar.update(batch_stop - batch_start)
    data = np.concatenate(parts) if parts else np.empty((0, encoder.dim), dtype=config.dtype)
    name = f"chunk-{index:06d}.npy"
    temporary = out_dir / (name + ".tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, data, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, out_dir / name)
    return EmbeddingChunk(index, name, first, stop - first, len(data), failed)


def _encode(
    inputs: Inputs,
    encoder: Encoder,
    items: list,
    batch_start: int,
    batch_stop: int,
    failures: list[LoadFailure],
    config: EmbedJobConfig,
) -> np.ndarray:
    """Encode one batch; validate and L2-normalise its rows, named by input index and key."""
    encode = encoder.encode_images if inputs.kind == "images" else encoder.encode_texts
    raw = np.asarray(encode(items))
    if raw.shape != (len(items), encoder.dim):
        raise EmbeddingError(
            f"encoder {encoder.description} returned shape {raw.shape} for {len(items)} "
            f"{inputs.kind}, expected ({len(items)}, {encoder.dim})"
        )
    failed = {failure.input for failure in failures}
    keys = inputs.keys(batch_start, batch_stop)
    labels = [
        f"input {batch_start + i} ({keys[i]})"
        for i in range(batch_stop - batch_start)
        if batch_start + i not in failed
    ]
    rows = normalise_rows(
        torch.from_numpy(raw.astype(np.float32, copy=False)),
        f"{inputs.kind} embeddings of {encoder.description}",
        labels=labels,
    )
    return rows.numpy().astype(config.dtype)


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
