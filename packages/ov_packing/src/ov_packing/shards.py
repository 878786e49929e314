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

import contextlib
import hashlib
import io
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec
import numpy as np

from ov_packing.cli_conventions import progress_bar
from ov_packing.errors import ShardError
from ov_packing.plan import PackPlan
from ov_packing.shard_table import (
    BINS_NAME,
    SAMPLES_NAME,
    TableInfo,
    check_sample_columns,
    write_table,
)
from ov_packing.source_tars import (
    SourceIndex,
    open_tar,
    resolve_sources,
    scan_sources,
    tar_members,
    unsafe_name_reason,
)

INDEX_FORMAT = "ov-packing-shards"
INDEX_VERSION = 2
_READABLE_VERSIONS = (1, 2)
INDEX_NAME = "index.json"
_SHARD_NAME = re.compile(r"shard-[0-9]{6,}\.tar")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_MAX_OPEN_SOURCES = 64


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
) -> ShardIndex:
    """Write the bins of `plan` as packed webdataset shards into the empty `out_dir`, with their
    bin table (`bins.npy`, `samples.npy`; see `shard_table.py`).

    `sources` are webdataset tars (files, directories of `*.tar`, or glob patterns) whose sample
    keys are the plan's ids. `sample_columns` are named integer columns, one value per plan
    sample, that the table keeps per sub-sample and sums per bin. Returns the index also written
    to `out_dir/index.json`. ShardError on a non-empty `out_dir`, unusable sources or plan ids
    missing from them, ValueError on a malformed column, before anything is written.
    """
    if max_bins_per_shard is not None and max_bins_per_shard <= 0:
        raise ValueError(f"max_bins_per_shard must be positive or None, got {max_bins_per_shard}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive or None, got {max_shard_bytes}")
    columns = check_sample_columns(plan, sample_columns)
    out_dir = Path(out_dir)
    _check_empty_out_dir(out_dir)
    source_index = scan_sources(resolve_sources(sources))
    _check_plan_ids_present(plan, source_index)

    created_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        places = np.zeros((plan.num_bins, 3), dtype=np.int64)
        shards = _write_all_bins(
            plan,
            source_index,
            out_dir,
            written,
            max_bins_per_shard,
            max_shard_bytes,
            progress,
            places,
        )
        table, table_files = write_table(out_dir, plan, places, columns)
        written.extend(table_files)
        index = ShardIndex(
            num_bins=plan.num_bins,
            num_samples=int(plan.bin_samples.shape[0]),
            shards=shards,
            table=table,
        )
        _replace_atomically(
            out_dir / INDEX_NAME, msgspec.json.format(msgspec.json.encode(index)) + b"\n"
        )
    except BaseException:
        temporaries = [out_dir / f"{name}.tmp" for name in (INDEX_NAME, BINS_NAME, SAMPLES_NAME)]
        for path in [*written, *temporaries]:
            path.unlink(missing_ok=True)
        if created_dir:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return index


def iter_bins(out_dir: str | Path) -> Iterator[PackedBin]:
    """Yield every bin of the packed directory `out_dir` in order, checking it on the way.

    ShardError (naming the shard and member) on a missing or resized shard, an unsafe or unexpected
    member name, or a bin whose files differ from what its JSON lists.
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
    for shard in index.shards:
        yield from _read_shard(out_dir / shard.name, shard)


def bin_key(index: int) -> str:
    """The webdataset key of bin `index` in packed shards (`bin-000000042`)."""
    return f"bin-{index:09d}"


def _check_empty_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ShardError(f"{out_dir}: output path exists and is not a directory")
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if entries:
        what = "a finished packed directory" if INDEX_NAME in entries else "not empty"
        raise ShardError(
            f"{out_dir}: output directory is {what} (holds {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); write packed shards into an empty directory"
        )


def _check_plan_ids_present(plan: PackPlan, source_index: SourceIndex) -> None:
    missing: list[str] = []
    count = 0
    for sample in dict.fromkeys(plan.bin_samples.tolist()):
        sample_id = plan.sample_id(sample)
        if sample_id not in source_index.samples:
            count += 1
            if len(missing) < 5:
                missing.append(sample_id)
    if count:
        raise ShardError(
            f"{count} packed sample id(s) are not keys of the {len(source_index.paths)} source "
            f"tar(s), first: {missing}"
        )


def _write_all_bins(
    plan: PackPlan,
    source_index: SourceIndex,
    out_dir: Path,
    written: list[Path],
    max_bins_per_shard: int | None,
    max_shard_bytes: int | None,
    progress: bool,
    places: np.ndarray,
) -> list[ShardInfo]:
    """Write every bin; `places[bin]` receives its shard number, byte offset and length."""
    shards: list[ShardInfo] = []
    shard: _ShardWriter | None = None
    with (
        _SourceReader(source_index.paths) as reader,
        progress_bar(
            total=plan.num_bins, unit="bin", enabled=progress, desc="writing shards"
        ) as bar,
    ):
        try:
            for number in range(plan.num_bins):
                entry = _bin_entry(plan, number, source_index, reader)
                if shard is not None and (
                    shard.num_bins == max_bins_per_shard
                    or (
                        max_shard_bytes is not None
                        and _tar_file_size(shard.content_bytes + len(entry)) > max_shard_bytes
                    )
                ):
                    shards.append(shard.finish())
                    shard = None
                if shard is None:
                    name = f"shard-{len(shards):06d}.tar"
                    written.append(out_dir / name)
                    shard = _ShardWriter(out_dir / name, first_bin=number)
                places[number] = (len(shards), shard.content_bytes, len(entry))
                shard.add_bin(entry)
                bar.update()
            if shard is not None:
                shards.append(shard.finish())
                shard = None
        finally:
            if shard is not None:
                shard.abort()
    return shards


def _bin_entry(
    plan: PackPlan, number: int, source_index: SourceIndex, reader: "_SourceReader"
) -> bytes:
    """The tar bytes (headers, data, padding) of bin `number`'s webdataset sample."""
    key = bin_key(number)
    records: list[SampleRecord] = []
    files: list[tuple[str, bytes]] = []
    for position, sample in enumerate(plan.bin(number).tolist()):
        sample_id = plan.sample_id(sample)
        source = source_index.samples[sample_id]
        renamed: dict[str, str] = {}
        for member in source.members:
            renamed[member.ext] = f"s{position}.{member.ext}"
            data = reader.read(source.source, member.offset, member.size)
            files.append((f"{key}.{renamed[member.ext]}", data))
        records.append(
            SampleRecord(
                id=sample_id,
                source=source_index.paths[source.source].name,
                source_key=sample_id,
                tokens=int(plan.tokens[sample]),
                patches=None if plan.patches is None else int(plan.patches[sample]),
                files=renamed,
            )
        )
    bin_record = BinRecord(
        bin=number,
        tokens=sum(record.tokens for record in records),
        patches=None if plan.patches is None else sum(record.patches or 0 for record in records),
        samples=records,
    )
    entry = io.BytesIO()
    for name, data in [(f"{key}.json", msgspec.json.encode(bin_record, order="sorted")), *files]:
        entry.write(_tar_header(name, len(data)))
        entry.write(data)
        entry.write(b"\0" * (-len(data) % _BLOCK))
    return entry.getvalue()


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


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


def _read_shard(path: Path, shard: ShardInfo) -> Iterator[PackedBin]:
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
