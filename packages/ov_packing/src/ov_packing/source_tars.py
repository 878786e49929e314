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

Cost: the index keeps every source key in memory (a few hundred bytes per sample), and the scan
touches every header once (one seek per member). Compressed tars cannot be indexed (there is no
offset to seek to) and are refused.
"""

import glob
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

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


class SourceSample(NamedTuple):
    """A source sample: its tar (a position in `SourceIndex.paths`) and its files in tar order."""

    source: int
    members: tuple[SourceMember, ...]


class SourceIndex(NamedTuple):
    """Every sample of a set of webdataset tars, by key."""

    paths: list[Path]
    samples: dict[str, SourceSample]


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
    samples: dict[str, SourceSample] = {}
    for number, path in enumerate(paths):
        _scan_tar(path, number, paths, samples)
    return SourceIndex(paths=list(paths), samples=samples)


def _scan_tar(
    path: Path, number: int, paths: Sequence[Path], samples: dict[str, SourceSample]
) -> None:
    with open_tar(path) as tar:
        current_key: str | None = None
        current: list[SourceMember] = []
        for member in tar_members(tar, path):
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
                    samples[current_key] = SourceSample(number, tuple(current))
                _check_new_key(key, name, path, paths, samples)
                current_key, current = key, []
            elif any(seen.ext.lower() == ext.lower() for seen in current):
                raise ShardError(
                    f"{path}: sample {key!r} has extension {ext!r} twice (member {name!r}); "
                    "webdataset compares extensions lower-cased"
                )
            current.append(SourceMember(ext, member.offset_data, member.size))
        if current_key is not None:
            samples[current_key] = SourceSample(number, tuple(current))


def _check_new_key(
    key: str, name: str, path: Path, paths: Sequence[Path], samples: dict[str, SourceSample]
) -> None:
    previous = samples.get(key)
    if previous is None:
        return
    first = f"{key}.{previous.members[0].ext}"
    if paths[previous.source] == path:
        raise ShardError(
            f"{path}: key {key!r} appears twice (member {first!r} and, not next to it, member "
            f"{name!r}); a sample's members must be adjacent and its key unique"
        )
    raise ShardError(
        f"key {key!r} is in two source tars: {paths[previous.source]} (member {first!r}) and "
        f"{path} (member {name!r})"
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
