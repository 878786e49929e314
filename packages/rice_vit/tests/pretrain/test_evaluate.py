"""Region evaluation metrics against naive implementations and on data of known difficulty."""

import torch

from rice_vit.pretrain.evaluate import (
    chance_retrieval,
    compare,
    format_table,
    linear_probe,
    retrieval_top1,
    stratified_split,
)


def _naive_retrieval(x: torch.Tensor, labels: torch.Tensor) -> float:
    hits = 0
    for i in range(len(x)):
        best, best_j = -2.0, -1
        for j in range(len(x)):
            if j == i:
                continue
            cosine = float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))
            if cosine > best:
                best, best_j = cosine, j
        hits += int(labels[best_j] == labels[i])
    return hits / len(x)


def test_retrieval_equals_a_naive_loop_and_chance_is_the_pair_fraction():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    x = x + 1.5 * torch.nn.functional.one_hot(labels, 8).float()
    assert retrieval_top1(x, labels) == _naive_retrieval(x, labels)
    counts = torch.bincount(labels)
    pairs = sum(int(c) * (int(c) - 1) for c in counts)
    assert chance_retrieval(labels) == pairs / (40 * 39)


def test_the_probe_separates_separable_classes_and_not_shuffled_ones():
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(120) % 6
    x = torch.randn(120, 16, generator=generator) + 8 * torch.nn.functional.one_hot(labels, 16)
    assert linear_probe(x, labels) == 1.0
    noise = torch.randn(120, 16, generator=generator)
    assert linear_probe(noise, labels) < 0.4  # chance is 1/6


def test_the_split_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    train, test = stratified_split(labels, seed=4)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(10))
    assert torch.bincount(labels[train]).tolist() == [2, 1, 2, 1]  # ceil(n/2) per class
    assert torch.equal(stratified_split(labels, seed=4)[0], train)


def test_the_table_reports_before_after_and_gain():
    before = {"objects": {"retrieval_top1": 0.25, "probe_top1": 0.5, "retrieval_chance": 0.1}}
    after = {"objects": {"retrieval_top1": 0.75, "probe_top1": 0.625, "retrieval_chance": 0.1}}
    rows = compare(before, after)
    assert [row["gain"] for row in rows] == [0.5, 0.125]
    table = format_table(rows)
    assert "| objects | retrieval top-1 | 25.0% | 75.0% | +50.0 | 10.0% |" in table
