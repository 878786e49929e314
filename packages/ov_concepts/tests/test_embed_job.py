"""Chunked embedding jobs: resume after a kill, corrupt images, bad embeddings, job mismatches."""

import json
import os
import signal
import subprocess
import sys
import time

import msgspec
import numpy as np
import pytest
from PIL import Image

from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import PrecomputedEncoder
from ov_concepts.errors import ConceptsError, EmbeddingError, ManifestError
from ov_concepts.inputs import ConceptTexts, EmbeddingRows, ImageFiles
from ov_concepts.manifest import EmbeddingManifest, read_manifest, write_manifest
from ov_concepts.vocabulary import Vocabulary
from ov_concepts.work_units import UnitFailed

CONFIG = EmbedJobConfig(chunk_inputs=7, batch_size=3)


class Killed(Exception):
    """Stands in for SIGKILL in the middle of a job."""


class CountingEncoder:
    """Wraps an encoder; counts encoded inputs and dies after `die_after` batches if asked."""

    def __init__(self, inner, die_after: int | None = None):
        self.inner, self.die_after, self.batches, self.encoded = inner, die_after, 0, 0
        self.dim, self.description = inner.dim, inner.description

    def encode_images(self, images):
        if self.die_after is not None and self.batches == self.die_after:
            raise Killed
        self.batches += 1
        self.encoded += len(images)
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        self.encoded += len(texts)
        return self.inner.encode_texts(texts)


@pytest.fixture
def rows(tmp_path):
    data = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32)
    np.save(tmp_path / "source.npy", data)
    return EmbeddingMatrix(tmp_path / "source.npy"), data


def _all_files(directory):
    """Every file under `directory` (records included) by relative path, with its bytes."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_killed_job_resumes_without_redoing_finished_chunks(tmp_path, rows):
    matrix, data = rows
    whole = run_embedding_job(
        EmbeddingRows(30), PrecomputedEncoder(images=matrix), tmp_path / "a", CONFIG
    )
    assert whole.complete
    assert whole.rows == 30
    assert len(whole.chunks) == 5

    dying = CountingEncoder(PrecomputedEncoder(images=matrix), die_after=7)  # in the 3rd chunk
    with pytest.raises(UnitFailed, match=r"chunk-000002"):
        run_embedding_job(EmbeddingRows(30), dying, tmp_path / "b", CONFIG)
    interrupted = read_manifest(tmp_path / "b", EmbeddingManifest)
    assert not interrupted.complete
    assert sorted(p.name for p in (tmp_path / "b" / ".units").glob("chunk-*.json")) == [
        "chunk-000000.json",
        "chunk-000001.json",
    ]

    resumed_encoder = CountingEncoder(PrecomputedEncoder(images=matrix))
    resumed = run_embedding_job(EmbeddingRows(30), resumed_encoder, tmp_path / "b", CONFIG)
    assert resumed_encoder.encoded == 30 - 14  # chunks 0 and 1 were not encoded again
    assert resumed.complete
    assert _all_files(tmp_path / "a") == _all_files(tmp_path / "b")
    stored = EmbeddingMatrix(tmp_path / "b").read(0, 30)
    np.testing.assert_allclose(
        stored, data / np.linalg.norm(data, axis=1, keepdims=True), rtol=1e-6
    )
    assert (tmp_path / "b" / "keys.txt").read_text().split() == [str(i) for i in range(30)]

    again = CountingEncoder(PrecomputedEncoder(images=matrix))
    run_embedding_job(EmbeddingRows(30), again, tmp_path / "b", CONFIG)
    assert again.encoded == 0  # a finished job is not redone


def test_chunks_unrecorded_or_damaged_on_disk_are_redone(tmp_path, rows):
    matrix, _ = rows
    out = tmp_path / "out"
    run_embedding_job(EmbeddingRows(30), PrecomputedEncoder(images=matrix), out, CONFIG)
    reference = _all_files(out)
    manifest = read_manifest(out, EmbeddingManifest)
    # killed after writing chunk 4's files but before its record; chunk 1's file got truncated
    write_manifest(out, msgspec.structs.replace(manifest, chunks=[], complete=False))
    (out / ".units" / "chunk-000004.json").unlink()
    (out / "chunk-000001.npy").write_bytes(reference["chunk-000001.npy"][:50])
    encoder = CountingEncoder(PrecomputedEncoder(images=matrix))
    run_embedding_job(EmbeddingRows(30), encoder, out, CONFIG)
    assert encoder.encoded == 7 + 2  # chunk 1 (7 inputs) and chunk 4 (the last 2)
    assert _all_files(out) == reference


_KILLED_JOB = """
import sys, time
from pathlib import Path
from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import PrecomputedEncoder
from ov_concepts.inputs import EmbeddingRows

class Slow(PrecomputedEncoder):
    def encode_images(self, images):
        time.sleep(0.05)
        return super().encode_images(images)

source, out = Path(sys.argv[1]), Path(sys.argv[2])
run_embedding_job(EmbeddingRows(30), Slow(images=EmbeddingMatrix(source)), out,
                  EmbedJobConfig(chunk_inputs=7, batch_size=3))
"""


@pytest.mark.slow  # starts Python processes (torch import); runs in CI
def test_sigkill_mid_job_then_rerun_writes_the_same_bytes_as_one_uninterrupted_run(tmp_path, rows):
    matrix, _ = rows
    run_embedding_job(EmbeddingRows(30), PrecomputedEncoder(images=matrix), tmp_path / "a", CONFIG)
    out = tmp_path / "b"
    script = tmp_path / "job.py"
    script.write_text(_KILLED_JOB)
    process = subprocess.Popen([sys.executable, str(script), str(matrix.path), str(out)])
    try:
        deadline = time.monotonic() + 120
        while not (out / ".units" / "chunk-000001.json").exists():
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not read_manifest(out, EmbeddingManifest).complete
    encoder = CountingEncoder(PrecomputedEncoder(images=matrix))
    run_embedding_job(EmbeddingRows(30), encoder, out, CONFIG)
    assert encoder.encoded <= 30 - 14  # at least chunks 0 and 1 were kept
    assert _all_files(tmp_path / "a") == _all_files(out)


def test_a_different_job_in_the_same_directory_is_refused(tmp_path, rows):
    matrix, _ = rows
    run_embedding_job(EmbeddingRows(30), PrecomputedEncoder(images=matrix), tmp_path, CONFIG)
    with pytest.raises(ManifestError, match=r"chunk_inputs: 7 there, 8 now"):
        run_embedding_job(
            EmbeddingRows(30),
            PrecomputedEncoder(images=matrix),
            tmp_path,
            EmbedJobConfig(chunk_inputs=8),
        )
    with pytest.raises(ManifestError, match=r"inputs: 30 there, 29 now"):
        run_embedding_job(EmbeddingRows(29), PrecomputedEncoder(images=matrix), tmp_path, CONFIG)


def test_float16_storage(tmp_path, rows):
    matrix, data = rows
    run_embedding_job(
        EmbeddingRows(30),
        PrecomputedEncoder(images=matrix),
        tmp_path,
        EmbedJobConfig(dtype="float16"),
    )
    assert np.load(tmp_path / "chunk-000000.npy").dtype == np.float16
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    np.testing.assert_allclose(EmbeddingMatrix(tmp_path).read(0, 30), unit, atol=1e-3)


class MeanColourEncoder:
    """A stand-in image encoder: the mean RGB of each image plus a constant."""

    dim = 4
    description = "mean-colour"

    def encode_images(self, images):
        return np.stack(
            [np.r_[np.asarray(i.convert("RGB"), np.float32).mean(axis=(0, 1)), 1.0] for i in images]
        )

    def encode_texts(self, texts):  # pragma: no cover - images only
        raise NotImplementedError


def test_corrupt_images_are_counted_listed_and_skipped(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name, colour in [("a.png", (255, 0, 0)), ("sub/c.jpg", (0, 0, 255)), ("e.webp", (9, 9, 9))]:
        Image.new("RGB", (8, 6), colour).save(images / name)
    Image.new("P", (5, 5), 3).save(images / "d.gif")
    (images / "b.jpg").write_bytes(b"this is not a jpeg")
    full = images / "f.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(full)
    (images / "truncated.png").write_bytes(full.read_bytes()[:60])
    (images / "notes.txt").write_text("ignored: not an image suffix")

    inputs = ImageFiles.from_path(images)
    assert list(inputs.keys(0, len(inputs))) == [
        "a.png",
        "b.jpg",
        "d.gif",
        "e.webp",
        "f.png",
        "sub/c.jpg",
        "truncated.png",
    ]
    manifest = run_embedding_job(
        inputs, MeanColourEncoder(), tmp_path / "out", EmbedJobConfig(chunk_inputs=4)
    )
    assert manifest.rows == 5
    failures = [
        json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    ]
    assert [(f["input"], f["key"]) for f in failures] == [(1, "b.jpg"), (6, "truncated.png")]
    assert all(f["reason"] for f in failures)
    keys = (tmp_path / "out" / "keys.txt").read_text().splitlines()
    assert keys == ["a.png", "d.gif", "e.webp", "f.png", "sub/c.jpg"]
    assert EmbeddingMatrix(tmp_path / "out").rows == 5


def test_decoding_worker_processes_write_the_same_bytes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(13):
        pixels = rng.integers(0, 256, (5 + i, 9, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
    (images / "07.png").write_bytes(b"corrupt")
    config = EmbedJobConfig(chunk_inputs=5, batch_size=2)
    outputs = []
    for decode_workers in (0, 2):
        out = tmp_path / f"decode-{decode_workers}"
        manifest = run_embedding_job(
            ImageFiles.from_path(images),
            MeanColourEncoder(),
            out,
            config,
            decode_workers=decode_workers,
        )
        assert manifest.rows == 12
        assert [f.key for chunk in manifest.chunks for f in chunk.failed] == ["07.png"]
        outputs.append(_all_files(out))
    assert outputs[0] == outputs[1]


def test_image_list_files_are_relative_to_their_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "list.txt").write_text("x.png\n\nmissing.png\n")
    inputs = ImageFiles.from_path(tmp_path / "list.txt")
    loaded, failures = inputs.load(0, 2)
    assert len(loaded) == 1
    assert [f.key for f in failures] == ["missing.png"]
    with pytest.raises(ConceptsError, match=r"no such image directory or list file"):
        ImageFiles.from_path(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConceptsError, match=r"no image files"):
        ImageFiles.from_path(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n")
    with pytest.raises(ConceptsError, match=r"image list is empty"):
        ImageFiles.from_path(tmp_path / "blank.txt")


class BrokenEncoder:
    dim = 3
    description = "broken"

    def __init__(self, output):
        self.output = output

    def encode_images(self, images):  # pragma: no cover - texts only
        raise NotImplementedError

    def encode_texts(self, texts):
        return self.output(len(texts))


def test_nan_or_zero_embeddings_are_errors_naming_the_input(tmp_path):
    texts = ConceptTexts(Vocabulary.from_strings(["sky", "dog", "cat"]))

    def nan_for_dog(n):
        out = np.ones((n, 3), np.float32)
        out[1, 0] = np.nan
        return out

    with pytest.raises(EmbeddingError, match=r"row input 1 \(dog\) contains NaN or inf"):
        run_embedding_job(texts, BrokenEncoder(nan_for_dog), tmp_path / "a")
    with pytest.raises(EmbeddingError, match=r"rows input 0 \(sky\), input 1 \(dog\), input 2"):
        run_embedding_job(texts, BrokenEncoder(lambda n: np.zeros((n, 3))), tmp_path / "b")
    with pytest.raises(EmbeddingError, match=r"returned shape \(3, 2\) for 3 concepts"):
        run_embedding_job(texts, BrokenEncoder(lambda n: np.ones((n, 2))), tmp_path / "c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_inputs": 0}, "chunk_inputs"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_job_config_is_validated(kwargs, message):
    with pytest.raises(ConceptsError, match=message):
        EmbedJobConfig(**kwargs)
