"""Packed webdataset shards: one tar entry per bin of a `PackPlan`, and a reader for them.

Layout of `out_dir`:

    index.json            {"format": "ov-packing-shards", "version": 2, "num_bins", "num_samples",
                           "shards": [{"name", "first_bin", "num_bins", "bytes", "sha256"}, ...],
                           "table": {"version", "bins", "bins_sha256", "samples",
                                     "samples_sha256", "columns"}}
    shard-000000.tar      bins 0 .. n-1, in plan order
    shard-000001.tar      ...
    bins.npy, samples.npy the bin table: each bin's shard and byte range, tokens, sub-samples,
                          and named integer columns the caller passed (`shard_table.py`)

Every bin is one webdataset sample with key `bin-<bin index, 9 digits>`:

    bin-000000007.json        {"bin": 7, "tokens": T, "patches": P or null, "samples": [
                                {"id", "source", "source_key", "tokens", "patches",
                                 "files": {"jpg": "s0.jpg", "json": "s0.json"}}, ...]}
    bin-000000007.s0.jpg      the first sub-sample's files, renamed `s<position in bin>.<ext>`
    bin-000000007.s0.json
    bin-000000007.s1.jpg      ...

Why one entry per bin: a packed sequence is the unit of training (one per micro-batch), so a reader
gets everything it needs for one step in one sequential read, and any webdataset reader (streaming,
shuffling shards, splitting by worker) works on packed data unchanged: `webdataset.WebDataset` sees
one sample per bin whose fields are `json`, `s0.jpg`, `s0.json`, ... The bin JSON says which file
came from which source sample, so nothing of the source is lost and every bin can be traced back.

Guarantees:
- Bins appear in plan order, sub-samples in bin order, each sub-sample's files in source tar order;
  the bytes are the source bytes unchanged.
- Output is byte-deterministic: the same plan and sources give the same shards and index
  (mtime 0, uid/gid 0, no user names, mode 0o644, PAX format, compact JSON with sorted keys).
- A shard exists under its final name only when complete (written as `.tmp`, then renamed), and
  `index.json` is written last, so a directory with an index is a finished one. Every source problem
  (missing ids, duplicate keys, unsafe names) is found before anything is written; if writing fails
  half-way, the files written so far are removed.
- `max_shard_bytes` bounds the shard file size, except that a bin larger than the limit gets a
  shard of its own; `max_bins_per_shard` bounds the number of bins per shard.
- The bin table (`shard_table.load_table`) gives random access to any bin without scanning the
  tars. Index version 1 (before tables) is still read; it has no table.
- `iter_bins` refuses shards whose size differs from the index, member names that could escape a
  directory or do not belong to the expected bin, and bins whose files differ from their JSON.
"""

import hashlib
import io
import os
import re
import shutil
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ov_packing.errors import PackingError, ShardError
from ov_packing.plan import PackPlan
from ov_packing.shard_table import (
    BINS_NAME,
    ShardTable,
    TableInfo,
    check_sample_columns,
    load_table,
    write_table,
)
from ov_packing.source_tars import (
    SourceIndex,
    TarIndex,
    merge_tar_indexes,
    open_tar,
    resolve_sources,
    scan_tar,
    tar_members,
    unsafe_name_reason,
)
from ov_packing.work_units import (
    STAGING_DIR,
    UNITS_DIR,
    Engine,
    JobMismatch,
    LocalEngine,
    UnitFailed,
    UnitReport,
    WorkUnit,
    run_units,
)

INDEX_FORMAT = "ov-packing-shards"
INDEX_VERSION = 2
_READABLE_VERSIONS = (1, 2)
INDEX_NAME = "index.json"
_SHARD_NAME = re.compile(r"shard-[0-9]{6,}\.tar")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_MAX_OPEN_SOURCES = 64
WORK_DIR = ".ov-pack-write"
"""Bookkeeping of an unfinished write (with the work units' `.units` and `.staging`)."""
_FORMAT_VERSION = 1
"""Version of the bytes `write_shards` produces from a plan and sources (part of job digests)."""


class ShardInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One shard file of a packed directory: its bins and its bytes."""

    name: str
    first_bin: int
    num_bins: int
    bytes: int
    sha256: str


class ShardIndex(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The contents of `index.json`: how many bins and sub-samples, and which shard holds which."""

    format: str = INDEX_FORMAT
    version: int = INDEX_VERSION
    num_bins: int
    num_samples: int
    shards: list[ShardInfo]
    table: TableInfo | None = None
    """The bin table's files (`shard_table.py`); None in version-1 directories."""

    @classmethod
    def load(cls, out_dir: str | Path) -> "ShardIndex":
        """Read and check `out_dir/index.json`; ShardError if missing, unknown or inconsistent."""
        path = Path(out_dir) / INDEX_NAME
        try:
            raw = msgspec.json.decode(path.read_bytes())
        except FileNotFoundError:
            raise ShardError(
                f"{path}: not found; not a packed shard directory, or its write did not finish"
            ) from None
        except msgspec.DecodeError as error:
            raise ShardError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise ShardError(f"{path}: not an {INDEX_FORMAT} index")
        if raw.get("version") not in _READABLE_VERSIONS:
            raise ShardError(
                f"{path}: index version {raw.get('version')!r} is not supported (this ov_packing "
                f"reads versions {', '.join(map(str, _READABLE_VERSIONS))}); upgrade ov-packing"
            )
        if raw.get("version") == 1 and "table" in raw:
            raise ShardError(f"{path}: a version-1 index has no table entry")
        try:
            index = msgspec.convert(raw, cls)
        except msgspec.ValidationError as error:
            raise ShardError(f"{path}: malformed index: {error}") from error
        _check_index(index, path)
        return index


class PackedSample(msgspec.Struct, frozen=True):
    """One sub-sample of a packed bin: where it came from, its counts and its files by extension."""

    id: str
    source: str
    source_key: str
    tokens: int
    patches: int | None
    files: dict[str, bytes]


class PackedBin(msgspec.Struct, frozen=True):
    """One packed bin as read back from the shards: its index, totals and sub-samples in order."""

    index: int
    tokens: int
    patches: int | None
    samples: list[PackedSample]


class SampleRecord(msgspec.Struct):
    """One sub-sample as a bin's JSON member describes it."""

    id: str
    source: str
    source_key: str
    tokens: int
    patches: int | None
    files: dict[str, str]


class BinRecord(msgspec.Struct):
    """A bin's JSON member: its totals and its sub-samples."""

    bin: int
    tokens: int
    patches: int | None
    samples: list[SampleRecord]


def write_shards(
    plan: PackPlan,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    max_bins_per_shard: int | None = 1000,
    max_shard_bytes: int | None = None,
    progress: bool = False,
    sample_columns: Mapping[str, np.ndarray] | None = None,
    engine: Engine | None = None,
    reports: list[UnitReport] | None = None,
) -> ShardIndex:
    """Write the bins of `plan` as packed webdataset shards into `out_dir`, with their bin table
    (`bins.npy`, `samples.npy`; see `shard_table.py`).

    `sources` are webdataset tars (files, directories of `*.tar`, or glob patterns) whose sample
    keys are the plan's ids. `sample_columns` are named integer columns, one value per plan
    sample, that the table keeps per sub-sample and sums per bin. Returns the index also written
    to `out_dir/index.json`.

    The work runs as resumable work units on `engine` (default: this process): the source tars
    are indexed one unit per tar, then each shard is one unit. Shard boundaries are decided before
    anything is written, from the exact size of every bin, so the bytes do not depend on the
    engine or the number of workers. `out_dir` must be empty, or a directory a killed
    `write_shards` left (it is resumed: finished shards are verified by size and SHA-256 and
    kept). ShardError on another non-empty `out_dir` or on unusable sources or plan ids missing
    from them, ValueError on a malformed column; on such errors a directory this call created
    is removed. `reports` (a list) receives the `UnitReport` of the indexing and writing jobs.
    """
    if max_bins_per_shard is not None and max_bins_per_shard <= 0:
        raise ValueError(f"max_bins_per_shard must be positive or None, got {max_bins_per_shard}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive or None, got {max_shard_bytes}")
    columns = check_sample_columns(plan, sample_columns)
    out_dir = Path(out_dir).absolute()
    engine = LocalEngine(1) if engine is None else engine
    reports = [] if reports is None else reports
    resuming = _check_out_dir(out_dir)
    paths = resolve_sources(sources)
    created_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        source_index = _index_sources(paths, out_dir / WORK_DIR / "sources", engine, reports)
        layout = _plan_layout(plan, source_index, max_bins_per_shard, max_shard_bytes)
        job_digest = _write_job_files(out_dir / WORK_DIR / "job", layout, source_index, plan)
        task = _ShardTask(
            out_dir=str(out_dir),
            sources=[str(path) for path in paths],
            exts=source_index.exts,
            has_patches=plan.patches is not None,
        )
        reports.append(
            run_units(
                task,
                layout.units(),
                out_dir,
                engine=engine,
                job_digest=job_digest,
                progress=progress,
                description="writing shards",
            )
        )
        shards, digests = _gather_parts(out_dir, layout)
        table, _ = write_table(out_dir, plan, layout.places, columns, digests)
        index = ShardIndex(
            num_bins=plan.num_bins,
            num_samples=int(plan.bin_samples.shape[0]),
            shards=shards,
            table=table,
        )
        _replace_atomically(
            out_dir / INDEX_NAME, msgspec.json.format(msgspec.json.encode(index)) + b"\n"
        )
    except UnitFailed as failed:
        if isinstance(failed.error, PackingError):
            if created_dir and not resuming:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise failed.error from failed
        raise
    except (PackingError, ValueError):
        if created_dir and not resuming:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    for name in (WORK_DIR, UNITS_DIR, STAGING_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    return index


def is_resumable(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds an unfinished `write_shards` job (a directory a kill left)."""
    out_dir = Path(out_dir)
    return (out_dir / WORK_DIR).is_dir() or (out_dir / UNITS_DIR / "job.json").is_file()


def iter_bins(out_dir: str | Path) -> Iterator[PackedBin]:
    """Yield every bin of the packed directory `out_dir` in order, checking it on the way.

    Every shard's SHA-256 is checked against `index.json` while it is read, and, with a bin
    table that records them (table version 2), each bin's SHA-256 before the bin is yielded: a
    flipped byte is a ShardError naming the shard (and the bin). ShardError (naming the shard and
    member) also on a missing or resized shard, an unsafe or unexpected member name, or a bin
    whose files differ from what its JSON lists.
    """
    out_dir = Path(out_dir)
    index = ShardIndex.load(out_dir)
    for shard in index.shards:
        path = out_dir / shard.name
        if not path.is_file():
            raise ShardError(f"{path}: shard listed in {INDEX_NAME} is missing")
        size = path.stat().st_size
        if size != shard.bytes:
            raise ShardError(f"{path}: shard is {size} bytes, {INDEX_NAME} says {shard.bytes}")
    table = load_table(out_dir, index) if index.table is not None else None
    for shard in index.shards:
        path = out_dir / shard.name
        if table is not None and table.sha256 is not None:
            yield from _read_shard_by_table(path, shard, table)
        else:
            yield from _read_shard(path, shard)


def read_bin(out_dir: str | Path, table: ShardTable, index: ShardIndex, number: int) -> PackedBin:
    """Bin `number` by the bin table: one positioned read, its SHA-256 checked (table version 2),
    then parsed with the checks `iter_bins` makes; ShardError naming the shard otherwise."""
    if not 0 <= number < table.num_bins:
        raise IndexError(f"bin {number} is outside 0..{table.num_bins - 1}")
    path = Path(out_dir) / index.shards[int(table.shard[number])].name
    offset, length = int(table.offset[number]), int(table.length[number])
    descriptor = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(descriptor, length, offset)
    finally:
        os.close(descriptor)
    if len(data) != length:
        raise ShardError(f"{path}: truncated: bin {number} needs {length} bytes at {offset}")
    if table.sha256 is not None:
        check_bin_digest(path, number, offset, data, table.sha256[number])
    return parse_bin(path, number, data)


def check_bin_digest(path: Path, number: int, offset: int, data: bytes, digest: np.ndarray) -> None:
    """ShardError naming the shard and bin unless `data` (bin `number`'s bytes, read at `offset`
    of shard `path`) has the SHA-256 `digest` (32 bytes) the bin table records."""
    if hashlib.sha256(data).digest() != bytes(digest):
        raise ShardError(
            f"{path}: bin {number} (bytes {offset}..{offset + len(data)}) does not have the "
            f"SHA-256 recorded in {BINS_NAME}; the shard is corrupt"
        )


def parse_bin(path: Path, number: int, data: bytes) -> PackedBin:
    """The PackedBin of bin `number` from its byte range `data` in shard `path` (its members'
    headers, data and padding); ShardError naming the shard on any member that is not one of
    the bin's regular files, or files that differ from the bin's JSON."""
    key = bin_key(number)
    files: dict[str, bytes] = {}
    # Two zero blocks end the archive, so tarfile stops cleanly after the bin's last member.
    with tarfile.open(fileobj=io.BytesIO(data + b"\0" * (2 * _BLOCK)), mode="r:") as tar:
        for member in tar_members(tar, path):
            reason = unsafe_name_reason(member.name)
            if reason is not None or "/" in member.name:
                raise ShardError(
                    f"{path}: member {member.name!r} {reason or 'contains a directory'}"
                )
            if not member.isreg() or not member.name.startswith(f"{key}."):
                raise ShardError(
                    f"{path}: member {member.name!r} at bin {number}'s place is not one of its "
                    "regular files"
                )
            if member.name in files:
                raise ShardError(f"{path}: member {member.name!r} appears twice")
            extracted = tar.extractfile(member)
            assert extracted is not None  # regular member
            files[member.name] = extracted.read()
    return assemble_bin(path, number, files)


def bin_key(index: int) -> str:
    """The webdataset key of bin `index` in packed shards (`bin-000000042`)."""
    return f"bin-{index:09d}"


def _check_out_dir(out_dir: Path) -> bool:
    """True when `out_dir` is a directory a killed write left (resume it); ShardError when it
    is something else that is not empty."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ShardError(f"{out_dir}: output path exists and is not a directory")
    if is_resumable(out_dir):
        return True
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if entries:
        what = "a finished packed directory" if INDEX_NAME in entries else "not empty"
        raise ShardError(
            f"{out_dir}: output directory is {what} (holds {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); write packed shards into an empty directory"
        )
    return False


# --- indexing the sources -----------------------------------------------------------------------


class _IndexTask:
    """Work unit task: index one source tar (`source_tars.scan_tar`) into a file."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def setup(self) -> None:
        pass

    def run(self, unit: WorkUnit, staging: Path) -> None:
        number = msgspec.msgpack.decode(unit.params)
        (staging / unit.outputs[0]).write_bytes(scan_tar(Path(self.paths[number])).to_bytes())


def _index_sources(
    paths: list[Path], work: Path, engine: Engine, reports: list[UnitReport]
) -> SourceIndex:
    """Index every source tar, one work unit per tar (kept in `work` until the write ends)."""
    fingerprint = hashlib.sha256(f"ov-pack-source-index {_FORMAT_VERSION}\n".encode())
    for path in paths:
        stat = path.stat()
        fingerprint.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    units = [
        WorkUnit(
            key=f"tar-{number:06d}",
            outputs=(f"tar-{number:06d}.idx",),
            params=msgspec.msgpack.encode(number),
        )
        for number in range(len(paths))
    ]
    if (work / UNITS_DIR / "job.json").exists():
        try:
            _peek_job(work, fingerprint.hexdigest())
        except JobMismatch:  # the sources changed since: this index is a cache, rebuild it
            shutil.rmtree(work)
    reports.append(
        run_units(
            _IndexTask([str(path) for path in paths]),
            units,
            work,
            engine=engine,
            job_digest=fingerprint.hexdigest(),
            progress=False,
            description="indexing sources",
        )
    )
    parts = [TarIndex.from_bytes((work / unit.outputs[0]).read_bytes()) for unit in units]
    return merge_tar_indexes(paths, parts)


def _peek_job(work: Path, job_digest: str) -> None:
    raw = msgspec.json.decode((work / UNITS_DIR / "job.json").read_bytes())
    if not isinstance(raw, dict) or raw.get("job_digest") != job_digest:
        raise JobMismatch(f"{work}: another job")


# --- the layout: every bin's exact size, shard boundaries, byte places ---------------------------


@dataclass(frozen=True, eq=False)
class _Layout:
    """Where every bin goes, decided before writing. Sub-samples are in plan (bin) order."""

    bin_offsets: np.ndarray  # int64 (bins + 1,): sub-samples of each bin
    entry_bytes: np.ndarray  # int64 (bins,): tar bytes of each bin's entry
    shard_first_bin: np.ndarray  # int64 (shards + 1,)
    places: np.ndarray  # int64 (bins, 3): shard, offset, length
    sample_source_row: np.ndarray  # int64 (sub-samples,): row in the source index
    ids: pa.LargeStringArray  # (sub-samples,)
    tokens: np.ndarray  # int64 (sub-samples,)
    patches: np.ndarray  # int64 (sub-samples,), -1 without patch counts

    def units(self) -> list[WorkUnit]:
        units = []
        for number in range(len(self.shard_first_bin) - 1):
            first, stop = int(self.shard_first_bin[number]), int(self.shard_first_bin[number + 1])
            name = _shard_name(number)
            units.append(
                WorkUnit(
                    key=name.removesuffix(".tar"),
                    outputs=(name, f"{WORK_DIR}/parts/{name.removesuffix('.tar')}.part"),
                    params=msgspec.msgpack.encode(
                        [
                            number,
                            first,
                            stop - first,
                            int(self.bin_offsets[first]),
                            int(self.bin_offsets[stop]),
                        ]
                    ),
                )
            )
        return units


def _shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def _plan_ids(plan: PackPlan) -> pa.LargeStringArray:
    ids = plan.ids
    if ids is None:
        return pc.cast(pa.array(np.arange(plan.num_samples, dtype=np.int64)), pa.large_string())
    arrow = getattr(ids, "arrow", None)
    if arrow is not None:
        return arrow.cast(pa.large_string())
    return pa.array(list(ids), pa.large_string())


def _plan_layout(
    plan: PackPlan,
    source_index: SourceIndex,
    max_bins_per_shard: int | None,
    max_shard_bytes: int | None,
) -> _Layout:
    """Exact tar bytes of every bin (vectorised over sub-samples and members), then the shards:
    a new shard after `max_bins_per_shard` bins or before one would grow past `max_shard_bytes`
    (a bin larger than that gets a shard of its own)."""
    members = plan.bin_samples.astype(np.int64)
    bin_offsets = plan.bin_offsets.astype(np.int64)
    num_bins = plan.num_bins
    ids = _plan_ids(plan).take(pa.array(members))
    rows = source_index.rows_of(ids)
    _check_ids_present(ids, rows, source_index)
    tokens = plan.tokens.astype(np.int64)[members]
    patches = (
        np.full(members.shape[0], -1, np.int64)
        if plan.patches is None
        else plan.patches.astype(np.int64)[members]
    )
    counts = np.diff(bin_offsets)
    bin_of_sample = np.repeat(np.arange(num_bins, dtype=np.int64), counts)
    position = np.arange(members.shape[0], dtype=np.int64) - bin_offsets[:-1][bin_of_sample]

    # members of every sub-sample, sub-samples in bin order
    first = source_index.first_member[rows] if rows.size else np.zeros(0, np.int64)
    member_count = (source_index.first_member[rows + 1] - first) if rows.size else first
    member_of_sample = np.repeat(np.arange(rows.shape[0], dtype=np.int64), member_count)
    starts = np.concatenate([[0], np.cumsum(member_count)])[:-1]
    member = (
        np.repeat(first - starts, member_count) + np.arange(member_of_sample.shape[0])
        if member_of_sample.size
        else np.zeros(0, np.int64)
    )
    ext_lengths = np.array([len(ext) for ext in source_index.exts] or [0], dtype=np.int64)
    ext_length = ext_lengths[source_index.member_ext[member]] if member.size else member
    size = source_index.member_size[member] if member.size else member
    member_position = position[member_of_sample]
    member_bin = bin_of_sample[member_of_sample]
    # member name `bin-<key>.s<position>.<ext>`: a 512-byte header unless PAX needs more
    name_length = 4 + _digits(member_bin, minimum=9) + 3 + _digits(member_position) + ext_length
    header = np.full(member.shape[0], _BLOCK, dtype=np.int64)
    unusual = np.flatnonzero((name_length > 100) | (size >= 8**11))
    for at in unusual.tolist():
        name = (
            f"{bin_key(int(member_bin[at]))}.s{int(member_position[at])}."
            f"{source_index.exts[int(source_index.member_ext[member[at]])]}"
        )
        header[at] = len(_tar_header(name, int(size[at])))
    member_bytes = header + _padded(size)
    files_json = 2 * ext_length + _digits(member_position) + 7  # "ext":"s<p>.ext"
    sample_tar_bytes = _segment_sums(member_bytes, member_count)
    sample_files_json = _segment_sums(files_json, member_count) + np.maximum(member_count - 1, 0)

    # the bin's JSON (compact, sorted keys; see BinRecord and SampleRecord)
    source_names = np.array(
        [_json_length(path.name) for path in source_index.paths] or [0], dtype=np.int64
    )
    source_of_sample = source_index.source[rows] if rows.size else rows
    id_json = _json_lengths(ids)
    null = 4
    sample_json = (
        len('{"files":{},"id":"","patches":,"source":"","source_key":"","tokens":}')
        + sample_files_json
        + 2 * id_json
        + np.where(patches < 0, null, _digits(np.maximum(patches, 0)))
        + source_names[source_of_sample]
        + _digits(tokens)
    )
    bin_tokens = _segment_sums(tokens, counts)
    bin_json = (
        len('{"bin":,"patches":,"samples":[],"tokens":}')
        + _digits(np.arange(num_bins, dtype=np.int64))
        + (null if plan.patches is None else _digits(_segment_sums(np.maximum(patches, 0), counts)))
        + _segment_sums(sample_json, counts)
        + np.maximum(counts - 1, 0)
        + _digits(bin_tokens)
    )
    entry_bytes = _BLOCK + _padded(bin_json) + _segment_sums(sample_tar_bytes, counts)
    shard_first_bin = _shard_boundaries(entry_bytes, max_bins_per_shard, max_shard_bytes)
    places = np.zeros((num_bins, 3), dtype=np.int64)
    if num_bins:
        shard_of_bin = np.repeat(
            np.arange(len(shard_first_bin) - 1, dtype=np.int64), np.diff(shard_first_bin)
        )
        cumulative = np.concatenate([[0], np.cumsum(entry_bytes)])
        places[:, 0] = shard_of_bin
        places[:, 1] = cumulative[:-1] - cumulative[shard_first_bin[shard_of_bin]]
        places[:, 2] = entry_bytes
    return _Layout(
        bin_offsets=bin_offsets,
        entry_bytes=entry_bytes,
        shard_first_bin=shard_first_bin,
        places=places,
        sample_source_row=rows,
        ids=ids,
        tokens=tokens,
        patches=patches,
    )


def _check_ids_present(ids: pa.LargeStringArray, rows: np.ndarray, index: SourceIndex) -> None:
    missing = rows < 0
    if not missing.any():
        return
    missing_ids = pc.unique(ids.filter(pa.array(missing)))
    first = missing_ids.slice(0, 5).to_pylist()
    raise ShardError(
        f"{len(missing_ids)} packed sample id(s) are not keys of the {len(index.paths)} source "
        f"tar(s), first: {first}"
    )


def _digits(values: np.ndarray, minimum: int = 1) -> np.ndarray:
    """Decimal digits of non-negative integers (at least `minimum`)."""
    powers = 10 ** np.arange(1, 19, dtype=np.int64)
    return np.maximum(np.searchsorted(powers, values, side="right") + 1, minimum).astype(np.int64)


def _padded(sizes: np.ndarray) -> np.ndarray:
    return (sizes + _BLOCK - 1) // _BLOCK * _BLOCK


def _segment_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    ends = np.cumsum(counts, dtype=np.int64)
    return cumulative[ends] - cumulative[ends - counts]


def _json_length(text: str) -> int:
    return len(msgspec.json.encode(text)) - 2


def _json_lengths(strings: pa.LargeStringArray) -> np.ndarray:
    """Bytes of each string inside a JSON string literal as msgspec writes it: UTF-8, with `"`
    and `\\` escaped, \\b \\f \\n \\r \\t as two characters and other control characters as
    \\u00XX."""
    if len(strings) == 0:
        return np.zeros(0, np.int64)
    length = pc.binary_length(strings).to_numpy().astype(np.int64)
    length += pc.count_substring(strings, '"').to_numpy()
    length += pc.count_substring(strings, "\\").to_numpy()
    if pc.any(pc.match_substring_regex(strings, "[\\x00-\\x1f]")).as_py():
        length += pc.count_substring_regex(strings, "[\\x08\\x09\\x0a\\x0c\\x0d]").to_numpy()
        length += 5 * pc.count_substring_regex(strings, "[\\x00-\\x07\\x0b\\x0e-\\x1f]").to_numpy()
    return length


def _shard_boundaries(
    entry_bytes: np.ndarray, max_bins: int | None, max_bytes: int | None
) -> np.ndarray:
    """First bin of every shard, and the bin count at the end (int64)."""
    num_bins = entry_bytes.shape[0]
    if max_bytes is None:
        step = max_bins or max(num_bins, 1)
        return np.append(np.arange(0, num_bins, step, dtype=np.int64), num_bins)
    # the most member bytes a shard may hold: with the end blocks, padded to a 10 KiB record
    budget = max_bytes // _RECORD * _RECORD - 2 * _BLOCK
    cumulative = np.concatenate([[0], np.cumsum(entry_bytes)])
    firsts = [0]
    while firsts[-1] < num_bins:
        first = firsts[-1]
        stop = int(np.searchsorted(cumulative, cumulative[first] + budget, side="right")) - 1
        stop = max(stop, first + 1)
        if max_bins is not None:
            stop = min(stop, first + max_bins)
        firsts.append(min(stop, num_bins))
    return np.array(firsts, dtype=np.int64)


def _write_job_files(job: Path, layout: _Layout, source_index: SourceIndex, plan: PackPlan) -> str:
    """The columns the shard units read (memory-mapped Arrow files), and the job's digest."""
    job.mkdir(parents=True, exist_ok=True)
    rows = layout.sample_source_row
    first = source_index.first_member[rows] if rows.size else rows
    tables = {
        "samples.arrow": pa.table(
            {
                "id": layout.ids,
                "source": pa.array(source_index.source[rows] if rows.size else rows, pa.int32()),
                "first_member": pa.array(first, pa.int64()),
                "member_count": pa.array(
                    (source_index.first_member[rows + 1] - first) if rows.size else rows,
                    pa.int64(),
                ),
                "tokens": pa.array(layout.tokens, pa.int64()),
                "patches": pa.array(layout.patches, pa.int64()),
            }
        ),
        "members.arrow": pa.table(
            {
                "ext": pa.array(source_index.member_ext, pa.int32()),
                "offset": pa.array(source_index.member_offset, pa.int64()),
                "size": pa.array(source_index.member_size, pa.int64()),
            }
        ),
        "bins.arrow": pa.table(
            {
                "entry_bytes": pa.array(layout.entry_bytes, pa.int64()),
                "bin_samples": pa.array(np.diff(layout.bin_offsets), pa.int64()),
            }
        ),
    }
    digest = hashlib.sha256(f"ov-pack-write {_FORMAT_VERSION}\n".encode())
    digest.update(msgspec.json.encode([str(path) for path in source_index.paths]))
    digest.update(msgspec.json.encode(list(source_index.exts)))
    digest.update(msgspec.json.encode(layout.shard_first_bin.tolist()))
    digest.update(b"patches" if plan.patches is not None else b"no patches")
    for name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
        digest.update(name.encode() + hashlib.sha256(data).digest())
        path = job / name
        if not path.exists() or path.stat().st_size != data.size or path.read_bytes() != data:
            _replace_atomically(path, data.to_pybytes())
    return digest.hexdigest()


def _gather_parts(out_dir: Path, layout: _Layout) -> tuple[list[ShardInfo], np.ndarray]:
    shards: list[ShardInfo] = []
    digests = []
    for number in range(len(layout.shard_first_bin) - 1):
        name = _shard_name(number)
        part = msgspec.msgpack.decode(
            (out_dir / WORK_DIR / "parts" / f"{name.removesuffix('.tar')}.part").read_bytes()
        )
        first, stop = int(layout.shard_first_bin[number]), int(layout.shard_first_bin[number + 1])
        shards.append(
            ShardInfo(
                name=name,
                first_bin=first,
                num_bins=stop - first,
                bytes=part["bytes"],
                sha256=part["sha256"],
            )
        )
        digests.append(np.frombuffer(part["bin_sha256"], np.uint8).reshape(-1, 32))
    return shards, (np.concatenate(digests) if digests else np.zeros((0, 32), np.uint8))


class _ShardTask:
    """Work unit task: write one shard (a range of bins) from the job files and the sources."""

    def __init__(self, out_dir: str, sources: list[str], exts: tuple[str, ...], has_patches: bool):
        self.out_dir = out_dir
        self.sources = sources
        self.exts = exts
        self.has_patches = has_patches
        self._columns: dict[str, np.ndarray | pa.Array] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_columns": None}

    def setup(self) -> None:
        job = Path(self.out_dir) / WORK_DIR / "job"
        columns: dict[str, np.ndarray | pa.Array] = {}
        for name in ("samples.arrow", "members.arrow", "bins.arrow"):
            table = pa.ipc.open_file(pa.memory_map(str(job / name))).read_all()
            for column in table.column_names:
                array = table.column(column).combine_chunks()
                columns[column] = array if column == "id" else array.to_numpy()
        self._columns = columns

    def run(self, unit: WorkUnit, staging: Path) -> None:
        if self._columns is None:
            self.setup()
        columns = self._columns
        assert columns is not None
        _, first_bin, num_bins, first_sample, stop_sample = msgspec.msgpack.decode(unit.params)
        ids = columns["id"].slice(first_sample, stop_sample - first_sample).to_pylist()
        digests = bytearray()
        tar_path = staging / unit.outputs[0]
        with _SourceReader([Path(path) for path in self.sources]) as reader:
            writer = _ShardWriter(tar_path, first_bin)
            try:
                sample = first_sample
                for bin_number in range(first_bin, first_bin + num_bins):
                    stop = sample + int(columns["bin_samples"][bin_number])
                    entry = self._entry(bin_number, sample, stop, ids, first_sample, reader)
                    expected = int(columns["entry_bytes"][bin_number])
                    if len(entry) != expected:
                        raise RuntimeError(
                            f"bin {bin_number}: its entry is {len(entry)} bytes, the layout "
                            f"computed {expected}; this is a bug in ov_packing"
                        )
                    digests += hashlib.sha256(entry).digest()
                    writer.add_bin(entry)
                    sample = stop
                if sample != stop_sample:
                    raise RuntimeError(
                        f"{unit.key}: bins end at sub-sample {sample}, not {stop_sample}"
                    )
                info = writer.finish()
            except BaseException:
                writer.abort()
                raise
        part = {"bytes": info.bytes, "sha256": info.sha256, "bin_sha256": bytes(digests)}
        part_path = staging / unit.outputs[1]
        part_path.parent.mkdir(parents=True, exist_ok=True)
        part_path.write_bytes(msgspec.msgpack.encode(part))

    def _entry(
        self,
        bin_number: int,
        start: int,
        stop: int,
        ids: list[str],
        first_sample: int,
        reader: "_SourceReader",
    ) -> bytes:
        """The tar bytes (headers, data, padding) of bin `bin_number`'s webdataset sample."""
        columns = self._columns
        assert columns is not None
        key = bin_key(bin_number)
        records: list[SampleRecord] = []
        files: list[tuple[str, bytes]] = []
        for position, sample in enumerate(range(start, stop)):
            sample_id = ids[sample - first_sample]
            source = int(columns["source"][sample])
            first = int(columns["first_member"][sample])
            renamed: dict[str, str] = {}
            for member in range(first, first + int(columns["member_count"][sample])):
                ext = self.exts[int(columns["ext"][member])]
                renamed[ext] = f"s{position}.{ext}"
                data = reader.read(
                    source, int(columns["offset"][member]), int(columns["size"][member])
                )
                files.append((f"{key}.{renamed[ext]}", data))
            patches = int(columns["patches"][sample])
            records.append(
                SampleRecord(
                    id=sample_id,
                    source=Path(self.sources[source]).name,
                    source_key=sample_id,
                    tokens=int(columns["tokens"][sample]),
                    patches=patches if self.has_patches else None,
                    files=renamed,
                )
            )
        bin_record = BinRecord(
            bin=bin_number,
            tokens=sum(record.tokens for record in records),
            patches=sum(record.patches or 0 for record in records) if self.has_patches else None,
            samples=records,
        )
        entry = io.BytesIO()
        for name, data in [
            (f"{key}.json", msgspec.json.encode(bin_record, order="sorted")),
            *files,
        ]:
            entry.write(_tar_header(name, len(data)))
            entry.write(data)
            entry.write(b"\0" * (-len(data) % _BLOCK))
        return entry.getvalue()


def _tarfile_header(name: str, size: int) -> bytes:
    """The member header tarfile writes (PAX format, mtime 0, uid/gid 0, mode 0o644)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


_HEADER_TEMPLATE = bytearray(_tarfile_header("", 0))
_ASCII_NAME = re.compile(r"[\x01-\x7f]{1,100}")


def _tar_header(name: str, size: int) -> bytes:
    """`_tarfile_header(name, size)`, byte for byte, ten times faster in the usual case (an
    ASCII name of at most 100 characters, a size below 8 GiB: one 512-byte ustar block, no PAX
    record): tarfile's own header for the empty name, with the name, size and checksum set."""
    if size >= 8**11 or not _ASCII_NAME.fullmatch(name):
        return _tarfile_header(name, size)
    header = bytearray(_HEADER_TEMPLATE)
    header[0 : len(name)] = name.encode("ascii")
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _tar_file_size(content_bytes: int) -> int:
    """Size of a tar file holding `content_bytes` of members: end marker, padded to a record."""
    end = content_bytes + 2 * _BLOCK
    return end + (-end % _RECORD)


class _ShardWriter:
    """Writes one shard tar to `<name>.tmp`, hashing as it goes; `finish` renames it into place."""

    def __init__(self, path: Path, first_bin: int) -> None:
        self.path = path
        self.temporary = path.with_name(path.name + ".tmp")
        self.first_bin = first_bin
        self.num_bins = 0
        self.content_bytes = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO = open(self.temporary, "wb")  # noqa: SIM115 - closed in finish/abort

    def add_bin(self, entry: bytes) -> None:
        self._write(entry)
        self.content_bytes += len(entry)
        self.num_bins += 1

    def finish(self) -> ShardInfo:
        size = _tar_file_size(self.content_bytes)
        self._write(b"\0" * (size - self.content_bytes))
        self._file.close()
        self.temporary.replace(self.path)
        return ShardInfo(
            name=self.path.name,
            first_bin=self.first_bin,
            num_bins=self.num_bins,
            bytes=size,
            sha256=self._hash.hexdigest(),
        )

    def abort(self) -> None:
        self._file.close()
        self.temporary.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)


class _SourceReader:
    """Reads byte ranges of source tars, keeping the most recently used few open."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = paths
        self._open: OrderedDict[int, BinaryIO] = OrderedDict()

    def __enter__(self) -> "_SourceReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def read(self, source: int, offset: int, size: int) -> bytes:
        file = self._open.get(source)
        if file is None:
            if len(self._open) >= _MAX_OPEN_SOURCES:
                self._open.popitem(last=False)[1].close()
            file = self._open[source] = open(self._paths[source], "rb")  # noqa: SIM115
        self._open.move_to_end(source)
        file.seek(offset)
        data = file.read(size)
        if len(data) != size:
            raise ShardError(
                f"{self._paths[source]}: truncated: {size} bytes expected at offset {offset}, "
                f"got {len(data)} (did the tar change after it was indexed?)"
            )
        return data


def _replace_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def _check_index(index: ShardIndex, path: Path) -> None:
    next_bin = 0
    for shard in index.shards:
        if not _SHARD_NAME.fullmatch(shard.name):
            raise ShardError(f"{path}: shard name {shard.name!r} is not shard-NNNNNN.tar")
        if shard.first_bin != next_bin or shard.num_bins <= 0:
            raise ShardError(
                f"{path}: shard {shard.name} holds bins from {shard.first_bin} "
                f"({shard.num_bins} bins), expected a positive count from bin {next_bin}"
            )
        next_bin += shard.num_bins
    if next_bin != index.num_bins:
        raise ShardError(f"{path}: shards hold {next_bin} bins, num_bins is {index.num_bins}")


def _read_shard_by_table(path: Path, shard: ShardInfo, table: ShardTable) -> Iterator[PackedBin]:
    """The bins of one shard read by their table ranges, each checked against its SHA-256
    before it is yielded, and the whole shard's SHA-256 checked at its end."""
    assert table.sha256 is not None
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        position = 0
        for number in range(shard.first_bin, shard.first_bin + shard.num_bins):
            offset, length = int(table.offset[number]), int(table.length[number])
            if offset != position:  # load_table checks this; a table changed since is refused
                raise ShardError(f"{path}: bin {number} starts at byte {offset}, not {position}")
            data = file.read(length)
            if len(data) != length:
                raise ShardError(
                    f"{path}: truncated: bin {number} needs {length} bytes at {offset}"
                )
            digest.update(data)
            check_bin_digest(path, number, offset, data, table.sha256[number])
            yield parse_bin(path, number, data)
            position += length
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    _check_shard_digest(path, shard, digest.hexdigest())


def _check_shard_digest(path: Path, shard: ShardInfo, sha256: str) -> None:
    if sha256 != shard.sha256:
        raise ShardError(
            f"{path}: SHA-256 {sha256[:16]}... differs from {INDEX_NAME}'s {shard.sha256[:16]}...; "
            "the shard is corrupt"
        )


def _read_shard(path: Path, shard: ShardInfo) -> Iterator[PackedBin]:
    """A shard without per-bin hashes (an older table, or none): its SHA-256 is checked first."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    _check_shard_digest(path, shard, digest.hexdigest())
    yield from _read_shard_members(path, shard)


def _read_shard_members(path: Path, shard: ShardInfo) -> Iterator[PackedBin]:
    def members_by_bin(tar: tarfile.TarFile) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        key, first_member, files = None, "", {}
        for member in tar_members(tar, path):
            name = member.name
            reason = unsafe_name_reason(name)
            if reason is not None or "/" in name:
                raise ShardError(f"{path}: member {name!r} {reason or 'contains a directory'}")
            if not member.isreg():
                raise ShardError(f"{path}: member {name!r} is not a regular file")
            member_key = name.split(".", 1)[0]
            if member_key != key:
                if key is not None:
                    yield key, first_member, files
                key, first_member, files = member_key, name, {}
            if name in files:
                raise ShardError(f"{path}: member {name!r} appears twice")
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular member always has a file object
            files[name] = extracted.read()
        if key is not None:
            yield key, first_member, files

    with open_tar(path) as tar:
        count = 0
        for key, first_member, files in members_by_bin(tar):
            number = shard.first_bin + count
            if count == shard.num_bins:
                raise ShardError(
                    f"{path}: member {first_member!r} follows the shard's last bin "
                    f"({shard.num_bins} bins in {INDEX_NAME})"
                )
            if key != bin_key(number):
                raise ShardError(
                    f"{path}: member {first_member!r} does not belong to the expected "
                    f"{bin_key(number)}"
                )
            yield assemble_bin(path, number, files)
            count += 1
        if count != shard.num_bins:
            raise ShardError(f"{path}: holds {count} bins, {INDEX_NAME} says {shard.num_bins}")


def decode_bin_record(data: bytes, path: Path, name: str) -> BinRecord:
    """Parse the JSON member `name` of shard `path`; ShardError naming both if malformed."""
    try:
        return msgspec.json.decode(data, type=BinRecord)
    except msgspec.DecodeError as error:
        raise ShardError(f"{path}: member {name!r} is malformed: {error}") from error


def assemble_bin(path: Path, number: int, files: dict[str, bytes]) -> PackedBin:
    """The PackedBin of bin `number` from its members' bytes by name (consumed). Every file the
    bin's JSON lists must be there and nothing else; ShardError naming the shard otherwise."""
    key = bin_key(number)
    json_name = f"{key}.json"
    if json_name not in files:
        raise ShardError(f"{path}: bin {key} has no member {json_name!r}")
    record = decode_bin_record(files.pop(json_name), path, json_name)
    if record.bin != number:
        raise ShardError(f"{path}: member {json_name!r} describes bin {record.bin}, not {number}")
    samples = []
    for sample in record.samples:
        sample_files = {}
        for ext, renamed in sample.files.items():
            name = f"{key}.{renamed}"
            if name not in files:
                raise ShardError(
                    f"{path}: member {name!r} listed in {json_name!r} (sample {sample.id!r}) is "
                    "missing"
                )
            sample_files[ext] = files.pop(name)
        samples.append(
            PackedSample(
                id=sample.id,
                source=sample.source,
                source_key=sample.source_key,
                tokens=sample.tokens,
                patches=sample.patches,
                files=sample_files,
            )
        )
    if files:
        raise ShardError(f"{path}: member {next(iter(files))!r} is not listed in {json_name!r}")
    return PackedBin(index=number, tokens=record.tokens, patches=record.patches, samples=samples)
