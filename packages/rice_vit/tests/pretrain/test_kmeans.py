"""k-means: Lloyd's iterations against a naive numpy implementation, resume bit for bit, torch vs
faiss, deterministic empty clusters, blocked labels, the hierarchical option."""

import numpy as np
import pytest
import torch

from rice_vit.errors import ConfigError, InputError
from rice_vit.pretrain.kmeans import (
    STATE_FILE,
    assign_hierarchical,
    assign_labels,
    hierarchical_kmeans,
    initial_centroids,
    kmeans,
    split_counts,
)


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


def blobs(seed=0, clusters=8, per_cluster=40, dim=16, spread=10.0):
    """Well-separated Gaussian blobs (unit noise, centres `spread` apart on average)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * spread
    truth = np.arange(clusters * per_cluster) % clusters
    x = centres[truth] + rng.normal(size=(truth.size, dim))
    return x.astype(np.float32), truth


def naive_lloyd(x, init, iterations):
    c = init.astype(np.float64)
    x = x.astype(np.float64)
    for _ in range(iterations):
        d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        labels = d.argmin(1)
        c = np.stack([x[labels == j].mean(0) for j in range(c.shape[0])])
    return c


def test_lloyd_equals_naive_implementation_from_the_same_init():
    x, _ = blobs(seed=1)
    init = initial_centroids(x, 8, seed=4).numpy()
    assert np.unique(init, axis=0).shape[0] == 8
    assert all((x == row).all(1).any() for row in init)  # rows of the data
    got = kmeans(x, 8, iterations=6, seed=4, block_rows=50)
    want = naive_lloyd(x, init, 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)


def test_result_does_not_depend_on_the_block_size():
    x, _ = blobs(seed=2)
    small = kmeans(x, 8, iterations=4, seed=0, block_rows=7)
    large = kmeans(x, 8, iterations=4, seed=0, block_rows=100_000)
    assert_close(small, large, rtol=0, atol=1e-5)
    assert torch.equal(assign_labels(x, small, block_rows=3), assign_labels(x, small))


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    x, _ = blobs(seed=3, clusters=6)
    x[:50] = x[0]  # many duplicate rows: centres collide, clusters go empty and are re-seeded
    uninterrupted = kmeans(x, 10, iterations=6, seed=5, block_rows=64)

    class Stop(Exception):
        pass

    def stop_after_three(iteration, inertia):
        if iteration == 3:
            raise Stop

    with pytest.raises(Stop):
        kmeans(
            x,
            10,
            iterations=6,
            seed=5,
            block_rows=64,
            checkpoint_dir=tmp_path,
            progress=stop_after_three,
        )
    assert (tmp_path / STATE_FILE).is_file()
    seen = []
    resumed = kmeans(
        x,
        10,
        iterations=6,
        seed=5,
        block_rows=64,
        checkpoint_dir=tmp_path,
        progress=lambda i, _: seen.append(i),
    )
    assert seen == [4, 5, 6]  # continued after the last finished iteration
    assert torch.equal(resumed, uninterrupted)
    # finished: a rerun does no iteration and returns the same centres; more iterations continue
    assert torch.equal(
        kmeans(x, 10, iterations=6, seed=5, block_rows=64, checkpoint_dir=tmp_path), uninterrupted
    )
    longer = kmeans(x, 10, iterations=8, seed=5, block_rows=64)
    assert torch.equal(
        kmeans(x, 10, iterations=8, seed=5, block_rows=64, checkpoint_dir=tmp_path), longer
    )


def test_faiss_resume_equals_uninterrupted(tmp_path):
    x, _ = blobs(seed=4)
    uninterrupted = kmeans(x, 8, iterations=4, seed=2, backend="faiss")

    def stop(iteration, inertia):
        if iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kmeans(x, 8, iterations=4, seed=2, backend="faiss", checkpoint_dir=tmp_path, progress=stop)
    resumed = kmeans(x, 8, iterations=4, seed=2, backend="faiss", checkpoint_dir=tmp_path)
    assert torch.equal(resumed, uninterrupted)


def test_a_checkpoint_of_other_data_or_settings_is_refused(tmp_path):
    x, _ = blobs(seed=5)
    kmeans(x, 8, iterations=1, seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="k differ"):
        kmeans(x, 7, iterations=1, seed=0, checkpoint_dir=tmp_path)
    y = x.copy()
    y[len(y) // 2] += 1
    with pytest.raises(ConfigError, match="fingerprint differ"):
        kmeans(y, 8, iterations=1, seed=0, checkpoint_dir=tmp_path)


def test_empty_clusters_are_reseeded_deterministically_with_data_rows():
    x = np.repeat(np.eye(3, 4, dtype=np.float32) * 10, 20, axis=0)  # 3 distinct points only
    x = np.concatenate([x, np.arange(8, dtype=np.float32).reshape(2, 4)])
    first = kmeans(x, 5, iterations=3, seed=1)
    assert torch.equal(first, kmeans(x, 5, iterations=3, seed=1))
    # every centre is a data row or a mean of rows, none is NaN, all 5 rows of the data kept apart
    assert torch.isfinite(first).all()
    sizes = torch.bincount(assign_labels(x, first), minlength=5)
    assert int((sizes > 0).sum()) == 5  # the 5 distinct points end in 5 clusters


def test_torch_and_faiss_agree_on_well_separated_data():
    x, truth = blobs(seed=6, clusters=4, per_cluster=100)
    torch_centres = kmeans(x, 4, iterations=8, seed=13, block_rows=128)
    faiss_centres = kmeans(x, 4, iterations=8, seed=13, backend="faiss")
    assert_close(torch_centres, faiss_centres, rtol=0, atol=1e-4)
    labels = assign_labels(x, torch_centres)
    assert torch.equal(labels, assign_labels(x, faiss_centres))
    # the clusters found are the true blobs (seed 13's init has one row in each blob)
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth, strict=True)}
    assert len(pairs) == 4


def test_assign_labels_is_the_nearest_centre():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    centres = torch.from_numpy(rng.normal(size=(17, 5)).astype(np.float32))
    want = torch.cdist(torch.from_numpy(x).double(), centres.double()).argmin(1)
    assert torch.equal(assign_labels(x, centres, block_rows=64), want)
    assert torch.equal(assign_labels(torch.from_numpy(x), centres), want)  # tensors too
    with pytest.raises(InputError, match="centroids must be"):
        assign_labels(x, centres[:, :3])


def test_memmap_features(tmp_path):
    x, _ = blobs(seed=8)
    path = tmp_path / "features.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    assert torch.equal(
        kmeans(mapped, 8, iterations=3, block_rows=33), kmeans(x, 8, iterations=3, block_rows=33)
    )


def test_bad_arguments_are_errors():
    x, _ = blobs()
    with pytest.raises(ConfigError, match="k must be in"):
        kmeans(x, 10_000)
    with pytest.raises(ConfigError, match="backend"):
        kmeans(x, 4, backend="sklearn")
    with pytest.raises(InputError, match="non-empty"):
        kmeans(np.zeros((0, 4), np.float32), 1)


def test_split_counts_is_proportional_and_exact():
    assert split_counts([10, 30, 60], 10) == [1, 3, 6]
    assert split_counts([1, 1, 98], 10) == [1, 1, 8]
    assert split_counts([5, 5, 5], 4) == [2, 1, 1]
    assert sum(split_counts([7, 3, 11, 2], 13)) == 13
    with pytest.raises(ConfigError):
        split_counts([1, 1], 3)


def test_hierarchical_kmeans_and_labels():
    x, truth = blobs(seed=9, clusters=4, per_cluster=60)
    coarse, fine, parent = hierarchical_kmeans(x, 12, coarse_k=4, iterations=5, seed=0)
    assert coarse.shape == (4, 16)
    assert fine.shape == (12, 16)
    assert parent.tolist() == sorted(parent.tolist())
    assert torch.bincount(parent).tolist() == [3, 3, 3, 3]  # equal blobs, equal shares
    labels = assign_hierarchical(x, coarse, fine, parent)
    # inside each coarse cell the label is the exact nearest child centre
    coarse_labels = assign_labels(x, coarse)
    assert torch.equal(parent[labels], coarse_labels)
    for cell in range(4):
        rows = (coarse_labels == cell).nonzero().squeeze(1)
        children = (parent == cell).nonzero().squeeze(1)
        nearest = torch.cdist(torch.from_numpy(x[rows.numpy()]), fine[children]).argmin(1)
        assert torch.equal(labels[rows], children[nearest])
    # on well-separated blobs each fine cluster lies inside one true blob
    assert all(len(set(truth[(labels == j).numpy()])) == 1 for j in range(12))


@pytest.mark.gpu
def test_cuda_backend_matches_cpu():
    x, _ = blobs(seed=10, clusters=16, per_cluster=64)
    cpu = kmeans(x, 16, iterations=5, seed=0, block_rows=100)
    cuda = kmeans(x, 16, iterations=5, seed=0, block_rows=100, device="cuda")
    assert torch.equal(cuda, kmeans(x, 16, iterations=5, seed=0, block_rows=100, device="cuda"))
    assert_close(cuda, cpu, rtol=0, atol=1e-4)
    assert torch.equal(assign_labels(x, cpu, device="cuda"), assign_labels(x, cpu))
