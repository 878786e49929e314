"""Unit worker processes (the local engine's spawn pool): the same bytes as one process, for
embedding (each worker builds its encoder from a picklable spec) and assignment."""

import numpy as np
import pytest

from ov_concepts.assign import AssignConfig, assign_concepts
from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import PrecomputedEncoder, PrecomputedImagesSpec
from ov_concepts.errors import ConceptsError
from ov_concepts.inputs import EmbeddingRows
from ov_concepts.work_units import LocalEngine


def _all_files(directory):
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # starts Python processes (torch import); runs in CI
def test_two_worker_processes_write_the_bytes_of_one(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "source.npy", rng.standard_normal((45, 12)).astype(np.float32))
    np.save(tmp_path / "concepts.npy", rng.standard_normal((80, 12)).astype(np.float32))
    spec = PrecomputedImagesSpec(tmp_path / "source.npy")
    config = EmbedJobConfig(chunk_inputs=8, batch_size=3)
    run_embedding_job(EmbeddingRows(45), spec, tmp_path / "E1", config)
    with LocalEngine(2) as engine:
        run_embedding_job(EmbeddingRows(45), spec, tmp_path / "E2", config, engine=engine)
    embedded = _all_files(tmp_path / "E1")
    assert sum(name.startswith(".units/chunk-") for name in embedded) == 6
    assert _all_files(tmp_path / "E2") == embedded

    images = EmbeddingMatrix(tmp_path / "E1")
    concepts = EmbeddingMatrix(tmp_path / "concepts.npy")
    config = AssignConfig(topk=6, image_block=8, unit_rows=16, concept_block=32)
    assign_concepts(images, concepts, tmp_path / "A1", config)
    with LocalEngine(2) as engine:
        assign_concepts(images, concepts, tmp_path / "A2", config, engine=engine)
    assert _all_files(tmp_path / "A1") == _all_files(tmp_path / "A2")

    with pytest.raises(ConceptsError, match=r"pass an EncoderSpec"):
        run_embedding_job(
            EmbeddingRows(45),
            PrecomputedEncoder(images=EmbeddingMatrix(tmp_path / "source.npy")),
            tmp_path / "E3",
            config=EmbedJobConfig(),
            engine=LocalEngine(2),
        )
