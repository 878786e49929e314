"""Index webdataset source tars so any sample can be read later with one seek.

A webdataset tar is a plain (uncompressed) tar whose member `a/b/0001.seg.png` belongs to the sample
with key `a/b/0001` under the extension `seg.png`: the key is the member path up to the first '.'
of its basename, directory part included. A sample is every member sharing a key, stored next to
each other. `scan_sources` reads only the tar headers (tarfile seeks past the data) and records, for
every key, its tar and each member's `(ext, data offset, size)`; the packed-shard writer then reads
a sample's bytes straight from the source with `seek` + `read`, in whatever order the plan wants,
without extracting anything.

The scan follows webdataset's reader where it is lenient (members whose names have no `<key>.<ext>`
form and `__meta__` members are skipped, directories are ignored) and is strict where webdataset
would silently produce wrong or unsafe samples: a key in two tars or in two separate runs of one
tar, an extension repeated within a sample (webdataset compares extensions lower-cased), member
names that would escape a directory if extracted, links and devices, extensions outside
`[A-Za-z0-9_.-]`. Each is a `ShardError` naming the tar and member.

Memory: the index is columnar, with no Python object per sample: the keys are one Arrow string
column, each sample's tar and first member are NumPy integers, and each member is an extension code,
a data offset and a size (about 40 bytes per sample of two members, plus the key's bytes). Each tar
is scanned on its own (`scan_tar`, a pure function of the tar, so tars can be scanned in parallel
as work units) and the parts are joined by `merge_tar_indexes`, which finds a key in two tars with
one vectorised hash lookup. The scan touches every header once (one seek per member) and keeps no
`TarInfo` beyond the current one. Compressed tars cannot be indexed (there is no offset to seek
to) and are refused; a tar that ends without its end-of-archive blocks (cut short at a header) is
refused as truncated.
"""

import glob
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ov_packing.errors import ShardError

# webdataset's `base_plus_ext` and `tar_file_iterator(skip_meta=...)`, kept identical on purpose.
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_WEBDATASET_META = re.compile(r"__[^/]*__($|/)")
_VALID_EXT = re.compile(r"[A-Za-z0-9_.-]+")
_GLOB_CHARS = re.compile(r"[*?\[]")


class SourceMember(NamedTuple):
    """One file of a source sample: its extension and where its bytes lie in the tar."""

    ext: str
    offset: int
    size: int


@dataclass(frozen=True, eq=False)
class TarIndex:
    """The samples of one tar, columnar: `keys[i]`'s members are `first_member[i]` up to
    `first_member[i + 1]` in the member arrays; `member_ext` indexes `exts`."""

    keys: pa.LargeStringArray
    first_member: np.ndarray
    """int64 (samples + 1,)."""
    member_ext: np.ndarray
    """int32 (members,): index into `exts`."""
    member_offset: np.ndarray
    """int64 (members,): where the member's data starts in the tar."""
    member_size: np.ndarray
    """int64 (members,)."""
    exts: tuple[str, ...]

    def to_bytes(self) -> bytes:
        """A deterministic serialisation (msgpack of the raw little-endian arrays)."""
        offsets, data = self.keys.buffers()[1:3]
        start, stop = self.keys.offset, self.keys.offset + len(self.keys)
        key_offsets = np.frombuffer(offsets, np.int64)[start : stop + 1] if offsets else None
        base = int(key_offsets[0]) if key_offsets is not None else 0
        end = int(key_offsets[-1]) if key_offsets is not None else 0
        return msgspec.msgpack.encode(
            {
                "version": 1,
                "key_offsets": (key_offsets - base).astype("<i8").tobytes()
                if key_offsets is not None
                else np.zeros(1, "<i8").tobytes(),
                "key_data": bytes(data)[base:end] if data is not None else b"",
                "first_member": self.first_member.astype("<i8").tobytes(),
                "member_ext": self.member_ext.astype("<i4").tobytes(),
                "member_offset": self.member_offset.astype("<i8").tobytes(),
                "member_size": self.member_size.astype("<i8").tobytes(),
                "exts": list(self.exts),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "TarIndex":
        raw = msgspec.msgpack.decode(data)
        key_offsets = np.frombuffer(raw["key_offsets"], "<i8")
        keys = pa.LargeStringArray.from_buffers(
            len(key_offsets) - 1, pa.py_buffer(raw["key_offsets"]), pa.py_buffer(raw["key_data"])
        )
        return cls(
            keys=keys,
            first_member=np.frombuffer(raw["first_member"], "<i8"),
            member_ext=np.frombuffer(raw["member_ext"], "<i4"),
            member_offset=np.frombuffer(raw["member_offset"], "<i8"),
            member_size=np.frombuffer(raw["member_size"], "<i8"),
            exts=tuple(raw["exts"]),
        )


@dataclass(frozen=True, eq=False)
class SourceIndex:
    """Every sample of a set of webdataset tars, columnar (see `TarIndex`); `source[i]` is the
    position in `paths` of sample `i`'s tar. Samples are in tar order, tars in `paths` order."""

    paths: list[Path]
    keys: pa.LargeStringArray
    source: np.ndarray
    """int32 (samples,)."""
    first_member: np.ndarray
    """int64 (samples + 1,)."""
    member_ext: np.ndarray
    """int32 (members,): index into `exts`."""
    member_offset: np.ndarray
    member_size: np.ndarray
    exts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def rows_of(self, ids: pa.Array) -> np.ndarray:
        """The row of each id in `ids` (int64), -1 where an id is not a source key."""
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        rows = pc.index_in(ids, value_set=self.keys)
        return rows.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def members(self, row: int) -> list[SourceMember]:
        """The members of sample `row`, in tar order."""
        start, stop = int(self.first_member[row]), int(self.first_member[row + 1])
        return [
            SourceMember(self.exts[int(ext)], int(offset), int(size))
            for ext, offset, size in zip(
                self.member_ext[start:stop],
                self.member_offset[start:stop],
                self.member_size[start:stop],
                strict=True,
            )
        ]


def resolve_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Expand `sources` into tar paths, in the order given.

    Each entry is a tar file, a directory (its `*.tar` files, sorted) or a glob pattern (its
    matches, sorted). Duplicates are dropped. ShardError if a file is missing or nothing matched.
    """
    if isinstance(sources, str | Path):
        raise TypeError("sources must be a sequence of paths, not a single path")
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths.extend(sorted(path.glob("*.tar")))
        elif path.is_file():
            paths.append(path)
        elif _GLOB_CHARS.search(str(source)):
            paths.extend(Path(match) for match in sorted(glob.glob(str(source))))
        else:
            raise ShardError(f"source tar not found: {path}")
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    if not unique:
        raise ShardError(f"no source tars matched {[str(source) for source in sources]}")
    return unique


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name would escape the directory it is extracted into, or None if it is safe."""
    if name.startswith("/"):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    if ".." in PurePosixPath(name).parts:
        return "contains a '..' segment"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def open_tar(path: Path) -> tarfile.TarFile:
    """Open an uncompressed tar for random access; ShardError if missing or not such a tar."""
    try:
        return tarfile.open(path, mode="r:", encoding="utf-8")
    except FileNotFoundError:
        raise ShardError(f"tar file not found: {path}") from None
    except tarfile.TarError as error:
        raise ShardError(
            f"{path}: not an uncompressed tar file ({error}); compressed tars cannot be indexed"
        ) from error


def tar_members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """The members of `tar` in order; ShardError naming `path` if it is truncated or corrupt."""
    try:
        yield from tar
    except tarfile.TarError as error:
        raise ShardError(
            f"{path}: unreadable tar ({error}); is it truncated or corrupt?"
        ) from error


def scan_sources(paths: Sequence[Path]) -> SourceIndex:
    """Index the samples of the tars at `paths` (see the module docstring for what is refused)."""
    return merge_tar_indexes(list(paths), [scan_tar(path) for path in paths])


def merge_tar_indexes(paths: list[Path], parts: Sequence[TarIndex]) -> SourceIndex:
    """Join the indexes of the tars at `paths` (in order); ShardError naming both tars and members
    when a key is in two of them."""
    exts: dict[str, int] = {}
    member_exts = []
    for part in parts:
        codes = np.array([exts.setdefault(ext, len(exts)) for ext in part.exts], dtype=np.int32)
        member_exts.append(codes[part.member_ext] if len(part.member_ext) else part.member_ext)
    counts = [len(part.keys) for part in parts]
    member_counts = np.array([len(part.member_offset) for part in parts], dtype=np.int64)
    member_base = np.concatenate([[0], np.cumsum(member_counts)])
    first_member = np.concatenate(
        [part.first_member[:-1] + base for part, base in zip(parts, member_base, strict=False)]
        + [np.array([member_base[-1]], dtype=np.int64)]
    ).astype(np.int64)
    keys = (
        pa.concat_arrays([part.keys for part in parts])
        if parts
        else pa.array([], pa.large_string())
    )
    index = SourceIndex(
        paths=list(paths),
        keys=keys,
        source=np.repeat(np.arange(len(parts), dtype=np.int32), counts),
        first_member=first_member,
        member_ext=np.concatenate([np.zeros(0, np.int32), *member_exts]).astype(np.int32),
        member_offset=np.concatenate(
            [np.zeros(0, np.int64), *(part.member_offset for part in parts)]
        ),
        member_size=np.concatenate([np.zeros(0, np.int64), *(part.member_size for part in parts)]),
        exts=tuple(exts),
    )
    _check_unique_keys(index)
    return index


def _check_unique_keys(index: SourceIndex) -> None:
    from ov_packing.sample_ids import find_duplicate  # 64-bit hashes, sorted: 9 B per key

    found = find_duplicate(index.keys)
    if found is None:
        return
    earlier, second = found
    key = index.keys[second].as_py()
    first_name = f"{key}.{index.members(earlier)[0].ext}"
    name = f"{key}.{index.members(second)[0].ext}"
    raise ShardError(
        f"key {key!r} is in two source tars: {index.paths[int(index.source[earlier])]} "
        f"(member {first_name!r}) and {index.paths[int(index.source[second])]} (member {name!r})"
    )


def scan_tar(path: Path) -> TarIndex:
    """Index one source tar (see the module docstring for what is refused)."""
    keys: list[str] = []
    first_member: list[int] = [0]
    member_ext: list[int] = []
    member_offset: list[int] = []
    member_size: list[int] = []
    exts: dict[str, int] = {}
    seen: dict[str, str] = {}  # key -> its first member's name, this tar only
    with open_tar(path) as tar:
        current_key: str | None = None
        current_exts: list[str] = []
        for member in _each_member(tar, path):
            name = member.name
            reason = unsafe_name_reason(name)
            if reason is not None:
                raise ShardError(f"{path}: member {name!r} {reason}; refusing an unsafe source")
            if member.isdir():
                continue
            if not member.isreg() or member.issparse():
                raise ShardError(
                    f"{path}: member {name!r} is a {_kind(member)}, not a regular file; "
                    "source tars must hold regular files only"
                )
            if _WEBDATASET_META.match(name):
                continue
            match = _KEY_AND_EXT.match(name)
            if match is None:
                continue  # webdataset skips names without a `<key>.<ext>` form too
            key, ext = match.group(1), match.group(2)
            if not _VALID_EXT.fullmatch(ext):
                raise ShardError(
                    f"{path}: member {name!r} has extension {ext!r}; extensions may only use "
                    "[A-Za-z0-9_.-]"
                )
            if key != current_key:
                if current_key is not None:
                    first_member.append(len(member_offset))
                if key in seen:
                    raise ShardError(
                        f"{path}: key {key!r} appears twice (member {seen[key]!r} and, not next "
                        f"to it, member {name!r}); a sample's members must be adjacent and its "
                        "key unique"
                    )
                seen[key] = name
                keys.append(key)
                current_key, current_exts = key, []
            elif any(seen_ext.lower() == ext.lower() for seen_ext in current_exts):
                raise ShardError(
                    f"{path}: sample {key!r} has extension {ext!r} twice (member {name!r}); "
                    "webdataset compares extensions lower-cased"
                )
            current_exts.append(ext)
            member_ext.append(exts.setdefault(ext, len(exts)))
            member_offset.append(member.offset_data)
            member_size.append(member.size)
        if current_key is not None:
            first_member.append(len(member_offset))
    return TarIndex(
        keys=pa.array(keys, pa.large_string()),
        first_member=np.array(first_member, dtype=np.int64),
        member_ext=np.array(member_ext, dtype=np.int32),
        member_offset=np.array(member_offset, dtype=np.int64),
        member_size=np.array(member_size, dtype=np.int64),
        exts=tuple(exts),
    )


def _each_member(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """The members of `tar` in order, keeping none (tarfile's own iteration keeps every
    `TarInfo`); ShardError naming `path` if it is truncated or corrupt."""
    size = path.stat().st_size
    try:
        while (member := tar.next()) is not None:
            tar.members.clear()
            if member.isreg() and member.offset_data + member.size > size:
                raise ShardError(
                    f"{path}: truncated: member {member.name!r} needs {member.size} bytes at "
                    f"offset {member.offset_data}, the file has {size}"
                )
            yield member
    except tarfile.TarError as error:
        raise ShardError(
            f"{path}: unreadable tar ({error}); is it truncated or corrupt?"
        ) from error
    fileobj = tar.fileobj
    assert fileobj is not None
    fileobj.seek(tar.offset)
    end = fileobj.read(tarfile.BLOCKSIZE)
    if len(end) != tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
        raise ShardError(
            f"{path}: truncated: no end-of-archive block at byte {tar.offset} (the file ends "
            "there, or holds something that is not a tar header); is it cut short?"
        )


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
    return f"member of tar type {member.type!r}"
