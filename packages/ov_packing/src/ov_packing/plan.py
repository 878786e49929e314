"""`PackPlan`: the result of packing, and its versioned file formats.

A plan holds the input it was computed from (ids, token and patch counts), the parameters, the bins
in CSR form (`bin_offsets`, `bin_samples`: bin b holds samples `bin_samples[bin_offsets[b]:
bin_offsets[b + 1]]`, as indices into the input) and the rejected samples with their reasons.
Keeping the input inside the plan makes a plan self-describing: stats, `show` and `verify` need
nothing else. Ids are one Arrow string column (`SampleIds`), never a Python string per sample.

## Format version 2 (written by `save`): an Arrow IPC file

The file is a plain Arrow IPC file (the "Feather v2" container: it starts and ends with `ARROW1`),
readable with any Arrow implementation (`pyarrow.ipc.open_file`, arrow-rs, Arrow C++, polars
`read_ipc`) and memory-mappable: `PackPlan.load` maps it (`pyarrow.memory_map`) and the arrays are
views of the mapped pages, not copies. It holds one record batch of ONE row; each column is a list
holding one whole array of the plan, so arrays of different lengths share one table:

| column | Arrow type | value |
|---|---|---|
| `ids` | `large_list<large_utf8>` | sample ids in input order; null when the input had none |
| `tokens` | `large_list<int32>` | LLM tokens per sample (input order) |
| `patches` | `large_list<int32>` | ViT patches per sample; null without patch counts |
| `bin_offsets` | `large_list<int64>` | CSR offsets, `num_bins + 1` entries, starting at 0 |
| `bin_samples` | `large_list<int32>` | input indices, bin after bin, largest first inside a bin |
| `rejected` | `large_list<int32>` | input indices of the rejected samples |
| `rejected_reasons` | `large_list<uint8>` | `RejectReason` code of each rejected sample |

Schema metadata (UTF-8 strings): `ov_packing.plan_format` = `"2"`; `ov_packing.params` = the
`PackParams` as JSON (`capacity`, `patch_capacity`, `max_per_bin`, `seed`); `ov_packing.algorithm`;
`ov_packing.num_samples`; `ov_packing.digest` = `blake2b-256:<hex>` of the content: for each column
in the order above, its name, then either `\x00` (null) or `\x01`, the value count (uint64 LE)
and the values' little-endian bytes (for `ids`: the 64-bit offsets rebased to 0, then the UTF-8
bytes). `load` recomputes the digest (a flipped value byte is a "checksum mismatch") and validates
the Arrow structure (a damaged header or buffer table is a "corrupt plan file" error). No buffer
compression, so the file maps without copies: about 18 + (id bytes) bytes per sample.

## Format version 1 (still read; `save(path, version=1)` still writes it)

| offset | size | field |
|---|---|---|
| 0 | 8 | magic `b"OVPLAN\\x00\\x00"` |
| 8 | 4 | format version (uint32), 1 |
| 12 | 8 | payload size in bytes (uint64) |
| 20 | 32 | BLAKE2b-256 digest of the payload |
| 52 | n | payload: zstd-compressed msgpack (msgspec) of `_PlanPayloadV1` |

The same plan always saves to the same bytes, in either version. Every plan that is loaded or
built has unique ids (a repeated id is an error naming it and both positions).
"""

import enum
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import zstandard

from ov_packing.errors import PlanFileError
from ov_packing.sample_ids import SampleIds

MAGIC = b"OVPLAN\x00\x00"
ARROW_MAGIC = b"ARROW1"
FORMAT_VERSION = 2
"""The version `save` writes."""
READ_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sIQ32s")
_ZSTD_LEVEL = 3
_META_FORMAT = b"ov_packing.plan_format"
_META_PARAMS = b"ov_packing.params"
_META_ALGORITHM = b"ov_packing.algorithm"
_META_NUM_SAMPLES = b"ov_packing.num_samples"
_META_DIGEST = b"ov_packing.digest"
_SEGMENT_BLOCK = 1 << 20  # members per block when summing bins


def _list_of(value_type: pa.DataType) -> pa.DataType:
    return pa.large_list(pa.field("item", value_type, nullable=False))


_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("ids", pa.large_string(), True),
    ("tokens", pa.int32(), False),
    ("patches", pa.int32(), True),
    ("bin_offsets", pa.int64(), False),
    ("bin_samples", pa.int32(), False),
    ("rejected", pa.int32(), False),
    ("rejected_reasons", pa.uint8(), False),
)
PLAN_SCHEMA_V2 = pa.schema(
    [
        pa.field(name, _list_of(value_type), nullable=nullable)
        for name, value_type, nullable in _COLUMNS
    ]
)
"""The Arrow schema of a version-2 plan file (without its per-file metadata)."""


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
    Any sequence of strings (or Arrow string array) given as `ids` is stored as `SampleIds`; a
    repeated id is a ValueError naming it and both positions.
    """

    params: PackParams
    algorithm: str
    ids: SampleIds | None
    tokens: np.ndarray
    patches: np.ndarray | None
    bin_offsets: np.ndarray
    bin_samples: np.ndarray
    rejected: np.ndarray
    rejected_reasons: np.ndarray

    def __post_init__(self) -> None:
        if self.ids is not None and not isinstance(self.ids, SampleIds):
            object.__setattr__(self, "ids", SampleIds(self.ids))
        _check_consistent(self)
        if self.ids is not None:
            duplicate = self.ids.first_duplicate()
            if duplicate is not None:
                first, second = duplicate
                raise ValueError(
                    f"duplicate id {_shorten(self.ids[second])}: samples {first} and {second}"
                )

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

    def to_bytes(self, version: int = FORMAT_VERSION) -> bytes:
        """Serialise to file format `version` (2 or 1; see the module docstring)."""
        if version == 1:
            return self._to_bytes_v1()
        _check_write_version(version)
        sink = pa.BufferOutputStream()
        self._write_v2(sink)
        return sink.getvalue().to_pybytes()

    def _to_bytes_v1(self) -> bytes:
        payload = _PlanPayloadV1(
            params=self.params,
            algorithm=self.algorithm,
            num_samples=self.num_samples,
            ids=None if self.ids is None else list(self.ids),
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
        return _HEADER.pack(MAGIC, 1, len(compressed), digest) + compressed

    def _columns_v2(self) -> dict[str, pa.Array | None]:
        return {
            "ids": None if self.ids is None else self.ids.arrow,
            "tokens": _arrow_values(self.tokens, "<i4"),
            "patches": None if self.patches is None else _arrow_values(self.patches, "<i4"),
            "bin_offsets": _arrow_values(self.bin_offsets, "<i8"),
            "bin_samples": _arrow_values(self.bin_samples, "<i4"),
            "rejected": _arrow_values(self.rejected, "<i4"),
            "rejected_reasons": _arrow_values(self.rejected_reasons, "u1"),
        }

    def _write_v2(self, sink: Any) -> None:
        columns = self._columns_v2()
        metadata = {
            _META_FORMAT: b"2",
            _META_PARAMS: msgspec.json.encode(self.params),
            _META_ALGORITHM: self.algorithm.encode(),
            _META_NUM_SAMPLES: str(self.num_samples).encode(),
            _META_DIGEST: b"blake2b-256:" + _content_digest(columns).hex().encode(),
        }
        schema = PLAN_SCHEMA_V2.with_metadata(metadata)
        arrays = [
            _one_row_list(columns[name], field.type.value_type)
            for name, field in zip(schema.names, schema, strict=True)
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        with pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(batch)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "PackPlan":
        """Parse a plan file's bytes (version 1 or 2); PlanFileError names `source` and what is
        wrong."""
        if data[:6] == ARROW_MAGIC:
            return _from_arrow(pa.py_buffer(data), source)
        return _from_bytes_v1(cls, data, source)

    def save(self, path: str | Path, version: int = FORMAT_VERSION) -> None:
        """Write the plan to `path` in format `version` (atomically: a temporary file, fsynced,
        renamed into place)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise PlanFileError(f"{path}: folder {path.parent} does not exist")
        if version != 1:
            _check_write_version(version)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as handle:
            if version == 1:
                handle.write(self._to_bytes_v1())
            else:
                self._write_v2(pa.PythonFile(handle, mode="w"))
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PackPlan":
        """Read a plan written by `save` (version 2 is memory-mapped, version 1 read whole);
        PlanFileError if it is truncated, corrupt, has a repeated id or an unknown version."""
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                head = handle.read(_HEADER.size)
        except FileNotFoundError:
            raise PlanFileError(f"{path}: plan file not found") from None
        except IsADirectoryError:
            raise PlanFileError(f"{path}: is a directory, not a plan file") from None
        if head[:6] == ARROW_MAGIC:
            return _from_arrow(pa.memory_map(str(path), "r"), str(path))
        return _from_bytes_v1(cls, path.read_bytes(), str(path))


def _check_write_version(version: int) -> None:
    if version not in READ_VERSIONS:
        raise PlanFileError(f"cannot write plan format version {version}; choose 1 or 2")


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _arrow_values(array: np.ndarray, dtype: str) -> pa.Array:
    return pa.array(np.ascontiguousarray(array, dtype=dtype).reshape(-1))


def _one_row_list(values: pa.Array | None, value_type: pa.DataType) -> pa.LargeListArray:
    list_type = _list_of(value_type)
    if values is None:
        return pa.array([None], type=list_type)
    offsets = pa.array([0, len(values)], type=pa.int64())
    return pa.LargeListArray.from_arrays(offsets, values, type=list_type)


def _value_buffers(values: pa.Array) -> list[memoryview]:
    """The little-endian bytes of `values` that the digest covers (see the module docstring)."""
    n = len(values)
    if pa.types.is_large_string(values.type):
        _, offsets_buffer, data_buffer = values.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype="<i8")[values.offset : values.offset + n + 1]
        low, high = int(offsets[0]), int(offsets[-1])
        if low:
            offsets = offsets - low
        data = memoryview(data_buffer)[low:high] if data_buffer is not None else memoryview(b"")
        return [memoryview(np.ascontiguousarray(offsets)).cast("B"), data]
    width = values.type.bit_width // 8
    buffer = values.buffers()[1]
    if buffer is None:
        return [memoryview(b"")]
    return [memoryview(buffer)[values.offset * width : (values.offset + n) * width]]


def _content_digest(columns: dict[str, pa.Array | None]) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    for name, _, _ in _COLUMNS:
        values = columns[name]
        digest.update(name.encode() + b"\x00")
        if values is None:
            digest.update(b"\x00")
            continue
        digest.update(b"\x01" + struct.pack("<Q", len(values)))
        for view in _value_buffers(values):
            digest.update(view)
    return digest.digest()


def _from_arrow(source_buffer: Any, source: str) -> PackPlan:
    try:
        reader = pa.ipc.open_file(source_buffer)
        schema = reader.schema
        metadata = schema.metadata or {}
        version = metadata.get(_META_FORMAT)
        if version is None:
            raise PlanFileError(
                f"{source}: an Arrow IPC file without ov_packing.plan_format metadata, not a plan"
            )
        if version != b"2":
            raise PlanFileError(
                f"{source}: plan format version {version.decode(errors='replace')} is not "
                f"supported (this ov_packing reads versions {READ_VERSIONS}); upgrade ov-packing"
            )
        if not schema.remove_metadata().equals(PLAN_SCHEMA_V2) or reader.num_record_batches != 1:
            raise PlanFileError(
                f"{source}: plan file schema differs from format version 2's: {schema}"
            )
        batch = reader.get_batch(0)
        batch.validate(full=True)
    except PlanFileError:
        raise
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as error:
        raise PlanFileError(f"{source}: truncated or corrupt plan file ({error})") from error
    if batch.num_rows != 1:
        raise PlanFileError(f"{source}: a version-2 plan holds one row, found {batch.num_rows}")
    columns: dict[str, pa.Array | None] = {}
    for name, _, nullable in _COLUMNS:
        column = batch.column(name)
        if column.is_null()[0].as_py():
            if not nullable:
                raise PlanFileError(f"{source}: column {name} is null")
            columns[name] = None
        else:
            columns[name] = column.values.slice(column.offsets[0].as_py(), len(column[0]))
    expected = metadata.get(_META_DIGEST, b"")
    if b"blake2b-256:" + _content_digest(columns).hex().encode() != expected:
        raise PlanFileError(f"{source}: checksum mismatch, the plan file is corrupt")
    try:
        params = msgspec.json.decode(metadata[_META_PARAMS], type=PackParams)
        algorithm = metadata[_META_ALGORITHM].decode()
        num_samples = int(metadata[_META_NUM_SAMPLES])
    except (KeyError, msgspec.DecodeError, ValueError) as error:
        raise PlanFileError(f"{source}: bad plan metadata ({error})") from error

    def numbers(name: str) -> np.ndarray | None:
        values = columns[name]
        return None if values is None else values.to_numpy(zero_copy_only=True)

    tokens = numbers("tokens")
    if len(tokens) != num_samples:
        raise PlanFileError(f"{source}: {len(tokens)} token counts, metadata says {num_samples}")
    try:
        return PackPlan(
            params=params,
            algorithm=algorithm,
            ids=None if columns["ids"] is None else SampleIds(columns["ids"]),
            tokens=tokens,
            patches=numbers("patches"),
            bin_offsets=numbers("bin_offsets"),
            bin_samples=numbers("bin_samples"),
            rejected=numbers("rejected"),
            rejected_reasons=numbers("rejected_reasons"),
        )
    except ValueError as error:
        raise PlanFileError(f"{source}: inconsistent plan: {error}") from error


def _from_bytes_v1(cls: type[PackPlan], data: bytes, source: str) -> PackPlan:
    if len(data) < _HEADER.size:
        raise PlanFileError(
            f"{source}: truncated plan file ({len(data)} bytes, header alone is 52)"
        )
    magic, version, size, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PlanFileError(f"{source}: not an ov_packing plan file (bad magic {magic!r})")
    if version != 1:
        raise PlanFileError(
            f"{source}: plan format version {version} is not supported "
            f"(this ov_packing reads versions {READ_VERSIONS}); upgrade ov-packing"
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
            ids=None if payload.ids is None else SampleIds(payload.ids),
            tokens=_from_le(payload.tokens, "<i4"),
            patches=None if payload.patches is None else _from_le(payload.patches, "<i4"),
            bin_offsets=_from_le(payload.bin_offsets, "<i8"),
            bin_samples=_from_le(payload.bin_samples, "<i4"),
            rejected=_from_le(payload.rejected, "<i4"),
            rejected_reasons=_from_le(payload.rejected_reasons, "u1"),
        )
    except ValueError as error:
        raise PlanFileError(f"{source}: inconsistent plan: {error}") from error


def _le_bytes(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _from_le(data: bytes, dtype: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if len(data) % itemsize:
        raise ValueError(f"array of {len(data)} bytes is not a whole number of {dtype} items")
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:] if dtype[0] == "<" else dtype)


def _segment_sums(values: np.ndarray, members: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of `values[members[offsets[b]:offsets[b + 1]]]` per bin b (int64), in blocks of about
    a million members so the temporaries stay small."""
    out = np.zeros(max(0, offsets.shape[0] - 1), dtype=np.int64)
    first = 0
    while first < out.shape[0]:
        low = int(offsets[first])
        last = int(np.searchsorted(offsets, low + _SEGMENT_BLOCK, side="right")) - 1
        last = min(out.shape[0], max(last, first + 1))
        block = offsets[first : last + 1] - low
        cumulative = np.concatenate(
            [[0], np.cumsum(values[members[low : int(offsets[last])]], dtype=np.int64)]
        )
        out[first:last] = cumulative[block[1:]] - cumulative[block[:-1]]
        first = last
    return out


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
