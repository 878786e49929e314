"""Embedding matrices on disk, read in row ranges so that no corpus-sized array is ever loaded.

Three layouts are accepted wherever embeddings are read (`assign`, the precomputed encoder):

- a `.npy` file holding one 2-D float16/float32/float64 array, opened with `mmap_mode="r"`;
- a `.safetensors` file, one tensor chosen by name (or the only one), float16/bfloat16/float32/
  float64, read with `safe_open(...).get_slice(name)[start:stop]`, which also maps the file;
- an embedding directory written by `ov-concepts embed-images`/`embed-concepts`: a manifest plus
  chunk `.npy` files, presented as one matrix (the job must be complete).

`read(start, stop)` returns float32 rows; validation and L2 normalisation (`normalise_rows`) happen
on the compute device so a GPU run is not limited by host-side arithmetic. A NaN/inf or zero-norm
row is an error naming its row numbers: normalising it would produce NaN scores whose rank is
meaningless, and silently dropping it would shift every later image index.
"""

import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ov_concepts.errors import EmbeddingError, ManifestError
from ov_concepts.manifest import EmbeddingManifest, has_manifest, read_manifest

_NPY_DTYPES = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
_SAFETENSORS_DTYPES = {"F16", "BF16", "F32", "F64"}
ZERO_NORM = 1e-12
_SHOWN_ROWS = 10


class EmbeddingMatrix:
    """A read-only (rows x dim) embedding matrix on disk; `read` returns float32 row ranges."""

    def __init__(self, path: Path, tensor: str | None = None) -> None:
        self.path = Path(path)
        self.tensor = tensor
        if self.path.is_dir():
            self._reader: _Reader = _DirectoryReader(self.path)
        elif self.path.suffix == ".npy":
            self._reader = _NpyReader(self.path)
        elif self.path.suffix == ".safetensors":
            self._reader = _SafetensorsReader(self.path, tensor)
        elif not self.path.exists():
            raise EmbeddingError(f"{self.path}: no such file or directory")
        else:
            raise EmbeddingError(
                f"{self.path}: unknown embedding format (expected .npy, .safetensors or an "
                "ov-concepts embedding directory)"
            )
        if tensor is not None and not isinstance(self._reader, _SafetensorsReader):
            raise EmbeddingError(f"{self.path}: a tensor name applies only to .safetensors files")
        self.rows, self.dim = self._reader.shape
        if self.rows == 0 or self.dim == 0:
            raise EmbeddingError(f"{self.path}: empty embedding matrix {self.rows} x {self.dim}")

    @property
    def name(self) -> str:
        """The file (and tensor) this matrix comes from, for messages and manifests."""
        return self._reader.name

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 array."""
        if not 0 <= start <= stop <= self.rows:
            raise EmbeddingError(f"{self.name}: rows [{start}, {stop}) outside 0..{self.rows}")
        return np.array(self._reader.read(start, stop), dtype=np.float32, order="C")

    def blocks(self, block_rows: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, float32 rows) blocks of at most `block_rows` rows from `start`."""
        for first in range(start, self.rows, block_rows):
            yield first, self.read(first, min(first + block_rows, self.rows))


def normalise_rows(
    rows: torch.Tensor, name: str, first_row: int = 0, labels: Sequence[str] | None = None
) -> torch.Tensor:
    """L2-normalise float rows; raise EmbeddingError naming NaN/inf or zero-norm rows.

    Rows are named `first_row + i`, or `labels[i]` when labels are given.
    """
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().cpu().tolist()
        raise EmbeddingError(
            f"{name}: {_rows(bad, first_row, labels, 'contains', 'contain')} NaN or inf"
        )
    norms = torch.linalg.vector_norm(rows, dim=1)
    zero = norms <= ZERO_NORM
    if bool(zero.any()):
        bad = torch.nonzero(zero).flatten().cpu().tolist()
        raise EmbeddingError(f"{name}: {_rows(bad, first_row, labels, 'has', 'have')} zero norm")
    return rows / norms[:, None]


def _rows(
    bad: list[int], first_row: int, labels: Sequence[str] | None, singular: str, plural: str
) -> str:
    """'row 7 has' or 'rows 1, 2, ... and 9 more have': the offending rows, by number or label."""
    names = [labels[i] if labels is not None else str(first_row + i) for i in bad[:_SHOWN_ROWS]]
    if len(bad) == 1:
        return f"row {names[0]} {singular}"
    more = f" and {len(bad) - _SHOWN_ROWS} more" if len(bad) > _SHOWN_ROWS else ""
    return f"rows {', '.join(names)}{more} {plural}"


class _Reader:
    name: str
    shape: tuple[int, int]

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _NpyReader(_Reader):
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise EmbeddingError(f"{path}: no such file") from None
        except (ValueError, OSError, EOFError) as error:
            raise EmbeddingError(f"{path}: not a readable .npy array ({error})") from None
        if self._array.ndim != 2:
            raise EmbeddingError(f"{path}: expected a 2-D array, got shape {self._array.shape}")
        if self._array.dtype not in _NPY_DTYPES:
            raise EmbeddingError(
                f"{path}: dtype {self._array.dtype}, expected float16, float32 or float64"
            )
        self.shape = (int(self._array.shape[0]), int(self._array.shape[1]))

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._array[start:stop]


class _SafetensorsReader(_Reader):
    def __init__(self, path: Path, tensor: str | None) -> None:
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise EmbeddingError(f"{path}: no such file")
        try:
            self._file = safe_open(str(path), framework="pt")
            names = sorted(self._file.keys())
        except (SafetensorError, OSError) as error:
            raise EmbeddingError(f"{path}: not a readable safetensors file ({error})") from None
        if tensor is None:
            if len(names) != 1:
                raise EmbeddingError(
                    f"{path}: holds {len(names)} tensors ({', '.join(names[:8])}); name one"
                )
            tensor = names[0]
        elif tensor not in names:
            raise EmbeddingError(f"{path}: no tensor {tensor!r} (has {', '.join(names[:8])})")
        self.name = f"{path}:{tensor}"
        self._slice = self._file.get_slice(tensor)
        shape = tuple(self._slice.get_shape())
        dtype = self._slice.get_dtype()
        if len(shape) != 2:
            raise EmbeddingError(f"{self.name}: expected a 2-D tensor, got shape {shape}")
        if dtype not in _SAFETENSORS_DTYPES:
            raise EmbeddingError(f"{self.name}: dtype {dtype}, expected F16, BF16, F32 or F64")
        self.shape = (int(shape[0]), int(shape[1]))

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._slice[start:stop].to(torch.float32).numpy()


class _DirectoryReader(_Reader):
    def __init__(self, directory: Path) -> None:
        self.name = str(directory)
        if not has_manifest(directory):
            raise EmbeddingError(f"{directory}: not an ov-concepts embedding directory")
        manifest = read_manifest(directory, EmbeddingManifest)
        if not manifest.complete:
            raise ManifestError(
                f"{directory}: the embedding job is not finished "
                f"({len(manifest.chunks)} chunks done); rerun it to resume"
            )
        self._arrays: list[np.ndarray] = []
        self._offsets: list[int] = []
        offset = 0
        for chunk in manifest.chunks:
            if chunk.rows == 0:
                continue
            array = _NpyReader(directory / chunk.file)._array
            if array.shape != (chunk.rows, manifest.dim):
                raise ManifestError(
                    f"{directory / chunk.file}: shape {array.shape}, manifest says "
                    f"({chunk.rows}, {manifest.dim})"
                )
            self._arrays.append(array)
            self._offsets.append(offset)
            offset += chunk.rows
        self.shape = (offset, manifest.dim)
        self.manifest = manifest

    def read(self, start: int, stop: int) -> np.ndarray:
        if start == stop:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        first = bisect.bisect_right(self._offsets, start) - 1
        parts = []
        position = start
        for index in range(first, len(self._arrays)):
            if position >= stop:
                break
            offset = self._offsets[index]
            array = self._arrays[index]
            end = min(stop, offset + len(array))
            parts.append(array[position - offset : end - offset])
            position = end
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
