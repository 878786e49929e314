"""Random access to the bins of an ov_packing packed-shard directory.

ov_packing's `iter_bins` streams every bin in plan order. The loader needs something else: bins
in a permuted order that changes every epoch, each rank and each data-loader worker reading only
its own share. Streaming everything and skipping the rest would read the corpus ranks x workers
times; so the loader opens a table of where every bin lies and then reads any bin with one seek.

`load_bin_table` takes that table from the bin table ov_packing writes with the shards
(`ov_packing.shard_table`: per bin its shard, byte range, LLM tokens, sub-samples, and the
per-bin sums of the columns `prepare` passed, here `supervised_targets`), read in milliseconds.
Shard folders written before tables existed (index version 1) fall back to `scan_bin_table`,
with a warning: it walks the tar headers of every shard (the data of images is skipped, only each
bin's small JSON is read), about a second per 100,000 members on a local disk, and knows no
supervised counts, so such a folder can be read but not trained on (the loader says so; prepare
it again). `read_bin` reads a bin's byte range (positioned reads, safe in forked workers),
checks its SHA-256 against the table (a flipped byte is an error naming the shard and bin) and
parses it into ov_packing's own `PackedBin`, with the checks `iter_bins` makes: member names
belong to the bin, the JSON describes this bin, every listed file is present and nothing else is
(tests check the result equals `iter_bins` bin for bin).

The layout read is the one documented in `ov_packing.shards` (index versions 1 and 2).
"""

import hashlib
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ov_packing.errors import ShardError
from ov_packing.shard_table import load_table
from ov_packing.shards import (
    INDEX_NAME,
    PackedBin,
    ShardIndex,
    bin_key,
    check_bin_digest,
    decode_bin_record,
    parse_bin,
)
from ov_packing.source_tars import open_tar, tar_members

_BLOCK = tarfile.BLOCKSIZE
SUPERVISED_TARGETS = "supervised_targets"
"""The bin-table column `prepare` writes: supervised next-token targets per sub-sample."""


class ShardTableWarning(UserWarning):
    """A packed folder without a bin table: it is scanned, slowly, and cannot be trained on."""


@dataclass(frozen=True, eq=False)
class BinTable:
    """Where every bin of a packed directory lies, and its size; see the module docstring."""

    shards_dir: Path
    shard_names: tuple[str, ...]
    shard: np.ndarray
    """int32 (bins,): index into `shard_names`."""
    offset: np.ndarray
    """int64 (bins,): byte offset of the bin's first member header in its shard."""
    length: np.ndarray
    """int64 (bins,): bytes from there to the end of the bin's last member (padded)."""
    tokens: np.ndarray
    """int64 (bins,): LLM tokens of the bin (sum of its sub-samples')."""
    samples: np.ndarray
    """int32 (bins,): sub-samples in the bin."""
    fingerprint: str
    """SHA-256 of `index.json`: identifies the packed data (index holds every shard's SHA-256)."""
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    """Caller columns of the bin table, summed per bin (int64 (bins,)); empty after a scan."""
    sample_columns: dict[str, np.ndarray] = field(default_factory=dict)
    """The same per sub-sample, bins in order (rows `first_sample[b]:first_sample[b + 1]`)."""
    first_sample: np.ndarray | None = None
    """int64 (bins + 1,): where each bin's sub-samples start in `sample_columns`."""
    sha256: np.ndarray | None = None
    """uint8 (bins, 32): each bin's SHA-256, checked by `read_bin` (None: a table of version 1,
    or a scan)."""

    @property
    def num_bins(self) -> int:
        """Bins in the directory."""
        return int(self.tokens.shape[0])


def load_bin_table(shards_dir: str | Path) -> BinTable:
    """The bin table of the packed directory `shards_dir`: ov_packing's table written with the
    shards, or a scan of the tar headers (with a `ShardTableWarning`) for folders without one.
    ShardError naming the file on a missing shard or an inconsistent table."""
    shards_dir = Path(shards_dir)
    index = ShardIndex.load(shards_dir)
    _check_shard_files(shards_dir, index)
    table = load_table(shards_dir, index)
    if table is None:
        warnings.warn(
            f"{shards_dir}: packed without a bin table (index version {index.version}); "
            "scanning every tar header instead (slow on large corpora), and supervised-target "
            "counts are unknown, so training refuses it: run `ov-train prepare` again",
            ShardTableWarning,
            stacklevel=2,
        )
        return scan_bin_table(shards_dir)
    return BinTable(
        shards_dir=shards_dir,
        shard_names=tuple(shard.name for shard in index.shards),
        shard=table.shard,
        offset=table.offset,
        length=table.length,
        tokens=table.tokens,
        samples=table.samples,
        fingerprint=_fingerprint(shards_dir),
        columns=table.bin_columns,
        sample_columns=table.sample_columns,
        first_sample=table.first_sample,
        sha256=table.sha256,
    )


def _fingerprint(shards_dir: Path) -> str:
    return hashlib.sha256((shards_dir / INDEX_NAME).read_bytes()).hexdigest()


def _check_shard_files(shards_dir: Path, index: ShardIndex) -> None:
    for shard in index.shards:
        path = shards_dir / shard.name
        if not path.is_file():
            raise ShardError(f"{path}: shard listed in {INDEX_NAME} is missing")
        if path.stat().st_size != shard.bytes:
            raise ShardError(
                f"{path}: shard is {path.stat().st_size} bytes, {INDEX_NAME} says {shard.bytes}"
            )


def scan_bin_table(shards_dir: str | Path) -> BinTable:
    """Index the packed directory `shards_dir` by reading its tar headers (no columns), for
    folders without a bin table (ShardError naming the shard on any mismatch)."""
    shards_dir = Path(shards_dir)
    index = ShardIndex.load(shards_dir)
    _check_shard_files(shards_dir, index)
    fingerprint = _fingerprint(shards_dir)
    columns: list[list[int]] = [[], [], [], [], []]
    for number, shard in enumerate(index.shards):
        path = shards_dir / shard.name
        found = _scan_shard(path, shard.first_bin, number, columns)
        if found != shard.num_bins:
            raise ShardError(f"{path}: holds {found} bins, {INDEX_NAME} says {shard.num_bins}")
    shard_of, offsets, lengths, tokens, samples = columns
    return BinTable(
        shards_dir=shards_dir,
        shard_names=tuple(shard.name for shard in index.shards),
        shard=np.asarray(shard_of, dtype=np.int32),
        offset=np.asarray(offsets, dtype=np.int64),
        length=np.asarray(lengths, dtype=np.int64),
        tokens=np.asarray(tokens, dtype=np.int64),
        samples=np.asarray(samples, dtype=np.int32),
        fingerprint=fingerprint,
    )


def _scan_shard(path: Path, first_bin: int, number: int, columns: list[list[int]]) -> int:
    shard_of, offsets, lengths, tokens, samples = columns
    count = 0
    key: str | None = None
    with open_tar(path) as tar:
        for member in tar_members(tar, path):
            member_key = member.name.split(".", 1)[0]
            end = member.offset_data + member.size + (-member.size % _BLOCK)
            if member_key != key:
                expected = bin_key(first_bin + count)
                if member_key != expected:
                    raise ShardError(
                        f"{path}: member {member.name!r} does not belong to the expected {expected}"
                    )
                if member.name != f"{member_key}.json":
                    raise ShardError(f"{path}: bin {member_key} does not start with its JSON")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise ShardError(f"{path}: member {member.name!r} is not a regular file")
                entry = decode_bin_record(extracted.read(), path, member.name)
                key = member_key
                count += 1
                shard_of.append(number)
                offsets.append(member.offset)
                lengths.append(end - member.offset)
                tokens.append(entry.tokens)
                samples.append(len(entry.samples))
            else:
                lengths[-1] = end - offsets[-1]
    return count


def read_bin(table: BinTable, index: int) -> PackedBin:
    """Bin `index` with its sub-samples' files: one positioned read, its SHA-256 checked against
    the bin table (tables of version 2), then parsed with the checks `iter_bins` makes
    (`ov_packing.shards.parse_bin`); ShardError naming the shard and bin otherwise."""
    if not 0 <= index < table.num_bins:
        raise IndexError(f"bin {index} is outside 0..{table.num_bins - 1}")
    path = table.shards_dir / table.shard_names[int(table.shard[index])]
    offset, length = int(table.offset[index]), int(table.length[index])
    descriptor = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(descriptor, length, offset)
    finally:
        os.close(descriptor)
    if len(data) != length:
        raise ShardError(f"{path}: truncated: bin {index} needs {length} bytes at {offset}")
    if table.sha256 is not None:
        check_bin_digest(path, index, offset, data, table.sha256[index])
    return parse_bin(path, index, data)
