"""The assignment job: files, brute-force equality, minimum similarity, resume, bad inputs."""

import os
import signal
import subprocess
import sys
import time

import msgspec
import numpy as np
import pytest
import torch

import ov_concepts.assign as assign_module
from ov_concepts.assign import AssignConfig, Assignments, assign_concepts
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.errors import AssignmentError, EmbeddingError, ManifestError
from ov_concepts.manifest import AssignmentManifest, read_manifest
from ov_concepts.topk import brute_force_topk


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    np.save(tmp_path / "images.npy", rng.standard_normal((1000, 24)).astype(np.float32) * 3)
    np.save(tmp_path / "concepts.npy", rng.standard_normal((700, 24)).astype(np.float16))
    return EmbeddingMatrix(tmp_path / "images.npy"), EmbeddingMatrix(tmp_path / "concepts.npy")


def _expected(images, concepts, k):
    unit = torch.nn.functional.normalize
    image_rows = unit(torch.from_numpy(images.read(0, images.rows)), dim=1)
    concept_rows = unit(torch.from_numpy(concepts.read(0, concepts.rows)), dim=1)
    return brute_force_topk(image_rows, concept_rows, k)


def test_assignment_files_match_brute_force(tmp_path, inputs):
    images, concepts = inputs
    config = AssignConfig(topk=7, image_block=300, concept_block=128)
    manifest = assign_concepts(images, concepts, tmp_path / "out", config)
    assert manifest.complete
    assert manifest.precision == "fp32"
    assert manifest.device == "cpu"
    result = Assignments.open(tmp_path / "out")
    assert result.ids.dtype == np.int32
    assert result.scores.dtype == np.float16
    assert result.ids.shape == (1000, 7)
    assert (result.images, result.concepts) == (1000, 700)
    scores, ids = _expected(images, concepts, 7)
    np.testing.assert_array_equal(result.ids, ids.numpy())
    np.testing.assert_allclose(result.scores, scores.numpy(), atol=1e-3)


def test_min_similarity_replaces_weak_concepts_with_minus_one(tmp_path, inputs):
    images, concepts = inputs
    assign_concepts(images, concepts, tmp_path, AssignConfig(topk=7, min_similarity=0.45))
    result = Assignments.open(tmp_path)
    scores, ids = _expected(images, concepts, 7)
    weak = scores.numpy() < 0.45
    assert 0 < weak.sum() < weak.size
    np.testing.assert_array_equal(result.ids, np.where(weak, -1, ids.numpy()))
    assert np.isneginf(result.scores[weak]).all()
    assert (result.scores[~weak] >= 0.449).all()


def _all_files(directory):
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_killed_assignment_resumes_at_the_first_unfinished_unit(tmp_path, inputs, monkeypatch):
    images, concepts = inputs
    config = AssignConfig(topk=5, image_block=128, unit_rows=256)
    assign_concepts(images, concepts, tmp_path / "whole", config)
    assert sorted(_all_files(tmp_path / "whole")) == ["ids.npy", "manifest.json", "scores.npy"]

    calls = {"n": 0}
    real = assign_module.blocked_topk

    def dies_on_fourth_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(assign_module, "blocked_topk", dies_on_fourth_block)
    with pytest.raises(KeyboardInterrupt):
        assign_concepts(images, concepts, tmp_path / "resumed", config)
    partial = read_manifest(tmp_path / "resumed", AssignmentManifest)
    assert not partial.complete
    records = sorted(p.name for p in (tmp_path / "resumed" / ".units").glob("rows-*.json"))
    assert records == ["rows-000000000000.json"]  # rows 0..255; the unit of 256..511 died
    with pytest.raises(ManifestError, match=r"not finished"):
        Assignments.open(tmp_path / "resumed")

    seen = []
    monkeypatch.setattr(
        assign_module, "blocked_topk", lambda x, *a, **k: seen.append(len(x)) or real(x, *a, **k)
    )
    assign_concepts(images, concepts, tmp_path / "resumed", config)
    assert sum(seen) == 1000 - 256
    assert _all_files(tmp_path / "whole") == _all_files(tmp_path / "resumed")


_KILLED_ASSIGNMENT = """
import sys, time
from pathlib import Path
import ov_concepts.assign as assign_module
from ov_concepts.assign import AssignConfig, assign_concepts
from ov_concepts.embeddings import EmbeddingMatrix

real = assign_module.blocked_topk
def slow(*args, **kwargs):
    time.sleep(0.05)
    return real(*args, **kwargs)
assign_module.blocked_topk = slow
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
assign_concepts(EmbeddingMatrix(folder / "images.npy"), EmbeddingMatrix(folder / "concepts.npy"),
                out, AssignConfig(topk=5, image_block=64, unit_rows=128))
"""


@pytest.mark.slow  # starts Python processes (torch import); runs in CI
def test_sigkill_mid_assignment_then_rerun_writes_the_same_bytes(tmp_path, inputs):
    images, concepts = inputs
    config = AssignConfig(topk=5, image_block=64, unit_rows=128)
    assign_concepts(images, concepts, tmp_path / "whole", config)
    out = tmp_path / "killed"
    script = tmp_path / "job.py"
    script.write_text(_KILLED_ASSIGNMENT)
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(out)])
    try:
        deadline = time.monotonic() + 120
        while not (out / ".units" / "rows-000000000128.json").exists():
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not read_manifest(out, AssignmentManifest).complete
    seen = []
    real = assign_module.blocked_topk
    assign_module.blocked_topk = lambda x, *a, **k: seen.append(len(x)) or real(x, *a, **k)
    try:
        assign_concepts(images, concepts, out, config)
    finally:
        assign_module.blocked_topk = real
    assert sum(seen) <= 1000 - 256  # the first two units were kept
    assert _all_files(tmp_path / "whole") == _all_files(out)


def test_unit_rows_do_not_change_the_bytes(tmp_path, inputs):
    images, concepts = inputs
    reference = None
    for unit_rows in (128, 384, 1 << 18):
        out = tmp_path / f"units-{unit_rows}"
        config = AssignConfig(topk=5, image_block=128, unit_rows=unit_rows)
        assign_concepts(images, concepts, out, config)
        arrays = {name: (out / name).read_bytes() for name in ("ids.npy", "scores.npy")}
        reference = reference or arrays
        assert arrays == reference, unit_rows
    with pytest.raises(AssignmentError, match=r"multiple of image_block \(128\)"):
        AssignConfig(image_block=128, unit_rows=200)


def test_concept_block_and_image_block_are_pinned_in_the_resume_check(tmp_path, inputs):
    images, concepts = inputs
    out = tmp_path / "out"
    config = AssignConfig(topk=5, image_block=128, unit_rows=256, concept_block=100)
    # a run interrupted after its manifest: any other block size would mix kernels' last bits
    assign_concepts(images, concepts, out, config)
    (out / "manifest.json").write_bytes(
        msgspec.json.encode(
            msgspec.structs.replace(read_manifest(out, AssignmentManifest), complete=False)
        )
    )
    for changed, message in (
        (AssignConfig(topk=5, image_block=128, unit_rows=256, concept_block=64), "concept_block"),
        (AssignConfig(topk=5, image_block=64, unit_rows=256, concept_block=100), "image_block"),
        (AssignConfig(topk=5, image_block=128, unit_rows=512, concept_block=100), "unit_rows"),
    ):
        with pytest.raises(ManifestError, match=rf"different assignment \({message}: "):
            assign_concepts(images, concepts, out, changed)


def test_a_different_assignment_in_the_same_directory_is_refused(tmp_path, inputs):
    images, concepts = inputs
    assign_concepts(images, concepts, tmp_path, AssignConfig(topk=3))
    with pytest.raises(ManifestError, match=r"topk: 3 there, 4 now"):
        assign_concepts(images, concepts, tmp_path, AssignConfig(topk=4))


def test_bf16_precision_on_cpu_is_close_to_fp32(tmp_path, inputs):
    images, concepts = inputs
    assign_concepts(images, concepts, tmp_path, AssignConfig(topk=5, precision="bf16"))
    result = Assignments.open(tmp_path)
    _, ids = _expected(images, concepts, 5)
    assert result.manifest.precision == "bf16"
    assert (result.ids[:, 0] == ids[:, 0].numpy()).mean() > 0.9


def test_bad_inputs_are_named(tmp_path, inputs):
    images, concepts = inputs
    np.save(tmp_path / "narrow.npy", np.ones((5, 3), np.float32))
    with pytest.raises(AssignmentError, match=r"24 dimensions but .*narrow.npy has 3"):
        assign_concepts(images, EmbeddingMatrix(tmp_path / "narrow.npy"), tmp_path / "a")
    with pytest.raises(AssignmentError, match=r"topk 701 > 700 concepts"):
        assign_concepts(images, concepts, tmp_path / "b", AssignConfig(topk=701))
    broken = np.ones((600, 24), np.float32)
    broken[517] = 0
    np.save(tmp_path / "broken.npy", broken)
    with pytest.raises(EmbeddingError, match=r"broken.npy: row 517 has zero norm"):
        assign_concepts(EmbeddingMatrix(tmp_path / "broken.npy"), concepts, tmp_path / "c")
    bad_concepts = np.ones((40, 24), np.float32)
    bad_concepts[33, 4] = np.inf
    np.save(tmp_path / "bad_concepts.npy", bad_concepts)
    with pytest.raises(EmbeddingError, match=r"bad_concepts.npy: row 33 contains NaN or inf"):
        assign_concepts(images, EmbeddingMatrix(tmp_path / "bad_concepts.npy"), tmp_path / "d")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topk": 0}, "topk must be >= 1"),
        ({"min_similarity": 1.5}, "min_similarity"),
        ({"image_block": 0}, "image_block"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu:banana"}, "unknown device"),
    ],
)
def test_assign_config_is_validated(kwargs, message):
    with pytest.raises(AssignmentError, match=message):
        AssignConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_asking_for_cuda_without_it_is_an_error():
    with pytest.raises(AssignmentError, match=r"CUDA is not available"):
        AssignConfig(device="cuda").torch_device()


def test_assignments_open_checks_array_shapes(tmp_path, inputs):
    images, concepts = inputs
    assign_concepts(images, concepts, tmp_path, AssignConfig(topk=3))
    np.save(tmp_path / "ids.npy", np.zeros((1000, 2), np.int32))
    with pytest.raises(ManifestError, match=r"ids.npy: int32 \(1000, 2\), expected int32"):
        Assignments.open(tmp_path)
    manifest = read_manifest(tmp_path, AssignmentManifest)
    (tmp_path / "manifest.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(manifest, version=9))
    )
    with pytest.raises(ManifestError, match=r"version 9"):
        Assignments.open(tmp_path)
