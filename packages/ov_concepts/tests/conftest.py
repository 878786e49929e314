"""Shared fixtures: one synthetic Zipf corpus and its top-10 assignment, built once per session."""

from pathlib import Path

import pytest

from ov_concepts.assign import AssignConfig, Assignments, assign_concepts
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.synthetic import SyntheticConfig, write_synthetic_corpus


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """The default synthetic corpus (20,000 images, 2,000 concepts, seed 0)."""
    return write_synthetic_corpus(SyntheticConfig(), tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def synthetic_assignments(synthetic_corpus, tmp_path_factory) -> Assignments:
    """Top-10 concepts (the default K) of every image of the synthetic corpus."""
    out = tmp_path_factory.mktemp("assigned")
    assign_concepts(
        EmbeddingMatrix(synthetic_corpus / "images.npy"),
        EmbeddingMatrix(synthetic_corpus / "concepts.npy"),
        out,
        AssignConfig(),
    )
    return Assignments.open(out)
