"""Selection hooks wired to ov_concepts: balancing in-process and from a `balance` folder."""

from collections import Counter

import msgspec
import numpy as np
import pytest

from ov_concepts.assign import AssignConfig, Assignments, assign_concepts
from ov_concepts.balance import BalanceConfig, balance
from ov_concepts.embeddings import EmbeddingMatrix
from ov_packing.shards import iter_bins
from ov_train.data.errors import PrepareError
from ov_train.data.prepare import prepare
from ov_train.data.sample_record import SampleRecord
from ov_train.data.selection import (
    Selection,
    balanced_dir_selector,
    concept_balance_selector,
)


@pytest.fixture
def assigned(tmp_path, raw_corpus):
    """ov_concepts assignments over the corpus's good samples plus one rejected id; the keys
    file names the sample of each image row."""
    names = [*sorted(raw_corpus.good), "llava-missing"]
    rng = np.random.default_rng(0)
    concepts = rng.normal(size=(6, 16)).astype(np.float32)
    # Image i is near concept i % 3 (a head of three popular concepts) or, every fifth, near a
    # rare concept 3..5: balancing should draw the rare ones more often than their share.
    planted = [3 + i % 3 if i % 5 == 0 else i % 3 for i in range(len(names))]
    images = concepts[planted] + 0.1 * rng.normal(size=(len(names), 16)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "concepts.npy", concepts)
    assign_concepts(
        EmbeddingMatrix(tmp_path / "images.npy"),
        EmbeddingMatrix(tmp_path / "concepts.npy"),
        tmp_path / "assigned",
        AssignConfig(topk=1, device="cpu"),
    )
    (tmp_path / "keys.txt").write_text("\n".join(names) + "\n")
    return tmp_path / "assigned", tmp_path / "keys.txt", names


def _packed_ids(shards_dir):
    return Counter(
        msgspec.json.decode(sample.files["json"], type=SampleRecord).id
        for packed in iter_bins(shards_dir)
        for sample in packed.samples
    )


def test_concept_balance_selector_packs_what_ov_concepts_draws(
    tmp_path, raw_corpus, processor, config_for, assigned
):
    assignments, keys, names = assigned
    config = BalanceConfig(target=30, seed=5, replace=True)
    select = concept_balance_selector(assignments, keys, config, work_dir=tmp_path / "balance")
    result = prepare(config_for(raw_corpus.inputs, tmp_path / "out"), processor, select=select)
    drawn = Counter(names[i] for i in np.load(tmp_path / "balance" / "selected.npy").tolist())
    expected = {name: count for name, count in drawn.items() if name in raw_corpus.good}
    assert _packed_ids(result.shards_dir) == expected
    summary = result.report.selection
    assert summary["method"] == "ov_concepts.balance"
    assert summary["copies_selected"] == sum(expected.values())
    assert summary["ids_not_accepted"] == (1 if "llava-missing" in drawn else 0)
    assert summary["effective_concepts_after"] > summary["effective_concepts_before"]


def test_balanced_dir_selector_equals_running_the_balance_in_process(
    tmp_path, raw_corpus, processor, config_for, assigned
):
    assignments, keys, _ = assigned
    config = BalanceConfig(target=8, seed=1)
    balance(Assignments.open(assignments), tmp_path / "balanced", config)
    from_dir = prepare(
        config_for(raw_corpus.inputs, tmp_path / "a"),
        processor,
        select=balanced_dir_selector(tmp_path / "balanced", keys),
    )
    in_process = prepare(
        config_for(raw_corpus.inputs, tmp_path / "b"),
        processor,
        select=concept_balance_selector(assignments, keys, config),
    )
    assert _packed_ids(from_dir.shards_dir) == _packed_ids(in_process.shards_dir)
    assert (from_dir.shards_dir / "shard-000000.tar").read_bytes() == (
        in_process.shards_dir / "shard-000000.tar"
    ).read_bytes()


def test_keys_must_match_the_image_rows(tmp_path, raw_corpus, processor, config_for, assigned):
    assignments, keys, names = assigned
    keys.write_text("\n".join(names[:-1]))
    select = concept_balance_selector(assignments, keys, BalanceConfig(target=3))
    with pytest.raises(PrepareError, match=r"ids for the \d+ image rows"):
        prepare(config_for(raw_corpus.inputs, tmp_path / "out"), processor, select=select)


def test_selection_ids_must_be_strings():
    with pytest.raises(PrepareError, match="not an id string"):
        Selection(["a", 3])
    with pytest.raises(PrepareError, match="not one string"):
        Selection("abc")
