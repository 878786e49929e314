"""Sample ids as one Arrow string column: no Python object per sample.

`SampleIds` wraps a `pyarrow.LargeStringArray` (64-bit offsets, so more than 2 GiB of id bytes fit)
and behaves as a read-only `Sequence[str]`: `len`, indexing, iteration and `==` against a list of
strings work as they did when ids were a `list[str]`, while the column itself (`.arrow`) is what
the readers, the plan file and `verify` use, with vectorised Arrow and numpy operations.

`find_duplicate` finds a repeated id without a hash table of strings: every id is hashed to 64 bits
with numpy (a polynomial hash over its UTF-8 bytes, computed from prefix sums block by block, then
a SplitMix64 finaliser), the hashes are sorted in place, and only ids whose hash repeats are
compared as strings. Peak extra memory: 9 bytes per sample (the hashes and one comparison mask).
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa

_BLOCK_BYTES = 1 << 18  # id bytes hashed per numpy pass (its temporaries: ~40x that)
_RADIX = 0x100000001B3  # odd, so invertible modulo 2**64
_RADIX_INVERSE = pow(_RADIX, -1, 2**64)
_LENGTH_MIX = np.uint64(0x9E3779B97F4A7C15)
_powers_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}


class SampleIds(Sequence[str]):
    """Read-only sequence of sample ids held in one Arrow `large_string` array (no nulls)."""

    __slots__ = ("_array", "_unique")

    def __init__(self, values: "SampleIds | Iterable[str] | pa.Array | pa.ChunkedArray") -> None:
        if isinstance(values, SampleIds):
            self._array: pa.LargeStringArray = values._array
            self._unique: bool = values._unique
            return
        array = _as_large_string(values)
        if array.null_count:
            first = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"id {first} is missing (null)")
        self._array = array
        self._unique = False

    @property
    def arrow(self) -> pa.LargeStringArray:
        """The ids as one contiguous Arrow array."""
        return self._array

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> "SampleIds": ...
    def __getitem__(self, index: int | slice) -> "str | SampleIds":
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return SampleIds(self._array.take(np.arange(start, stop, step)))
            return SampleIds(self._array.slice(start, max(0, stop - start)))
        return self._array[int(index)].as_py()

    def __iter__(self) -> Iterator[str]:
        block = 1 << 16
        for start in range(0, len(self._array), block):
            yield from self._array.slice(start, block).to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SampleIds):
            return len(self) == len(other) and (len(self) == 0 or self._array.equals(other._array))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-free but equal to lists: not hashable

    def __repr__(self) -> str:
        shown = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        more = ", ..." if len(self) > 3 else ""
        return f"SampleIds([{shown}{more}], n={len(self)})"

    def take(self, indices: np.ndarray) -> "SampleIds":
        """The ids at `indices`, as a new column."""
        return SampleIds(self._array.take(pa.array(np.asarray(indices, dtype=np.int64))))

    def first_duplicate(self) -> tuple[int, int] | None:
        """(first position, second position) of the earliest repeated id, or None (cached)."""
        if self._unique:
            return None
        found = find_duplicate(self._array)
        self._unique = found is None
        return found

    def mark_unique(self) -> None:
        """Record that the ids were checked unique (a reader did), so checks are not repeated."""
        self._unique = True


def _as_large_string(values: Any) -> pa.LargeStringArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.cast(pa.large_string()).combine_chunks()
    elif isinstance(values, pa.Array):
        values = values.cast(pa.large_string())
    else:
        values = pa.array(values if isinstance(values, list) else list(values), pa.large_string())
    if isinstance(values, pa.ChunkedArray):  # combine_chunks of 0 chunks
        values = pa.array([], pa.large_string())
    if values.type != pa.large_string():
        raise TypeError(f"ids must be strings, got Arrow type {values.type}")
    return values


def id_hashes(array: pa.LargeStringArray) -> np.ndarray:
    """A 64-bit hash of every id (uint64), from its UTF-8 bytes and length."""
    n = len(array)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, np.uint8)
    )
    start = 0
    while start < n:
        # As many ids as fit in _BLOCK_BYTES (at least one).
        stop = int(np.searchsorted(offsets, offsets[start] + _BLOCK_BYTES, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        bounds = offsets[start : stop + 1]
        low = int(bounds[0])
        relative = bounds - low
        size = int(relative[-1])
        powers, inverse_powers = _powers(size + 1)
        prefix = np.zeros(size + 1, dtype=np.uint64)
        if size:
            np.cumsum(
                (data[low : low + size].astype(np.uint64) + np.uint64(1)) * powers[:size],
                out=prefix[1:],
            )
        begin, end = relative[:-1], relative[1:]
        hashed = (prefix[end] - prefix[begin]) * inverse_powers[begin]
        hashed ^= (end - begin).astype(np.uint64) * _LENGTH_MIX
        out[start:stop] = _splitmix(hashed)
        start = stop
    return out


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """RADIX**j and RADIX**-j modulo 2**64 for j < size (cached, grown by doubling)."""
    have = max(_powers_cache, default=0)
    if have < size:
        have = max(size, 2 * have, _BLOCK_BYTES + 1)
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(have, _RADIX, dtype=np.uint64))
            inverse = np.cumprod(np.full(have, _RADIX_INVERSE, dtype=np.uint64))
        powers = np.concatenate([[np.uint64(1)], powers[:-1]])
        inverse = np.concatenate([[np.uint64(1)], inverse[:-1]])
        _powers_cache.clear()
        _powers_cache[have] = (powers, inverse)
    return _powers_cache[have]


def _splitmix(x: np.ndarray) -> np.ndarray:
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def find_duplicate(array: pa.LargeStringArray) -> tuple[int, int] | None:
    """(first position, second position) of the earliest repeat in `array`, or None.

    "Earliest" means the smallest second position: the first id that was already seen when the
    ids are read in order. Ids whose 64-bit hashes collide are compared as strings.
    """
    n = len(array)
    if n < 2:
        return None
    hashes = id_hashes(array)
    hashes.sort()
    repeated = hashes[1:] == hashes[:-1]
    if not repeated.any():
        return None
    candidates = np.unique(hashes[1:][repeated])
    del hashes, repeated
    hashes = id_hashes(array)
    positions = np.flatnonzero(np.isin(hashes, candidates))
    seen: dict[str, int] = {}
    for position, value in zip(
        positions.tolist(), array.take(pa.array(positions)).to_pylist(), strict=True
    ):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return None  # only hash collisions
