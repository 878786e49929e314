"""`PackPlan`: the result of packing, and its versioned binary file format.

A plan holds the input it was computed from (ids, token and patch counts), the parameters, the bins
in CSR form (`bin_offsets`, `bin_samples`: bin b holds samples `bin_samples[bin_offsets[b]:
bin_offsets[b + 1]]`, as indices into the input) and the rejected samples with their reasons.
Keeping the input inside the plan makes a plan self-describing: stats, `show` and `verify` need
nothing else.

File layout (all integers little-endian):

| offset | size | field |
|---|---|---|
| 0 | 8 | magic `b"OVPLAN\\x00\\x00"` |
| 8 | 4 | format version (uint32), currently 1 |
| 12 | 8 | payload size in bytes (uint64) |
| 20 | 32 | BLAKE2b-256 digest of the payload |
| 52 | n | payload: zstd-compressed msgpack (msgspec) of `_PlanPayloadV1` |

Arrays travel as raw little-endian bytes inside the msgpack document, so saving and loading cost
a memory copy rather than per-element encoding. The same plan always saves to the same bytes.
"""

import enum
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import zstandard

from ov_packing.errors import PlanFileError

MAGIC = b"OVPLAN\x00\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
_ZSTD_LEVEL = 3


class RejectReason(enum.IntEnum):
    """Why a sample is in no bin."""

    TOKENS_OVER_CAPACITY = 1
    PATCHES_OVER_CAPACITY = 2

    @property
    def label(self) -> str:
        """Lower-case name used in stats and reports."""
        return self.name.lower()


class PackParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters a plan was computed with (the thread count is not one: it changes nothing)."""

    capacity: int
    patch_capacity: int | None = None
    max_per_bin: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError(f"capacity must be positive, got {self.capacity}")
        if self.patch_capacity is not None and self.patch_capacity <= 0:
            raise ValueError(f"patch_capacity must be positive, got {self.patch_capacity}")
        if self.max_per_bin is not None and self.max_per_bin <= 0:
            raise ValueError(f"max_per_bin must be positive, got {self.max_per_bin}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")


class _PlanPayloadV1(msgspec.Struct, forbid_unknown_fields=True):
    params: PackParams
    algorithm: str
    num_samples: int
    ids: list[str] | None
    tokens: bytes
    patches: bytes | None
    bin_offsets: bytes
    bin_samples: bytes
    rejected: bytes
    rejected_reasons: bytes


@dataclass(frozen=True, eq=False)
class PackPlan:
    """Bins of sample indices plus the input and parameters that produced them.

    `ids` is None when the input had no ids (a `.npy` array): sample i is then called `str(i)`.
    """

    params: PackParams
    algorithm: str
    ids: list[str] | None
    tokens: np.ndarray
    patches: np.ndarray | None
    bin_offsets: np.ndarray
    bin_samples: np.ndarray
    rejected: np.ndarray
    rejected_reasons: np.ndarray

    def __post_init__(self) -> None:
        _check_consistent(self)

    @property
    def num_samples(self) -> int:
        """Number of input samples (packed + rejected)."""
        return int(self.tokens.shape[0])

    @property
    def num_bins(self) -> int:
        """Number of bins."""
        return int(self.bin_offsets.shape[0] - 1)

    def bin(self, index: int) -> np.ndarray:
        """Input indices of the samples in bin `index`."""
        return self.bin_samples[self.bin_offsets[index] : self.bin_offsets[index + 1]]

    def sample_id(self, index: int) -> str:
        """The id of input sample `index`."""
        return self.ids[index] if self.ids is not None else str(index)

    def bin_tokens(self) -> np.ndarray:
        """Token total of every bin (int64)."""
        return _segment_sums(self.tokens, self.bin_samples, self.bin_offsets)

    def bin_patches(self) -> np.ndarray | None:
        """ViT patch total of every bin (int64), or None without patch counts."""
        if self.patches is None:
            return None
        return _segment_sums(self.patches, self.bin_samples, self.bin_offsets)

    def to_bytes(self) -> bytes:
        """Serialise to the versioned file format described in the module docstring."""
        payload = _PlanPayloadV1(
            params=self.params,
            algorithm=self.algorithm,
            num_samples=self.num_samples,
            ids=self.ids,
            tokens=_le_bytes(self.tokens, "<i4"),
            patches=None if self.patches is None else _le_bytes(self.patches, "<i4"),
            bin_offsets=_le_bytes(self.bin_offsets, "<i8"),
            bin_samples=_le_bytes(self.bin_samples, "<i4"),
            rejected=_le_bytes(self.rejected, "<i4"),
            rejected_reasons=_le_bytes(self.rejected_reasons, "u1"),
        )
        compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(
            msgspec.msgpack.encode(payload)
        )
        digest = hashlib.blake2b(compressed, digest_size=32).digest()
        return _HEADER.pack(MAGIC, FORMAT_VERSION, len(compressed), digest) + compressed

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "PackPlan":
        """Parse a plan file's bytes; PlanFileError names `source` and what is wrong."""
        if len(data) < _HEADER.size:
            raise PlanFileError(
                f"{source}: truncated plan file ({len(data)} bytes, header alone is 52)"
            )
        magic, version, size, digest = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise PlanFileError(f"{source}: not an ov_packing plan file (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise PlanFileError(
                f"{source}: plan format version {version} is not supported "
                f"(this ov_packing reads version {FORMAT_VERSION}); upgrade ov-packing"
            )
        compressed = data[_HEADER.size :]
        if len(compressed) != size:
            raise PlanFileError(
                f"{source}: truncated or padded plan file: payload is {len(compressed)} bytes, "
                f"header says {size}"
            )
        if hashlib.blake2b(compressed, digest_size=32).digest() != digest:
            raise PlanFileError(f"{source}: checksum mismatch, the plan file is corrupt")
        try:
            raw = zstandard.ZstdDecompressor().decompress(compressed)
            payload = msgspec.msgpack.decode(raw, type=_PlanPayloadV1)
        except (zstandard.ZstdError, msgspec.DecodeError, ValueError) as error:
            raise PlanFileError(f"{source}: cannot decode plan payload: {error}") from error
        try:
            return cls(
                params=payload.params,
                algorithm=payload.algorithm,
                ids=payload.ids,
                tokens=_from_le(payload.tokens, "<i4"),
                patches=None if payload.patches is None else _from_le(payload.patches, "<i4"),
                bin_offsets=_from_le(payload.bin_offsets, "<i8"),
                bin_samples=_from_le(payload.bin_samples, "<i4"),
                rejected=_from_le(payload.rejected, "<i4"),
                rejected_reasons=_from_le(payload.rejected_reasons, "u1"),
            )
        except ValueError as error:
            raise PlanFileError(f"{source}: inconsistent plan: {error}") from error

    def save(self, path: str | Path) -> None:
        """Write the plan to `path` (atomically: a temporary file renamed into place)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise PlanFileError(f"{path}: folder {path.parent} does not exist")
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(self.to_bytes())
        temporary.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PackPlan":
        """Read a plan written by `save`; PlanFileError if it is truncated, corrupt or unknown."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PlanFileError(f"{path}: plan file not found") from None
        return cls.from_bytes(data, source=str(path))


def _le_bytes(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _from_le(data: bytes, dtype: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if len(data) % itemsize:
        raise ValueError(f"array of {len(data)} bytes is not a whole number of {dtype} items")
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:] if dtype[0] == "<" else dtype)


def _segment_sums(values: np.ndarray, members: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(values[members], dtype=np.int64)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def _check_consistent(plan: PackPlan) -> None:
    """Structural checks (shapes, ranges); `verify_plan` checks the packing invariants."""
    n = plan.tokens.shape[0]
    if plan.tokens.ndim != 1:
        raise ValueError("tokens must be one-dimensional")
    if plan.ids is not None and len(plan.ids) != n:
        raise ValueError(f"{len(plan.ids)} ids for {n} samples")
    if plan.patches is not None and plan.patches.shape != plan.tokens.shape:
        raise ValueError(f"{plan.patches.shape[0]} patch counts for {n} samples")
    offsets = plan.bin_offsets
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0:
        raise ValueError("bin_offsets must start at 0")
    if np.any(np.diff(offsets) < 0) or offsets[-1] != plan.bin_samples.shape[0]:
        raise ValueError(
            "bin_offsets must be non-decreasing and end at the number of packed samples"
        )
    if plan.rejected.shape != plan.rejected_reasons.shape:
        raise ValueError("rejected and rejected_reasons differ in length")
    for name, indices in (("bin_samples", plan.bin_samples), ("rejected", plan.rejected)):
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"{name} holds an index outside [0, {n})")
    valid_reasons = [reason.value for reason in RejectReason]
    if plan.rejected_reasons.size and not np.isin(plan.rejected_reasons, valid_reasons).all():
        raise ValueError("unknown reject reason code")
