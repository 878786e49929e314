"""The seeded synthetic corpus: byte-identical for a seed, Zipf-shaped, recoverable by top-K."""

import numpy as np
import pytest

from ov_concepts.errors import ConceptsError
from ov_concepts.synthetic import SyntheticConfig, concept_vectors, write_synthetic_corpus
from ov_concepts.vocabulary import load_vocabulary

FILES = ("images.npy", "concepts.npy", "vocabulary.txt", "planted.npy", "synthetic.json")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    config = SyntheticConfig(images=70000, concepts=300, dim=16)  # two generation chunks
    a, b = (
        write_synthetic_corpus(config, tmp_path / "a"),
        write_synthetic_corpus(config, tmp_path / "b"),
    )
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = write_synthetic_corpus(
        SyntheticConfig(images=70000, concepts=300, dim=16, seed=1), tmp_path / "c"
    )
    assert (a / "images.npy").read_bytes() != (c / "images.npy").read_bytes()


def test_corpus_shapes_and_planted_concepts(synthetic_corpus):
    images = np.load(synthetic_corpus / "images.npy")
    planted = np.load(synthetic_corpus / "planted.npy")
    assert images.shape == (20000, 128)
    assert images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, rtol=1e-5)
    assert planted.shape == (20000, 3)
    assert all(len(set(row)) == 3 for row in planted[:2000].tolist())
    assert len(load_vocabulary(synthetic_corpus / "vocabulary.txt")) == 2000


def test_popularity_is_zipf_over_synonym_groups():
    config = SyntheticConfig()
    vectors, popularity = concept_vectors(config)
    assert popularity.sum() == pytest.approx(1.0)
    groups = np.sort(np.unique(np.round(popularity, 15)))[::-1]
    assert len(groups) == 500  # 2000 concepts in groups of 4
    ranks = np.arange(1, 501)
    slope = np.polyfit(np.log(ranks), np.log(groups), 1)[0]
    assert slope == pytest.approx(-1.1, abs=1e-6)
    same_group = np.flatnonzero(popularity == popularity.max())
    cosine = vectors[same_group] @ vectors[same_group].T
    assert cosine[np.triu_indices(len(same_group), 1)].min() > 0.6


def test_planted_concepts_are_mostly_retrieved(synthetic_assignments, synthetic_corpus):
    planted = np.load(synthetic_corpus / "planted.npy")
    top10 = synthetic_assignments.ids
    recall = np.mean(
        [len(set(p) & set(t)) / 3 for p, t in zip(planted.tolist(), top10.tolist(), strict=True)]
    )
    assert recall > 0.95


def test_config_is_validated():
    with pytest.raises(ConceptsError, match=r"images must be >= 1"):
        SyntheticConfig(images=0)
    with pytest.raises(ConceptsError, match=r"cannot exceed"):
        SyntheticConfig(concepts=2, concepts_per_image=3)
    with pytest.raises(ConceptsError, match=r"zipf_exponent"):
        SyntheticConfig(zipf_exponent=0)
    with pytest.raises(ConceptsError, match=r"noise"):
        SyntheticConfig(noise=-1)
