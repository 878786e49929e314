"""What an embedding job walks over: image files, rows of a precomputed file, or concept texts.

An input list has a length, a string key per input (the image's relative path, the row number, the
concept) and `load(start, stop)`, which returns what the encoder takes for inputs [start, stop)
plus the inputs that could not be loaded. Only image files can fail: a truncated, corrupt or
unreadable image is reported with its reason and skipped, never fatal, because one bad file in 85M
should not stop a job that has run for hours.

Image files are listed either from a directory (recursively, sorted by relative path, so the order
is the same on every machine) or from a text file of paths, one per line, relative to that file.

`loader()` gives the small picklable object a worker process (or Ray actor) needs to load inputs
from their keys alone: the image root, or nothing for rows and texts. Work units carry their keys,
so a worker never holds the whole input list.
"""

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ov_concepts.errors import ConceptsError
from ov_concepts.vocabulary import Vocabulary

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """An input that could not be loaded: its index, key and the reason."""

    input: int
    key: str
    reason: str


class Inputs(Protocol):
    """An ordered list of inputs for an embedding job."""

    kind: str

    def __len__(self) -> int: ...

    def keys(self, start: int, stop: int) -> Sequence[str]:
        """The keys of inputs [start, stop)."""
        ...

    def load(self, start: int, stop: int) -> tuple[list[Any], list[LoadFailure]]:
        """The loaded inputs of [start, stop) that succeeded, in order, and the failures."""
        ...

    def loader(self) -> "ImageLoader | RowLoader | TextLoader":
        """What loads inputs from their keys in another process."""
        ...


@dataclass(frozen=True)
class ImageLoader:
    """Image files: a key is a path relative to `root`, decoded by `ov_concepts.decode`."""

    root: Path


@dataclass(frozen=True)
class RowLoader:
    """Rows of a precomputed file: a key is the row number as text; the item is the int."""

    def items(self, keys: Sequence[str]) -> list[Any]:
        """The row numbers."""
        return [int(key) for key in keys]


@dataclass(frozen=True)
class TextLoader:
    """Concept texts: the key is the text."""

    def items(self, keys: Sequence[str]) -> list[Any]:
        """The texts themselves."""
        return list(keys)


def inputs_digest(inputs: Inputs, block: int = 65536) -> str:
    """SHA-256 over every key, so a resumed job can tell that its input list changed."""
    digest = hashlib.sha256()
    for start in range(0, len(inputs), block):
        for key in inputs.keys(start, min(start + block, len(inputs))):
            digest.update(key.encode("utf-8", "surrogateescape"))
            digest.update(b"\n")
    return digest.hexdigest()


class ImageFiles:
    """Image files under `root`; loading decodes them fully with Pillow."""

    kind = "images"

    def __init__(self, root: Path, relative_paths: Sequence[str]) -> None:
        self.root = Path(root)
        self._paths = list(relative_paths)
        if not self._paths:
            raise ConceptsError(f"{root}: no images")

    @classmethod
    def from_path(cls, path: Path) -> "ImageFiles":
        """List a directory's images recursively, or read a list file of paths."""
        path = Path(path)
        if path.is_dir():
            found = sorted(
                p.relative_to(path).as_posix()
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise ConceptsError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return cls(path, found)
        if not path.is_file():
            raise ConceptsError(f"{path}: no such image directory or list file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ConceptsError(f"{path}: the image list is not UTF-8 ({error.reason})") from None
        entries = [line.strip() for line in lines if line.strip()]
        if not entries:
            raise ConceptsError(f"{path}: the image list is empty")
        return cls(path.parent, entries)

    def __len__(self) -> int:
        return len(self._paths)

    def keys(self, start: int, stop: int) -> Sequence[str]:
        """Paths as listed (relative to the root)."""
        return self._paths[start:stop]

    def load(self, start: int, stop: int) -> tuple[list[Any], list[LoadFailure]]:
        """Decoded Pillow images, skipping (and reporting) files that do not decode."""
        # PIL directly, not rice_vit's decode_image as the other packages: ov_concepts does not
        # depend on rice_vit (images are only for the optional `clip` extra).
        from ov_concepts.decode import load_images

        images: list[Any] = []
        failures: list[LoadFailure] = []
        keys = self._paths[start:stop]
        for index, key, (ok, value) in zip(
            range(start, stop), keys, load_images(self.root, keys), strict=True
        ):
            if ok:
                images.append(value)
            else:
                failures.append(LoadFailure(index, key, value))
        return images, failures

    def loader(self) -> ImageLoader:
        """The image root."""
        return ImageLoader(self.root)


class EmbeddingRows:
    """Rows 0..n-1 of a precomputed embedding file; loading yields the row numbers."""

    kind = "images"

    def __init__(self, rows: int) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return self._rows

    def keys(self, start: int, stop: int) -> Sequence[str]:
        """Row numbers as text."""
        return [str(row) for row in range(start, stop)]

    def load(self, start: int, stop: int) -> tuple[list[Any], list[LoadFailure]]:
        """The row numbers themselves (rows never fail)."""
        return list(range(start, stop)), []

    def loader(self) -> RowLoader:
        """Row numbers from their keys."""
        return RowLoader()


class ConceptTexts:
    """The concepts of a vocabulary, in id order."""

    kind = "concepts"

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary

    def __len__(self) -> int:
        return len(self.vocabulary)

    def keys(self, start: int, stop: int) -> Sequence[str]:
        """The concept strings."""
        return self.vocabulary.concepts[start:stop]

    def load(self, start: int, stop: int) -> tuple[list[Any], list[LoadFailure]]:
        """The concept strings (texts never fail)."""
        return list(self.vocabulary.concepts[start:stop]), []

    def loader(self) -> TextLoader:
        """Texts from their keys."""
        return TextLoader()


def iter_ranges(total: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """[a, b) ranges of at most `size` covering start..total."""
    for first in range(start, total, size):
        yield first, min(first + size, total)
