"""The bin table of packed shards: where every bin lies and what it holds, without opening a tar.

A reader that wants bins in another order than the shards' (a training loader: a new permutation
every epoch, each process reading its own share) needs random access: which shard, which bytes.
Finding that by walking every tar header costs one header read per member at every start (about
a second per 100,000 members on a local disk, far more on a network file system), so
`write_shards` records it while writing, in two NumPy files next to `index.json`:

    bins.npy      one row per bin (a structured array): `shard` (index into the index's shard
                  list), `offset` (byte offset of the bin's first member header in its shard),
                  `length` (bytes to the end of its last member, padding included), `tokens`,
                  `samples` (sub-samples), `patches` (-1 when the plan has no patch counts),
                  `sha256` (the SHA-256 of the bin's byte range, 32 bytes; table version 2), and
                  one int64 field per caller column: its sum over the bin's sub-samples
    samples.npy   one row per sub-sample, bins in order and sub-samples in bin order: `tokens`,
                  `patches`, and each caller column's value

Caller columns (`write_shards(sample_columns={name: values})`, one integer per plan sample) are
what the packer does not know but a reader wants per bin without reading it, such as a trainer's
supervised-token counts. ov_packing gives them no meaning: it stores, sums and checks them.

Safety and checks: `.npy` is NumPy's own header plus raw little-endian data, loaded here with
`allow_pickle=False`, so reading a table never runs code; the files are byte-deterministic;
`index.json` (format version 2) lists them with their SHA-256 under `table`, and `load_table`
checks the hashes, the fields and dtypes, the row counts and the agreement with the index's
shards, raising a ShardError naming the file. The table is complete: every bin has a row, the
bins of a shard lie back to back from its first byte, and the last one ends where the shard's
end-of-archive blocks start. A reader that opens a bin by its range checks the bin's `sha256`
(`shards.read_bin`, `shards.check_bin_digest`), so a flipped byte is an error naming the shard
and bin without reading the whole shard. Version-1 tables (no `sha256`) are still read.
A directory written before tables existed (index
version 1) has none: `load_table` returns None and the reader decides (scan the tars, or refuse).

Cost: 72 bytes per bin and 16 per sub-sample, plus 8 per caller column in each file.
"""

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from ov_packing.errors import ShardError
from ov_packing.plan import PackPlan

if TYPE_CHECKING:
    from ov_packing.shards import ShardIndex

TABLE_VERSION = 2
_READABLE_TABLE_VERSIONS = (1, 2)
BINS_NAME = "bins.npy"
SAMPLES_NAME = "samples.npy"
_BIN_FIELDS = (
    ("shard", "<i4"),
    ("offset", "<i8"),
    ("length", "<i8"),
    ("tokens", "<i8"),
    ("samples", "<i4"),
    ("patches", "<i8"),
)
_DIGEST_FIELD = (("sha256", "u1", (32,)),)
_SAMPLE_FIELDS = (("tokens", "<i8"), ("patches", "<i8"))
_RESERVED = frozenset([*(name for name, _ in _BIN_FIELDS), "sha256"])
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class TableInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `table` entry of `index.json`: the table files, their hashes and caller columns."""

    version: int
    bins: str
    bins_sha256: str
    samples: str
    samples_sha256: str
    columns: list[str]


@dataclass(frozen=True, eq=False)
class ShardTable:
    """A packed directory's bin table, as plain arrays (see the module docstring)."""

    shard: np.ndarray
    """int32 (bins,): index into the index's shard list."""
    offset: np.ndarray
    """int64 (bins,): byte offset of the bin's first member header in its shard."""
    length: np.ndarray
    """int64 (bins,): bytes from there to the end of the bin's last member (padding included)."""
    tokens: np.ndarray
    """int64 (bins,): tokens of the bin."""
    samples: np.ndarray
    """int32 (bins,): sub-samples in the bin."""
    patches: np.ndarray | None
    """int64 (bins,): patches of the bin; None when the plan had no patch counts."""
    bin_columns: dict[str, np.ndarray]
    """Caller column -> int64 (bins,): the column summed over each bin's sub-samples."""
    sample_columns: dict[str, np.ndarray]
    """Caller column -> int64 (sub-samples,): per sub-sample, bins in order."""
    first_sample: np.ndarray
    """int64 (bins + 1,): bin b's sub-samples are rows first_sample[b]:first_sample[b + 1]."""
    sha256: np.ndarray | None = None
    """uint8 (bins, 32): SHA-256 of each bin's byte range; None in a version-1 table."""

    @property
    def num_bins(self) -> int:
        """Bins in the directory."""
        return int(self.tokens.shape[0])


def check_sample_columns(
    plan: PackPlan, sample_columns: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """The caller columns as int64 arrays of one value per plan sample; ValueError naming the
    column when a name is not `[a-z][a-z0-9_]*`, is reserved, or the values are not integers of
    the plan's length."""
    checked: dict[str, np.ndarray] = {}
    for name, values in (sample_columns or {}).items():
        if not isinstance(name, str) or not _COLUMN_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"sample column name {name!r} must match [a-z][a-z0-9_]* (at most 64 characters) "
                f"and not be one of {sorted(_RESERVED)}"
            )
        array = np.asarray(values)
        if array.ndim != 1 or array.shape[0] != plan.tokens.shape[0]:
            raise ValueError(
                f"sample column {name!r} has shape {array.shape}; it needs one value per plan "
                f"sample ({plan.tokens.shape[0]},)"
            )
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"sample column {name!r} holds {array.dtype}, not integers")
        checked[name] = array.astype(np.int64)
    return checked


def write_table(
    out_dir: Path,
    plan: PackPlan,
    places: np.ndarray,
    sample_columns: dict[str, np.ndarray],
    digests: np.ndarray,
) -> tuple[TableInfo, list[Path]]:
    """Write `bins.npy` and `samples.npy` for `plan` into `out_dir`; `places` is int64
    (bins, 3): shard, offset, length of each bin, `digests` uint8 (bins, 32) the SHA-256 of
    each bin's bytes. Returns the index entry and the files."""
    members = plan.bin_samples.astype(np.int64)
    starts = plan.bin_offsets.astype(np.int64)
    samples = np.zeros(members.shape[0], dtype=_dtype(_SAMPLE_FIELDS, sample_columns))
    samples["tokens"] = plan.tokens[members]
    samples["patches"] = -1 if plan.patches is None else plan.patches[members]
    for name, values in sample_columns.items():
        samples[name] = values[members]
    bins = np.zeros(plan.num_bins, dtype=_dtype(_BIN_FIELDS + _DIGEST_FIELD, sample_columns))
    bins["shard"], bins["offset"], bins["length"] = places.T
    bins["sha256"] = digests
    bins["samples"] = np.diff(starts)
    bins["tokens"] = _segment_sums(samples["tokens"], starts)
    bins["patches"] = -1 if plan.patches is None else _segment_sums(samples["patches"], starts)
    for name in sample_columns:
        bins[name] = _segment_sums(samples[name], starts)
    hashes = {}
    for name, array in ((BINS_NAME, bins), (SAMPLES_NAME, samples)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        hashes[name] = hashlib.sha256(data).hexdigest()
        temporary = out_dir / f"{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(out_dir / name)
    info = TableInfo(
        version=TABLE_VERSION,
        bins=BINS_NAME,
        bins_sha256=hashes[BINS_NAME],
        samples=SAMPLES_NAME,
        samples_sha256=hashes[SAMPLES_NAME],
        columns=list(sample_columns),
    )
    return info, [out_dir / BINS_NAME, out_dir / SAMPLES_NAME]


def load_table(out_dir: str | Path, index: "ShardIndex | None" = None) -> ShardTable | None:
    """The bin table of the packed directory `out_dir` (its `index` if already loaded), checked;
    None when the directory has none (written before tables existed). ShardError naming the
    file on a missing, altered or inconsistent table."""
    from ov_packing.shards import ShardIndex

    out_dir = Path(out_dir)
    index = ShardIndex.load(out_dir) if index is None else index
    info = index.table
    if info is None:
        return None
    if info.version not in _READABLE_TABLE_VERSIONS:
        raise ShardError(
            f"{out_dir}: bin table version {info.version} is not supported (this ov_packing "
            f"reads versions {', '.join(map(str, _READABLE_TABLE_VERSIONS))}); upgrade ov-packing"
        )
    bin_fields = _BIN_FIELDS + (_DIGEST_FIELD if info.version >= 2 else ())
    bins = _load(out_dir / info.bins, info.bins_sha256, _dtype(bin_fields, info.columns))
    samples = _load(
        out_dir / info.samples, info.samples_sha256, _dtype(_SAMPLE_FIELDS, info.columns)
    )
    first_sample = np.concatenate([[0], np.cumsum(bins["samples"], dtype=np.int64)])
    _check_agreement(out_dir, index, bins, samples, first_sample, info.columns)
    has_patches = bool(bins.shape[0]) and int(bins["patches"][0]) >= 0
    return ShardTable(
        shard=np.ascontiguousarray(bins["shard"]),
        offset=np.ascontiguousarray(bins["offset"]),
        length=np.ascontiguousarray(bins["length"]),
        tokens=np.ascontiguousarray(bins["tokens"]),
        samples=np.ascontiguousarray(bins["samples"]),
        patches=np.ascontiguousarray(bins["patches"]) if has_patches else None,
        bin_columns={name: np.ascontiguousarray(bins[name]) for name in info.columns},
        sample_columns={name: np.ascontiguousarray(samples[name]) for name in info.columns},
        first_sample=first_sample,
        sha256=np.ascontiguousarray(bins["sha256"]) if info.version >= 2 else None,
    )


def _dtype(fields: tuple[tuple, ...], columns: Mapping[str, object] | list[str]):
    return np.dtype([*fields, *((name, "<i8") for name in columns)])


def _segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cumulative[starts[1:]] - cumulative[starts[:-1]]


def _load(path: Path, sha256: str, dtype: np.dtype) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"{path}: bin table file listed in index.json is missing") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ShardError(f"{path}: SHA-256 differs from index.json's; the table was altered")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        raise ShardError(f"{path}: not a readable .npy array: {error}") from None
    if array.dtype != dtype or array.ndim != 1:
        raise ShardError(f"{path}: holds {array.dtype} {array.shape}, expected {dtype} rows")
    return array


def _check_agreement(
    out_dir: Path,
    index: "ShardIndex",
    bins: np.ndarray,
    samples: np.ndarray,
    first_sample: np.ndarray,
    columns: list[str],
) -> None:
    where = out_dir / BINS_NAME
    if bins.shape[0] != index.num_bins or samples.shape[0] != index.num_samples:
        raise ShardError(
            f"{where}: {bins.shape[0]} bins and {samples.shape[0]} sub-samples, index.json says "
            f"{index.num_bins} and {index.num_samples}"
        )
    expected_shard = np.repeat(
        np.arange(len(index.shards), dtype=np.int64), [shard.num_bins for shard in index.shards]
    )
    sizes = np.array([shard.bytes for shard in index.shards], dtype=np.int64)
    if not np.array_equal(bins["shard"], expected_shard):
        raise ShardError(f"{where}: bins are not in the shards index.json assigns them to")
    if bins.shape[0] and (
        bool((bins["offset"] < 0).any())
        or bool((bins["length"] <= 0).any())
        or bool((bins["offset"] + bins["length"] > sizes[expected_shard]).any())
    ):
        raise ShardError(f"{where}: a bin's byte range lies outside its shard")
    if first_sample[-1] != samples.shape[0]:
        raise ShardError(
            f"{where}: bins hold {first_sample[-1]} sub-samples, {SAMPLES_NAME} has "
            f"{samples.shape[0]} rows"
        )
    _check_complete(where, index, bins)
    for name in ("tokens", *columns):
        if not np.array_equal(bins[name], _segment_sums(samples[name], first_sample)):
            raise ShardError(f"{where}: column {name!r} is not the sum of its sub-samples")


def _check_complete(where: Path, index: "ShardIndex", bins: np.ndarray) -> None:
    """Every shard's bins lie back to back from byte 0, and the last ends where the shard's
    end-of-archive blocks (two zero blocks, padded to a 10 KiB record) begin."""
    for number, shard in enumerate(index.shards):
        rows = bins[shard.first_bin : shard.first_bin + shard.num_bins]
        ends = rows["offset"] + rows["length"]
        if int(rows["offset"][0]) != 0 or not np.array_equal(rows["offset"][1:], ends[:-1]):
            raise ShardError(
                f"{where}: the bins of {shard.name} (shard {number}) do not lie back to back "
                "from its first byte; the table is incomplete"
            )
        end = int(ends[-1]) + 2 * _BLOCK
        if end + (-end % _RECORD) != shard.bytes:
            raise ShardError(
                f"{where}: the bins of {shard.name} end at byte {int(ends[-1])}, which does not "
                f"account for its {shard.bytes} bytes; the table is incomplete"
            )
