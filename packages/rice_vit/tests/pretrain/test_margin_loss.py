"""MarginSoftmaxLoss on one process against a naive dense implementation written here."""

import math

import pytest
import torch

from rice_vit.errors import ConfigError, InputError
from rice_vit.pretrain.margin_loss import (
    MarginSoftmaxLoss,
    init_centres,
    sampled_classes,
    shard_range,
)

S, M = 64.0, 0.3


def assert_close(got, want, *, rtol, atol=0.0):
    """|got - want| <= atol + rtol |want| elementwise, same shape and dtype (torch.allclose:
    torch.testing.assert_close imports torch.distributed.tensor, seconds on a busy machine)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    worst = (got - want).abs().max().item() if got.numel() else 0.0
    assert torch.allclose(got, want, rtol=rtol, atol=float(atol)), f"max |diff| {worst}"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: one intra-op thread avoids thread start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_loss(embeddings, centres, positive_sets, margin_type, classes=None):
    """Mean over regions of log(1 + sum_P exp(-s phi)) + log(1 + sum_{classes \\ P} exp(s cos)),
    one region at a time, with phi(c) = cos(arccos c + m) or c - m; `classes` = the classes
    taking part (all when None)."""
    e = embeddings / embeddings.norm(dim=1, keepdim=True)
    w = centres / centres.norm(dim=1, keepdim=True)
    cos = (e @ w.T).clamp(-1, 1)
    universe = set(range(centres.shape[0])) if classes is None else set(classes)
    losses = []
    for i, positives in enumerate(positive_sets):
        positives = sorted(set(positives))
        if margin_type == "arcface":
            phi = torch.cos(torch.acos(cos[i, positives]) + M)
        else:
            phi = cos[i, positives] - M
        negatives = sorted(universe - set(positives))
        pos = torch.log(1 + torch.exp(-S * phi).sum())
        neg = torch.log(1 + torch.exp(S * cos[i, negatives]).sum())
        losses.append(pos + neg)
    return torch.stack(losses).mean()


def csr(positive_sets):
    offsets = torch.tensor([0, *torch.tensor([len(p) for p in positive_sets]).cumsum(0).tolist()])
    return offsets, torch.tensor([c for p in positive_sets for c in p], dtype=torch.int64)


def problem(seed=0, regions=6, classes=23, dim=8, multi=True):
    """Random embeddings, centres and positive sets (single, and multi-positive with a
    duplicate when `multi`). Embeddings are pulled toward their first positive centre so the
    positive cosines are large (the margin matters) and the softmax is not saturated."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    sets = []
    for i in range(regions):
        if multi and i % 2:
            picks = torch.randperm(classes, generator=g)[: 1 + i % 3].tolist()
            sets.append([*picks, picks[0]])  # a duplicate counts once
        else:
            sets.append([int(torch.randint(classes, (1,), generator=g))])
    noise = torch.randn(regions, dim, generator=g, dtype=torch.float64)
    embeddings = 0.35 * noise + torch.stack([centres[s[0]] / centres[s[0]].norm() for s in sets])
    return embeddings, centres, sets


def run(loss_fn, embeddings, centres, sets, step=0):
    loss_fn.load_full_weight(centres)
    x = embeddings.clone().requires_grad_(True)
    offsets, classes = csr(sets)
    loss = loss_fn(x, offsets, classes, step)
    loss.backward()
    return loss.detach(), x.grad, loss_fn.weight.grad


@pytest.mark.parametrize("margin_type", ["arcface", "cosface"])
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_full_loss_and_gradients_equal_naive_autograd(margin_type, multi):
    embeddings, centres, sets = problem(multi=multi)
    loss_fn = MarginSoftmaxLoss(23, 8, margin_type=margin_type, sample_rate=1.0).double()
    loss, grad_e, grad_w = run(loss_fn, embeddings, centres, sets)

    e = embeddings.clone().requires_grad_(True)
    w = centres.clone().requires_grad_(True)
    want = naive_loss(e, w, sets, margin_type)
    want.backward()
    assert 1.0 < want.item() < 200.0  # neither saturated nor trivial
    assert_close(loss, want.detach(), rtol=1e-10, atol=0)
    assert_close(grad_e, e.grad, rtol=1e-8, atol=1e-12)
    assert_close(grad_w, w.grad, rtol=1e-8, atol=1e-12)
    assert grad_w.abs().sum() > 0
    assert grad_e.abs().sum() > 0


def test_margins_differ_and_penalise_the_positive():
    embeddings, centres, sets = problem()
    values = {}
    for margin_type in ("arcface", "cosface"):
        fn = MarginSoftmaxLoss(23, 8, margin_type=margin_type, sample_rate=1.0).double()
        values[margin_type] = run(fn, embeddings, centres, sets)[0].item()
    no_margin = MarginSoftmaxLoss(23, 8, margin=0.0, sample_rate=1.0).double()
    plain = run(no_margin, embeddings, centres, sets)[0].item()
    assert values["arcface"] > plain
    assert values["cosface"] > plain
    assert values["arcface"] != pytest.approx(values["cosface"], rel=1e-3)


def test_fp32_matches_fp64_reference():
    embeddings, centres, sets = problem(seed=3)
    fn = MarginSoftmaxLoss(23, 8, sample_rate=1.0)
    loss, grad_e, grad_w = run(fn, embeddings.float(), centres.float(), sets)
    e = embeddings.clone().requires_grad_(True)
    w = centres.clone().requires_grad_(True)
    want = naive_loss(e, w, sets, "arcface")
    want.backward()
    assert_close(loss.double(), want.detach(), rtol=1e-5, atol=0)
    assert_close(grad_e.double(), e.grad, rtol=1e-4, atol=1e-5 * e.grad.abs().max())
    assert_close(grad_w.double(), w.grad, rtol=1e-4, atol=1e-5 * w.grad.abs().max())


def test_sampled_loss_uses_sampled_negatives_plus_every_positive():
    embeddings, centres, sets = problem(seed=1, regions=8, classes=40)
    fn = MarginSoftmaxLoss(40, 8, sample_rate=0.25, seed=7).double()
    negatives = sampled_classes(40, 0.25, 7, step=5)
    assert negatives.numel() == 10
    assert negatives.unique().numel() == 10
    assert torch.equal(negatives, sampled_classes(40, 0.25, 7, step=5))
    assert not torch.equal(negatives.sort().values, sampled_classes(40, 0.25, 7, 6).sort().values)
    loss, _grad_e, grad_w = run(fn, embeddings, centres, sets, step=5)
    used = set(negatives.tolist()) | {c for s in sets for c in s}
    e = embeddings.clone().requires_grad_(True)
    w = centres.clone().requires_grad_(True)
    want = naive_loss(e, w, sets, "arcface", classes=used)
    want.backward()
    assert_close(loss, want.detach(), rtol=1e-10, atol=0)
    assert_close(grad_w, w.grad, rtol=1e-8, atol=1e-12)
    unused = sorted(set(range(40)) - used)
    assert grad_w[unused].abs().max() == 0  # centres not sampled get no gradient
    assert run(fn, embeddings, centres, sets, step=6)[0] != loss  # other negatives


def test_rate_zero_keeps_positives_only():
    embeddings, centres, sets = problem(seed=2)
    fn = MarginSoftmaxLoss(23, 8, sample_rate=0.0).double()
    loss = run(fn, embeddings, centres, sets)[0]
    positives = {c for s in sets for c in s}
    want = naive_loss(embeddings, centres, sets, "arcface", classes=positives)
    assert_close(loss, want, rtol=1e-10, atol=0)


def test_saturated_cosines_keep_finite_gradients():
    centres = torch.randn(5, 4, dtype=torch.float64)
    fn = MarginSoftmaxLoss(5, 4, sample_rate=1.0).double()
    # embedding == its centre (cos = 1) and == minus another's (cos = -1)
    loss, grad_e, grad_w = run(fn, centres[[0, 1]].clone(), centres, [[0], [1]])
    assert torch.isfinite(loss)
    assert torch.isfinite(grad_e).all()
    assert torch.isfinite(grad_w).all()
    _, grad_e, grad_w = run(fn, -centres[[0]].clone(), centres, [[0]])
    assert torch.isfinite(grad_e).all()
    assert torch.isfinite(grad_w).all()


def test_bf16_embeddings_are_computed_in_fp32():
    embeddings, centres, sets = problem()
    fn = MarginSoftmaxLoss(23, 8, sample_rate=1.0)
    fn.load_full_weight(centres.float())
    offsets, classes = csr(sets)
    loss = fn(embeddings.bfloat16(), offsets, classes, 0)
    assert loss.dtype == torch.float32
    want = naive_loss(embeddings.bfloat16().double(), centres, sets, "arcface")
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_sharded_centre_init_equals_rows_of_the_whole_matrix():
    whole = init_centres(9000, 4, 0, 9000, seed=3, std=0.01)
    for world in (1, 2, 3, 7):
        parts = [init_centres(9000, 4, *shard_range(9000, r, world), 3, 0.01) for r in range(world)]
        assert torch.equal(torch.cat(parts), whole)
    assert shard_range(10, 0, 3) == (0, 3)
    assert shard_range(10, 2, 3) == (6, 10)
    assert abs(whole.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize(
    ("offsets", "classes", "message"),
    [
        ([0, 1, 1], [0], "region 1 has no positive"),
        ([0, 1, 2], [0, 23], "positive class 23 outside"),
        ([0, 1, 2], [-1, 0], "positive class -1 outside"),
        ([0, 1], [0], r"positives_offsets must be \(3,\)"),
        ([1, 2, 3], [0, 1, 2], "must start at 0"),
    ],
)
def test_bad_positives_are_errors(offsets, classes, message):
    fn = MarginSoftmaxLoss(23, 8)
    with pytest.raises(InputError, match=message):
        fn(torch.randn(2, 8), torch.tensor(offsets), torch.tensor(classes), 0)


def test_bad_config_is_an_error():
    with pytest.raises(ConfigError, match="margin_type"):
        MarginSoftmaxLoss(10, 4, margin_type="sphere")
    with pytest.raises(ConfigError, match="sample_rate"):
        MarginSoftmaxLoss(10, 4, sample_rate=1.5)
    with pytest.raises(InputError, match="embeddings must be"):
        MarginSoftmaxLoss(10, 4)(torch.randn(2, 5), torch.tensor([0, 1, 2]), torch.zeros(2), 0)


def test_loss_decreases_when_training_embeddings_and_centres():
    torch.manual_seed(0)
    fn = MarginSoftmaxLoss(12, 16, sample_rate=0.5, seed=1)
    x = torch.nn.Parameter(torch.randn(24, 16))
    sets = [[i % 12] for i in range(24)]
    offsets, classes = csr(sets)
    first = None
    for step in range(30):  # plain SGD by hand (torch.optim imports torch._dynamo: seconds)
        x.grad = fn.weight.grad = None
        loss = fn(x, offsets, classes, step)
        loss.backward()
        with torch.no_grad():
            x -= 0.5 * x.grad
            fn.weight -= 0.5 * fn.weight.grad
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first
    assert math.isfinite(loss.item())


def test_autocast_region_does_not_lower_the_loss_precision():
    embeddings, centres, sets = problem(seed=4)
    fn = MarginSoftmaxLoss(23, 8, sample_rate=1.0)
    fn.load_full_weight(centres.float())
    offsets, classes = csr(sets)
    plain = fn(embeddings.float(), offsets, classes, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fn(embeddings.float(), offsets, classes, 0)
    assert autocast.dtype == torch.float32
    assert autocast.item() == plain.item()


def test_an_empty_batch_is_an_error():
    fn = MarginSoftmaxLoss(5, 4)
    empty = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(InputError, match="no region"):
        fn(torch.zeros(0, 4), torch.zeros(1, dtype=torch.int64), empty, 0)
