"""Balancing end to end: outputs, determinism (seed, chunk size), replacement, bad settings."""

import numpy as np
import pytest

from ov_concepts.assign import AssignConfig, Assignments, assign_concepts
from ov_concepts.balance import BalanceConfig, balance, load_stats
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.errors import BalanceError

OUTPUTS = ("selected.npy", "weights.npy", "counts_before.npy", "counts_after.npy")


def _bytes(directory):
    return {name: (directory / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize(("rule", "replace"), [("mean", False), ("metaclip", True), ("max", False)])
def test_same_seed_gives_the_same_bytes_whatever_the_chunk_size(
    tmp_path, synthetic_assignments, rule, replace
):
    outputs = []
    for chunk in (4096, 12288, 1 << 20):
        out = tmp_path / f"chunk{chunk}"
        config = BalanceConfig(target=3000, seed=11, rule=rule, replace=replace, chunk_rows=chunk)
        balance(synthetic_assignments, out, config)
        outputs.append(_bytes(out))
    assert outputs[0] == outputs[1] == outputs[2]
    other = tmp_path / "other-seed"
    balance(
        synthetic_assignments,
        other,
        BalanceConfig(target=3000, seed=12, rule=rule, replace=replace),
    )
    assert (other / "selected.npy").read_bytes() != outputs[0]["selected.npy"]
    assert (other / "weights.npy").read_bytes() == outputs[0]["weights.npy"]


def test_outputs_have_the_documented_formats(tmp_path, synthetic_assignments):
    stats = balance(synthetic_assignments, tmp_path, BalanceConfig(target=2500, seed=1))
    selected = np.load(tmp_path / "selected.npy")
    weights = np.load(tmp_path / "weights.npy")
    assert selected.dtype == np.int64
    assert selected.shape == (2500,)
    assert np.all(np.diff(selected) > 0)
    assert weights.dtype == np.float64
    assert weights.shape == (20000,)
    assert load_stats(tmp_path / "stats.json") == stats
    assert stats.selected == stats.distinct_selected == 2500
    assert stats.settings.rule == "mean"
    assert stats.settings.threshold is None
    after = np.load(tmp_path / "counts_after.npy")
    assert after.sum() == 2500 * 10 == stats.after.assignments


def test_with_replacement_indices_repeat_and_may_exceed_the_corpus(tmp_path, synthetic_assignments):
    stats = balance(
        synthetic_assignments, tmp_path, BalanceConfig(target=30000, seed=2, replace=True)
    )
    selected = np.load(tmp_path / "selected.npy")
    assert len(selected) == 30000
    assert np.all(np.diff(selected) >= 0)
    assert stats.distinct_selected == len(np.unique(selected)) < 20000


def test_images_without_concepts_are_never_drawn(tmp_path, synthetic_corpus):
    assign_concepts(
        EmbeddingMatrix(synthetic_corpus / "images.npy"),
        EmbeddingMatrix(synthetic_corpus / "concepts.npy"),
        tmp_path / "assigned",
        AssignConfig(topk=3, min_similarity=0.55),
    )
    assignments = Assignments.open(tmp_path / "assigned")
    empty = np.flatnonzero((assignments.ids < 0).all(axis=1))
    assert len(empty) > 100
    for rule in ("mean", "sum", "max", "metaclip"):
        stats = balance(assignments, tmp_path / rule, BalanceConfig(target=4000, rule=rule))
        assert stats.images_without_concepts == len(empty)
        selected = np.load(tmp_path / rule / "selected.npy")
        assert not np.isin(selected, empty).any()
        assert np.all(np.load(tmp_path / rule / "weights.npy")[empty] == 0)
    eligible = 20000 - len(empty)
    with pytest.raises(BalanceError, match=f"target {eligible + 1} > {eligible} images"):
        balance(assignments, tmp_path / "too-many", BalanceConfig(target=eligible + 1))


def test_metaclip_threshold_is_solved_or_taken(tmp_path, synthetic_assignments):
    solved = balance(
        synthetic_assignments, tmp_path / "a", BalanceConfig(target=4000, rule="metaclip")
    )
    assert solved.settings.threshold > 0
    assert solved.expected_metaclip_size == pytest.approx(4000, rel=1e-5)
    given = balance(
        synthetic_assignments,
        tmp_path / "b",
        BalanceConfig(target=4000, rule="metaclip", threshold=50),
    )
    assert given.settings.threshold == 50
    assert given.expected_metaclip_size > 4000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0}, "target must be >= 1"),
        ({"target": 5, "seed": -1}, "seed"),
        ({"target": 5, "rule": "median"}, "rule must be one of"),
        ({"target": 5, "alpha": -1.0}, "alpha"),
        ({"target": 5, "alpha": float("nan")}, "alpha"),
        ({"target": 5, "threshold": 10.0}, "only to the metaclip rule"),
        ({"target": 5, "rule": "metaclip", "threshold": 0.0}, "threshold must be > 0"),
        ({"target": 5, "chunk_rows": 5000}, "multiple of 4096"),
    ],
)
def test_balance_config_is_validated(kwargs, message):
    with pytest.raises(BalanceError, match=message):
        BalanceConfig(**kwargs)


def test_stats_file_errors(tmp_path):
    with pytest.raises(BalanceError, match=r"no such file"):
        load_stats(tmp_path / "stats.json")
    (tmp_path / "stats.json").write_text('{"x": 1}')
    with pytest.raises(BalanceError, match=r"not a balance stats file"):
        load_stats(tmp_path / "stats.json")
