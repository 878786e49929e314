"""The Ray engine on a local Ray with 2 CPUs: the same bytes as the local engine, for embedding
(units on actors, each building its encoder from a picklable spec) and assignment (through the CLI,
`--engine ray`). One module, one Ray start (several seconds), shut down after."""

import numpy as np
import pytest
from click.testing import CliRunner

from ov_concepts.assign import AssignConfig, assign_concepts
from ov_concepts.cli import main
from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import PrecomputedImagesSpec
from ov_concepts.inputs import EmbeddingRows
from ov_concepts.work_units import RayEngine, use_this_python

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    # Under `uv run` Ray by default starts its workers with `uv run` in a packaged copy of the
    # working directory; that copy is not this workspace's environment, so the workers would fail
    # to import ray. RayEngine turns that off for a local Ray; Ray is started here, before it.
    use_this_python()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _all_files(directory):
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # starts Python processes (torch import); runs in CI
def test_ray_engine_writes_the_local_engines_bytes(local_ray, tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "source.npy", rng.standard_normal((50, 12)).astype(np.float32))
    np.save(tmp_path / "concepts.npy", rng.standard_normal((90, 12)).astype(np.float32))
    spec = PrecomputedImagesSpec(tmp_path / "source.npy")
    config = EmbedJobConfig(chunk_inputs=8, batch_size=3)
    run_embedding_job(EmbeddingRows(50), spec, tmp_path / "local", config)
    with RayEngine(num_cpus_per_unit=1) as engine:
        run_embedding_job(EmbeddingRows(50), spec, tmp_path / "ray", config, engine=engine)
    embedded = _all_files(tmp_path / "local")
    assert len([name for name in embedded if name.endswith(".npy")]) == 7
    assert _all_files(tmp_path / "ray") == embedded

    images = EmbeddingMatrix(tmp_path / "local")
    concepts = EmbeddingMatrix(tmp_path / "concepts.npy")
    assign_concepts(
        images, concepts, tmp_path / "A", AssignConfig(topk=4, image_block=8, unit_rows=16)
    )
    result = CliRunner().invoke(
        main,
        [
            "assign",
            "--images",
            str(tmp_path / "ray"),
            "--concepts",
            str(tmp_path / "concepts.npy"),
            "--topk",
            "4",
            "--image-block",
            "8",
            "--unit-rows",
            "16",
            "--engine",
            "ray",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(tmp_path / "B"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("ids.npy", "scores.npy"):
        assert (tmp_path / "A" / name).read_bytes() == (tmp_path / "B" / name).read_bytes()
