"""The encoder protocol, and the encoder that serves precomputed embeddings.

An encoder maps a batch of images, or a batch of concept texts, into one shared embedding space of
`dim` dimensions. It returns float32 arrays and need not normalise them: the embedding job
validates (NaN/inf, zero norm) and L2-normalises every row itself, so each encoder is trusted for
nothing but the numbers. `description` identifies the encoder in manifests, so a resumed job
refuses to mix rows from two different encoders.

A job that runs in worker processes or on Ray actors receives an `EncoderSpec` instead (picklable:
paths and settings; `build()` loads the encoder in the worker): `PrecomputedImagesSpec` below and
`ov_concepts.clip.ClipEncoderSpec`. An encoder may also offer `image_preparer()`, the per-image
CPU work (resize, crop) that decoding worker processes do before batching (`ov_concepts.decode`).

Two implementations ship: `PrecomputedEncoder` (below), for corpora that already have embeddings in
.npy/.safetensors files, where an "image" is a row number and a concept text is looked up in the
vocabulary the concept embeddings were computed for; and `ov_concepts.clip.ClipEncoder`, which runs
an open_clip-format CLIP checkpoint (optional extra `ov-concepts[clip]`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.errors import EmbeddingError
from ov_concepts.vocabulary import Vocabulary


@runtime_checkable
class Encoder(Protocol):
    """Embeds images and concept texts into one space of `dim` dimensions."""

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    @property
    def description(self) -> str:
        """A stable identifier of the encoder and its weights, recorded in manifests."""
        ...

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed a batch of images; returns float32 (len(images), dim)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch of concept texts; returns float32 (len(texts), dim)."""
        ...


@runtime_checkable
class EncoderSpec(Protocol):
    """A picklable recipe for an encoder: `dim` and `description` without loading it."""

    @property
    def dim(self) -> int: ...

    @property
    def description(self) -> str: ...

    def build(self) -> Encoder:
        """Load the encoder (in the worker that uses it)."""
        ...


class PrecomputedEncoder:
    """Serves embeddings already on disk: images are row numbers of `images`; a concept text is
    found in `vocabulary` and read from the matching row of `texts` (one row per vocabulary entry,
    duplicates included, see `Vocabulary.source_rows`)."""

    def __init__(
        self,
        images: EmbeddingMatrix | None = None,
        texts: EmbeddingMatrix | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        if images is None and texts is None:
            raise EmbeddingError("a precomputed encoder needs image or text embeddings")
        if texts is not None:
            if vocabulary is None:
                raise EmbeddingError(f"{texts.name}: concept embeddings need their vocabulary")
            if texts.rows != vocabulary.entries:
                raise EmbeddingError(
                    f"{texts.name}: {texts.rows} rows but the vocabulary "
                    f"{vocabulary.path or ''} has {vocabulary.entries} entries; they must match"
                )
        if images is not None and texts is not None and images.dim != texts.dim:
            raise EmbeddingError(
                f"{images.name} has {images.dim} dimensions but {texts.name} has {texts.dim}"
            )
        self._images = images
        self._texts = texts
        self._rows_of = (
            None
            if vocabulary is None
            else dict(zip(vocabulary.concepts, vocabulary.source_rows, strict=True))
        )

    @property
    def dim(self) -> int:
        """Embedding dimension of the files."""
        source = self._images if self._images is not None else self._texts
        assert source is not None
        return source.dim

    @property
    def description(self) -> str:
        """`precomputed:` plus the files served."""
        names = [m.name for m in (self._images, self._texts) if m is not None]
        return "precomputed:" + ",".join(names)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Rows `images` (ints) of the image embedding file, float32."""
        if self._images is None:
            raise EmbeddingError("this precomputed encoder has no image embeddings")
        rows = np.asarray(images, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        first, last = int(rows[0]), int(rows[-1])
        if rows.min() < 0 or rows.max() >= self._images.rows:
            raise EmbeddingError(f"{self._images.name}: rows outside 0..{self._images.rows - 1}")
        if np.array_equal(rows, np.arange(first, last + 1)):
            return self._images.read(first, last + 1)
        return np.stack([self._images.read(int(r), int(r) + 1)[0] for r in rows])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The stored embedding of each concept text, float32."""
        if self._texts is None or self._rows_of is None:
            raise EmbeddingError("this precomputed encoder has no concept embeddings")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for position, text in enumerate(texts):
            row = self._rows_of.get(text)
            if row is None:
                raise EmbeddingError(
                    f"{self._texts.name}: concept {text!r} is not in the vocabulary"
                )
            out[position] = self._texts.read(row, row + 1)[0]
        return out


@dataclass(frozen=True)
class PrecomputedImagesSpec:
    """`PrecomputedEncoder(images=EmbeddingMatrix(path, tensor))`, picklable."""

    path: Path
    tensor: str | None = None

    @property
    def dim(self) -> int:
        """Columns of the file."""
        return EmbeddingMatrix(self.path, self.tensor).dim

    @property
    def description(self) -> str:
        """The encoder's description (`precomputed:` and the file)."""
        return self.build().description

    def build(self) -> PrecomputedEncoder:
        """Open the file (memory-mapped)."""
        return PrecomputedEncoder(images=EmbeddingMatrix(self.path, self.tensor))


@dataclass(frozen=True)
class PrecomputedTextsSpec:
    """`PrecomputedEncoder(texts=EmbeddingMatrix(path, tensor), vocabulary=...)`, picklable."""

    path: Path
    tensor: str | None
    vocabulary: Path

    @property
    def dim(self) -> int:
        """Columns of the file."""
        return EmbeddingMatrix(self.path, self.tensor).dim

    @property
    def description(self) -> str:
        """The encoder's description (`precomputed:` and the file)."""
        return self.build().description

    def build(self) -> PrecomputedEncoder:
        """Open the file (memory-mapped) and read the vocabulary."""
        from ov_concepts.vocabulary import load_vocabulary

        texts = EmbeddingMatrix(self.path, self.tensor)
        return PrecomputedEncoder(texts=texts, vocabulary=load_vocabulary(self.vocabulary))
