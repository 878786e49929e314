"""K-means of region features into K cluster centres, and nearest-centre labels.

What RICE does: CLIP features of every region crop, k-means into K = 1M centres, label = the
nearest centre (L2). This module gives the same on any scale a user has, deterministically and
resumably.

Algorithm: Lloyd's iterations from a seeded init (K distinct feature rows drawn by
`torch.randperm(n)` of a generator seeded by `seed`; the same init for both backends), a fixed
number of iterations (no early stop, so a run of 20 iterations is the first 20 of a run of 30).
One iteration maps the centres to the next: assign every row to its nearest centre (squared L2,
ties to the lowest index), move each centre to the mean of its rows.

Backends (one iteration each; everything else is shared):
- `torch`: blocked over rows (`block_rows` at a time), so memory is O(block_rows * K + K * D)
  whatever the number of rows N; the features may be a numpy memmap larger than RAM. Runs on
  CPU or CUDA (`device`). Distances in fp32 (||x||^2 - 2 x.c + ||c||^2), per-cluster sums in
  fp64; the sums use index_add on CPU and a one-hot matmul on CUDA (index_add's CUDA atomics
  would make the float sums order-dependent), so both are run-to-run deterministic.
- `faiss` (faiss-cpu, the `faiss` extra): faiss's `Clustering` for one iteration from the given
  centres (all rows used: no subsampling), with faiss's multithreaded BLAS search. It needs the
  features in RAM as one fp32 array. Empty clusters are handled by faiss's own deterministic
  split (seeded by (seed, iteration)).

Empty clusters (torch backend): the centres left with no row are moved, in index order, to the
rows farthest from their nearest centre (farthest first, ties to the lower row; a second pass
over the data, only in an iteration that emptied a cluster): deterministic, no randomness, and
it splits the worst-fitting clusters.

Resume: with `checkpoint_dir`, the centres after each iteration are written atomically
(`kmeans_state.safetensors`, via a temporary file and `os.replace`), with (N, D, K, seed,
backend) and a fingerprint of the features (SHA-256 of rows 0, N/2 and N-1). A rerun with the
same arguments continues after the last finished iteration and, since an iteration is a
deterministic function of the centres and the data, returns the same centres bit for bit as an
uninterrupted run (same machine, library versions and thread count: BLAS results may depend on
them). A checkpoint of other data or settings is an error, never silently reused.

K = 1M (the paper's scale): one Lloyd iteration costs N K D multiply-adds; with N = 2B regions,
D = 768, that is 1.5e18 per iteration, a GPU job. The two ways here:
1. `torch` on CUDA with `block_rows` sized to memory (block_rows * K * 4 bytes for the distance
   block: 1024 rows at K = 1M is 4 GB), shards of N over GPUs summed afterwards (not built here),
   or faiss-gpu (not a dependency: same `Clustering` API).
2. `hierarchical_kmeans`: K1 coarse centres, then each coarse cluster split into a number of
   fine centres proportional to its size (total K): cost N (K1 + K / K1) D per iteration instead
   of N K D (about 500x less at K = 1M, K1 = 1000), which is how the paper's "hierarchical
   k-means" reaches 1M; labels come from `assign_hierarchical` (nearest coarse centre, then the
   nearest fine centre inside it: approximate nearest, exact within the coarse cell).
"""

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rice_vit.errors import ConfigError, InputError

Backend = Literal["torch", "faiss"]
Features = torch.Tensor | np.ndarray
ProgressFn = Callable[[int, float], None]
STATE_FILE = "kmeans_state.safetensors"


def _block(features: Features, start: int, end: int, device: torch.device) -> torch.Tensor:
    rows = features[start:end]
    if isinstance(rows, np.ndarray):  # a copy: memmaps are read-only, torch wants writable
        rows = torch.from_numpy(np.array(rows, dtype=np.float32, copy=True))
    return rows.to(device=device, dtype=torch.float32)


def _check_features(features: Features) -> tuple[int, int]:
    if len(features.shape) != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise InputError(f"features must be a non-empty (N, D) array, got {tuple(features.shape)}")
    return int(features.shape[0]), int(features.shape[1])


def _seed(seed: int, tag: int, index: int) -> int:
    state = np.random.SeedSequence([seed, tag, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def initial_centroids(features: Features, k: int, seed: int) -> torch.Tensor:
    """(k, D) fp32 CPU: k distinct rows of `features` chosen by a permutation seeded by `seed`
    (taken in increasing row order, so a memmap is read forward)."""
    n, _ = _check_features(features)
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in [1, N={n}], got {k}")
    generator = torch.Generator().manual_seed(_seed(seed, 0, 0))
    rows = torch.randperm(n, generator=generator)[:k].sort().values
    return _block(_rows(features, rows), 0, k, "cpu")


def _rows(features: Features, rows: torch.Tensor) -> Features:
    """The given rows of `features` (a numpy array stays numpy, a memmap is read)."""
    return features[rows.numpy()] if isinstance(features, np.ndarray) else features[rows]


def _nearest(block: torch.Tensor, centroids: torch.Tensor, centroid_norms: torch.Tensor):
    """(labels int64, squared distances fp32) of each row's nearest centroid."""
    distances = torch.addmm(centroid_norms[None, :], block, centroids.T, alpha=-2.0)
    distances += (block * block).sum(dim=1, keepdim=True)
    best, labels = distances.min(dim=1)
    return labels, best.clamp_min(0)


def _torch_iteration(features, centroids, block_rows, device, seed, iteration):
    """One Lloyd iteration on the torch backend: (new centroids fp32 CPU, inertia)."""
    n, d = features.shape
    k = centroids.shape[0]
    centres = centroids.to(device)
    norms = (centres * centres).sum(dim=1)
    sums = torch.zeros(k, d, dtype=torch.float64, device=device)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    inertia = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, block_rows):
        block = _block(features, start, min(start + block_rows, n), device)
        labels, best = _nearest(block, centres, norms)
        inertia += best.double().sum()
        counts += torch.bincount(labels, minlength=k)
        if block.is_cuda:
            one_hot = torch.zeros(block.shape[0], k, dtype=torch.float64, device=device)
            one_hot[torch.arange(block.shape[0], device=device), labels] = 1.0
            sums += one_hot.T @ block.double()
        else:
            sums.index_add_(0, labels, block.double())
    new = (sums / counts.clamp_min(1)[:, None]).float().cpu()
    empty = (counts == 0).nonzero().squeeze(1).cpu()
    if empty.numel():
        rows = _farthest_rows(features, centres, norms, empty.numel(), block_rows, device)
        new[empty] = _block(_rows(features, rows), 0, rows.numel(), "cpu")
    return new, float(inertia)


def _farthest_rows(features, centres, norms, count, block_rows, device) -> torch.Tensor:
    """The `count` rows farthest from their nearest centre (ties to the lower row), in that
    order: a second pass over the data, run only in iterations that left clusters empty."""
    n = features.shape[0]
    best_rows = torch.empty(0, dtype=torch.int64)
    best_distances = torch.empty(0)
    for start in range(0, n, block_rows):
        block = _block(features, start, min(start + block_rows, n), device)
        distances = _nearest(block, centres, norms)[1].cpu()
        rows = torch.cat([best_rows, torch.arange(start, start + block.shape[0])])
        distances = torch.cat([best_distances, distances])
        order = torch.sort(-distances, stable=True).indices[:count]
        best_rows, best_distances = rows[order], distances[order]
    return best_rows


def _faiss_iteration(features, centroids, seed, iteration):
    """One Lloyd iteration with faiss's Clustering from `centroids` (all rows, no subsampling)."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is in the dev group
        raise ConfigError(
            "backend='faiss' needs faiss-cpu: install rice-vit with the 'faiss' extra"
        ) from error
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    n, d = x.shape
    k = centroids.shape[0]
    params = faiss.ClusteringParameters()
    params.niter = 1
    params.seed = _seed(seed, 2, iteration) % (2**31)
    params.max_points_per_centroid = n  # never subsample
    params.min_points_per_centroid = 1
    params.verbose = False
    clustering = faiss.Clustering(d, k, params)
    faiss.copy_array_to_vector(centroids.numpy().astype(np.float32).ravel(), clustering.centroids)
    index = faiss.IndexFlatL2(d)
    clustering.train(x, index)
    new = faiss.vector_to_array(clustering.centroids).reshape(k, d)
    inertia = clustering.iteration_stats.at(clustering.iteration_stats.size() - 1).obj
    return torch.from_numpy(new.copy()), float(inertia)


def _fingerprint(features: Features) -> str:
    n = features.shape[0]
    digest = hashlib.sha256()
    for row in sorted({0, n // 2, n - 1}):
        digest.update(_block(features, row, row + 1, "cpu").numpy().tobytes())
    return digest.hexdigest()


def _identity(features: Features, k: int, seed: int, backend: str) -> dict[str, str]:
    n, d = features.shape
    return {
        "n": str(n),
        "d": str(d),
        "k": str(k),
        "seed": str(seed),
        "backend": backend,
        "fingerprint": _fingerprint(features),
    }


def _load_state(path: Path, identity: dict[str, str]) -> tuple[torch.Tensor, int] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    saved = json.loads(metadata.get("identity", "{}"))
    if saved != identity:
        differ = sorted(key for key in identity if saved.get(key) != identity[key])
        raise ConfigError(
            f"{path} is a k-means checkpoint of other data or settings ({', '.join(differ)} "
            "differ): use another checkpoint_dir or delete it"
        )
    return load_file(str(path))["centroids"], int(metadata["iteration"])


def _save_state(path: Path, centroids: torch.Tensor, iteration: int, identity, inertia) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {
        "identity": json.dumps(identity, sort_keys=True),
        "iteration": str(iteration),
        "inertia": repr(inertia),
    }
    save_file({"centroids": centroids.contiguous()}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def kmeans(
    features: Features,
    k: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    backend: Backend = "torch",
    device: str | torch.device = "cpu",
    block_rows: int = 65536,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """(k, D) fp32 CPU centroids of `features` ((N, D) tensor or numpy array/memmap) after
    `iterations` Lloyd iterations from the seeded init (see the module docstring).

    `progress(iteration, inertia)` is called after each iteration (1-based; inertia = the sum of
    squared distances to the centres the iteration started from). With `checkpoint_dir` the run
    resumes after its last finished iteration, bit-identical to an uninterrupted run.
    """
    _check_features(features)
    if backend not in ("torch", "faiss"):
        raise ConfigError(f"backend must be 'torch' or 'faiss', not {backend!r}")
    if iterations < 0 or block_rows < 1:
        raise ConfigError(
            f"need iterations >= 0 and block_rows >= 1, got {iterations}, {block_rows}"
        )
    device = torch.device(device)
    state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir is not None else None
    identity = _identity(features, k, seed, backend) if state_path else {}
    loaded = _load_state(state_path, identity) if state_path else None
    if loaded is None:
        centroids, done = initial_centroids(features, k, seed), 0
    else:
        centroids, done = loaded
    for iteration in range(done + 1, iterations + 1):
        if backend == "torch":
            centroids, inertia = _torch_iteration(
                features, centroids, block_rows, device, seed, iteration
            )
        else:
            centroids, inertia = _faiss_iteration(features, centroids, seed, iteration)
        if state_path is not None:
            _save_state(state_path, centroids, iteration, identity, inertia)
        if progress is not None:
            progress(iteration, inertia)
    return centroids


def assign_labels(
    features: Features,
    centroids: torch.Tensor,
    *,
    block_rows: int = 65536,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N,) int64 CPU: the index of each row's nearest centroid (squared L2, ties to the lowest
    index), computed `block_rows` rows at a time on `device`."""
    n, d = _check_features(features)
    if centroids.dim() != 2 or centroids.shape[1] != d:
        raise InputError(f"centroids must be (K, {d}), got {tuple(centroids.shape)}")
    device = torch.device(device)
    centres = centroids.to(device=device, dtype=torch.float32)
    norms = (centres * centres).sum(dim=1)
    labels = [
        _nearest(_block(features, s, min(s + block_rows, n), device), centres, norms)[0].cpu()
        for s in range(0, n, block_rows)
    ]
    return torch.cat(labels)


# --------------------------------------------------------------------------- hierarchical
def split_counts(sizes: list[int], k: int) -> list[int]:
    """Fine centres per coarse cluster: `k` apportioned proportionally to `sizes` by largest
    remainder (ties to the lower index), each between 1 and its size (needs len(sizes) <= k <=
    sum(sizes))."""
    total = sum(sizes)
    if not len(sizes) <= k <= total:
        raise ConfigError(f"k={k} must be between the coarse count {len(sizes)} and N={total}")
    counts = [max(1, min(size, math.floor(k * size / total))) for size in sizes]
    remainders = sorted(
        range(len(sizes)),
        key=lambda i: (-(k * sizes[i] / total - math.floor(k * sizes[i] / total)), i),
    )
    while sum(counts) != k:
        grow = sum(counts) < k
        changed = False
        for i in remainders if grow else reversed(remainders):
            if grow and counts[i] < sizes[i]:
                counts[i] += 1
                changed = True
            elif not grow and counts[i] > 1:
                counts[i] -= 1
                changed = True
            if sum(counts) == k:
                break
        if not changed:  # pragma: no cover - impossible within the bounds checked above
            raise ConfigError(f"cannot split k={k} over sizes {sizes}")
    return counts


def hierarchical_kmeans(
    features: Features,
    k: int,
    *,
    coarse_k: int,
    iterations: int = 20,
    seed: int = 0,
    backend: Backend = "torch",
    device: str | torch.device = "cpu",
    block_rows: int = 65536,
    checkpoint_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-level k-means: (coarse (coarse_k, D), fine (k, D), parent (k,) int64 = each fine
    centre's coarse cluster). Fine centres of coarse cluster c are contiguous, in coarse order;
    each coarse cluster gets `split_counts` of them; each level resumable under
    `checkpoint_dir` (coarse/, fine_<c>/)."""
    _check_features(features)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    settings = dict(iterations=iterations, backend=backend, device=device, block_rows=block_rows)
    coarse = kmeans(
        features, coarse_k, seed=seed, checkpoint_dir=folder and folder / "coarse", **settings
    )
    coarse_labels = assign_labels(features, coarse, block_rows=block_rows, device=device)
    sizes = torch.bincount(coarse_labels, minlength=coarse_k).tolist()
    if 0 in sizes:  # a coarse centre without rows: no fine centre can be placed in it
        raise ConfigError(f"coarse cluster {sizes.index(0)} is empty after assignment")
    counts = split_counts(sizes, k)
    fine, parent = [], []
    for cluster, count in enumerate(counts):
        members = _rows(features, (coarse_labels == cluster).nonzero().squeeze(1))
        fine.append(
            kmeans(
                members,
                count,
                seed=_seed(seed, 3, cluster) % (2**31),
                checkpoint_dir=folder and folder / f"fine_{cluster}",
                **settings,
            )
        )
        parent.append(torch.full((count,), cluster, dtype=torch.int64))
    return coarse, torch.cat(fine), torch.cat(parent)


def assign_hierarchical(
    features: Features,
    coarse: torch.Tensor,
    fine: torch.Tensor,
    parent: torch.Tensor,
    *,
    block_rows: int = 65536,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N,) int64 fine labels: the nearest coarse centre, then the nearest fine centre among its
    children (exact within the coarse cell; approximate overall, the price of the hierarchy)."""
    coarse_labels = assign_labels(features, coarse, block_rows=block_rows, device=device)
    labels = torch.empty(coarse_labels.shape[0], dtype=torch.int64)
    first = torch.searchsorted(parent, torch.arange(coarse.shape[0]))
    for cluster in coarse_labels.unique().tolist():
        rows = (coarse_labels == cluster).nonzero().squeeze(1)
        children = (parent == cluster).nonzero().squeeze(1)
        members = _rows(features, rows)
        local = assign_labels(members, fine[children], block_rows=block_rows, device=device)
        labels[rows] = local + first[cluster]
    return labels
