"""A seeded synthetic corpus with Zipf-distributed concepts, for demos, tests and benchmarks.

Concepts come in groups of `synonyms` near-duplicates, as in a real vocabulary ("dog", "puppy",
"canine"): each group has a random unit centre in `dim` dimensions, and each concept vector is its
centre plus a small perturbation (cosine about 0.8 between synonyms, about 0 across groups). Group
popularity follows Zipf's law, p(rank r) ∝ r^-s, with ranks given to groups by a seeded permutation
(so ids say nothing about frequency); concepts share their group's popularity equally. Each image
plants `concepts_per_image` distinct concepts drawn from that law, and its embedding is

    normalise( normalise(sum of its planted concept vectors) + noise * g ),   g ~ N(0, I/dim).

Its nearest concepts are therefore the planted ones, then their synonyms: top-K with K larger than
the planted count fills up with related concepts of the same popularity, as CLIP neighbours do,
rather than with uniformly random ones (which would flatten the distribution before any balancing).
`planted.npy` keeps the truth for checking retrieval.

Images are generated in fixed chunks of 65,536, each from its own generator seeded by
(seed, chunk index), so the files are byte-identical for a seed whatever the caller does, and
corpora larger than memory stream to disk. This is a shape-alike of web data, not a statistic of it.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np

from ov_concepts.errors import ConceptsError
from ov_concepts.vocabulary import Vocabulary

CHUNK = 65536
SYNONYM_SPREAD = 0.5
IMAGES_NAME = "images.npy"
CONCEPTS_NAME = "concepts.npy"
VOCABULARY_NAME = "vocabulary.txt"
PLANTED_NAME = "planted.npy"
CONFIG_NAME = "synthetic.json"


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Size and shape of a synthetic corpus."""

    images: int = 20000
    concepts: int = 2000
    dim: int = 128
    concepts_per_image: int = 3
    synonyms: int = 4
    zipf_exponent: float = 1.1
    noise: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "concepts", "dim", "concepts_per_image", "synonyms"):
            if getattr(self, name) < 1:
                raise ConceptsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.concepts_per_image > self.concepts:
            raise ConceptsError("concepts_per_image cannot exceed concepts")
        if not self.zipf_exponent > 0:
            raise ConceptsError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        if not self.noise >= 0:
            raise ConceptsError(f"noise must be >= 0, got {self.noise}")
        if not 0 <= self.seed < 1 << 63:
            raise ConceptsError(f"seed must be in [0, 2**63), got {self.seed}")


def concept_names(count: int) -> list[str]:
    """Names of the synthetic concepts: concept-00000, concept-00001, ..."""
    width = max(5, len(str(count - 1)))
    return [f"concept-{index:0{width}d}" for index in range(count)]


def concept_vectors(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(unit concept vectors float32 V x dim, popularity p per concept id float64)."""
    rng = np.random.default_rng([config.seed, 0])
    groups = -(-config.concepts // config.synonyms)
    group_of = rng.permutation(np.arange(config.concepts) // config.synonyms)
    centres = rng.standard_normal((groups, config.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.standard_normal((config.concepts, config.dim)) / np.sqrt(config.dim)
    vectors = centres[group_of] + SYNONYM_SPREAD * spread
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    by_rank = np.arange(1, groups + 1, dtype=np.float64) ** (-config.zipf_exponent)
    group_popularity = np.empty(groups)
    group_popularity[rng.permutation(groups)] = by_rank
    members = np.bincount(group_of, minlength=groups)
    popularity = group_popularity[group_of] / members[group_of]
    return vectors.astype(np.float32), popularity / popularity.sum()


def _planted(rng: np.random.Generator, popularity: np.ndarray, rows: int, m: int) -> np.ndarray:
    """`m` distinct concepts per row, drawn from `popularity` (redrawing rows with repeats)."""
    planted = rng.choice(len(popularity), size=(rows, m), p=popularity)
    while True:
        ordered = np.sort(planted, axis=1)
        repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(repeated):
            return planted.astype(np.int32)
        planted[repeated] = rng.choice(len(popularity), size=(len(repeated), m), p=popularity)


def image_chunk(
    config: SyntheticConfig, vectors: np.ndarray, popularity: np.ndarray, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `index` of the corpus: (image embeddings float32, planted concept ids int32)."""
    rng = np.random.default_rng([config.seed, 1, index])
    rows = min(CHUNK, config.images - index * CHUNK)
    planted = _planted(rng, popularity, rows, config.concepts_per_image)
    signal = vectors[planted].astype(np.float64).sum(axis=1)
    signal /= np.linalg.norm(signal, axis=1, keepdims=True)
    noise = rng.standard_normal((rows, config.dim)) / np.sqrt(config.dim)
    images = signal + config.noise * noise
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return images.astype(np.float32), planted


def write_synthetic_corpus(config: SyntheticConfig, out_dir: Path) -> Path:
    """Write images.npy, concepts.npy, vocabulary.txt, planted.npy and synthetic.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vectors, popularity = concept_vectors(config)
    np.save(out_dir / CONCEPTS_NAME, vectors)
    Vocabulary.from_strings(concept_names(config.concepts)).write_text(out_dir / VOCABULARY_NAME)
    m = config.concepts_per_image
    images = np.lib.format.open_memmap(
        out_dir / IMAGES_NAME, mode="w+", dtype=np.float32, shape=(config.images, config.dim)
    )
    planted = np.lib.format.open_memmap(
        out_dir / PLANTED_NAME, mode="w+", dtype=np.int32, shape=(config.images, m)
    )
    for index in range(-(-config.images // CHUNK)):
        chunk_images, chunk_planted = image_chunk(config, vectors, popularity, index)
        start = index * CHUNK
        images[start : start + len(chunk_images)] = chunk_images
        planted[start : start + len(chunk_planted)] = chunk_planted
    images.flush()
    planted.flush()
    del images, planted
    (out_dir / CONFIG_NAME).write_bytes(msgspec.json.encode(asdict(config)))
    return out_dir
