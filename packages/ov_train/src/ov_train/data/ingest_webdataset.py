"""Ingest webdataset tars: a sample is the run of members sharing a key.

webdataset's convention, followed exactly: member `dir/0001.img0.jpg` belongs to the sample with
key `dir/0001` (the path up to the first '.' of the base name) under the extension `img0.jpg`;
members whose names have no such form, `__...__` members, directories and links are skipped, as
webdataset's own reader skips them. Tars may be compressed (`.tar.gz`): they are read as a stream,
never seeked.

What a sample holds:
- images: every member whose last extension is an image type (`IMAGE_EXTENSIONS`: `jpg`,
  `0.png`, `img1.webp`, ...), ordered by extension in natural order (`img2` before `img10`), so
  the order does not depend on how the writer ordered the members;
- text: a `json` member holding `{"conversations": [...]}` (LLaVA turns) or `{"caption": str}`,
  or else a `txt` member holding a caption (see `conversations.caption_conversation`).
The id is the key, the source reference `tar:key`.

Problems: a sample without usable text, undecodable JSON or an extension twice is a
`malformed_row`. A tar that breaks part-way (truncated, corrupt gzip, a garbled header) or ends
without its end-of-archive blocks (cut exactly between two members, which Python's `tarfile`
alone takes for a normal end) is a `SourceFileError` naming the tar, the byte of the tar stream
and the sample it broke in: the job stops, as the samples after the damage would be missing. A
member whose name is absolute or has a `..` component is an `UnsafePathError` naming the tar and
the member (ov_packing refuses such members too).

A job's slices (`input_slices`) are whole tars: a webdataset is usually many tars of a few
thousand samples each, read as a stream (never seeked).
"""

import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ov_train.data.conversations import RowError, caption_conversation, parse_conversation
from ov_train.data.errors import SourceFileError, UnsafePathError
from ov_train.data.input_paths import expand_input
from ov_train.data.input_slices import Slice
from ov_train.data.raw_sample import BadSample, IngestResult, RawSample, Reason

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# webdataset's `base_plus_ext` and meta-member rule.
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class WebDatasetSource:
    """Webdataset tars: a tar file, a directory of them, or a glob pattern."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def files(self) -> list[Path]:
        """The tars to read, in order; InputConfigError if there are none."""
        return expand_input(self.path, TAR_SUFFIXES, "webdataset tar")

    def check(self) -> None:
        """InputConfigError if the path names no tar."""
        self.files()

    def iter_samples(
        self, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """Every sample of every tar, in order, as a RawSample or a BadSample."""
        for piece in self.slices(unit_rows=1):
            yield from self.read_slice(piece, caption_prompt=caption_prompt)

    def slices(self, *, unit_rows: int) -> Iterator[Slice]:
        """One slice per tar (whatever `unit_rows`)."""
        del unit_rows
        for path in self.files():
            yield Slice(path, 0, path.stat().st_size, 0)

    def read_slice(
        self, piece: Slice, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """The samples of one tar, in order (member names are never used as paths, so
        `allow_absolute_paths` does not apply)."""
        del allow_absolute_paths
        yield from _tar_samples(piece.path, caption_prompt)


class _EndAwareTarInfo(tarfile.TarInfo):
    """A TarInfo that notes on its TarFile when the archive's all-zero end block was read.

    `tarfile` ends its iteration silently on an end block, on no data at all and on a garbled
    header alike; only the first is the end of a complete archive."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            tarfile_.ov_end_block_seen = True  # type: ignore[attr-defined]
            raise


def _tar_samples(path: Path, caption_prompt: str) -> Iterator[IngestResult]:
    name = str(path)
    key: str | None = None
    files: dict[str, bytes] = {}
    problem: str | None = None
    position = 0
    member: Any = None
    try:
        with tarfile.open(path, mode="r|*", tarinfo=_EndAwareTarInfo) as tar:
            while True:
                position = tar.offset
                member = tar.next()
                if member is None:
                    break
                _check_member_name(name, member)
                if not member.isreg() or _META.match(member.name):
                    continue
                match = _KEY_AND_EXT.match(member.name)
                if match is None:
                    continue
                member_key, ext = match.group(1), match.group(2)
                if member_key != key:
                    if key is not None:
                        yield _sample(name, key, files, problem, caption_prompt)
                    key, files, problem = member_key, {}, None
                position = member.offset_data
                extracted = tar.extractfile(member)
                assert extracted is not None  # regular members always have data
                if ext.lower() in files and problem is None:
                    problem = f"extension {ext!r} appears twice (member {member.name!r})"
                files[ext.lower()] = extracted.read()
            if not getattr(tar, "ov_end_block_seen", False):
                raise SourceFileError(
                    f"{name}: the tar stream ends at byte {tar.offset} without its end-of-archive "
                    f"blocks{_after(key)}: the file is truncated or corrupt there"
                )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise SourceFileError(
            f"{name}: tar is truncated or corrupt at byte {position} of the tar stream"
            f"{_in(key, member)}: {error}"
        ) from None
    if key is not None:
        yield _sample(name, key, files, problem, caption_prompt)


def _check_member_name(tar_name: str, member: tarfile.TarInfo) -> None:
    absolute = member.name.startswith("/")
    if absolute or ".." in PurePosixPath(member.name).parts:
        what = "an absolute name" if absolute else "a '..' component"
        raise UnsafePathError(
            f"{tar_name}: member {member.name!r} (header at byte {member.offset}) has {what}: a "
            "webdataset member name must stay inside the folder it would be extracted to"
        )


def _after(key: str | None) -> str:
    return "" if key is None else f" (last sample read: {key!r})"


def _in(key: str | None, member: tarfile.TarInfo | None) -> str:
    if member is None:
        return ""
    return f" (member {member.name!r} of sample {key!r})" if key else f" (member {member.name!r})"


def _sample(
    tar_name: str, key: str, files: dict[str, bytes], problem: str | None, caption_prompt: str
) -> IngestResult:
    source = f"{tar_name}:{key}"
    if problem is not None:
        return BadSample(key, source, Reason.MALFORMED_ROW, problem)
    try:
        conversation = _conversation(files, caption_prompt)
    except RowError as error:
        return BadSample(key, source, Reason.MALFORMED_ROW, str(error))
    image_exts = sorted(
        (ext for ext in files if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), key=_natural
    )
    return RawSample(key, conversation, tuple(files[ext] for ext in image_exts), source)


def _conversation(files: dict[str, bytes], caption_prompt: str) -> tuple[dict[str, str], ...]:
    if "json" in files:
        try:
            record = msgspec.json.decode(files["json"])
        except msgspec.DecodeError as error:
            raise RowError(f"json member is not valid JSON ({error})") from None
        if not isinstance(record, Mapping):
            raise RowError(f"json member holds a {type(record).__name__}, not an object")
        if "conversations" in record:
            return parse_conversation(record["conversations"])
        if "caption" in record:
            return caption_conversation(record["caption"], caption_prompt)
        if "txt" not in files:
            raise RowError('json member has neither "conversations" nor "caption"')
    if "txt" in files:
        return caption_conversation(files["txt"], caption_prompt)
    raise RowError(f"no json or txt member (extensions: {', '.join(sorted(files))})")


def _natural(text: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]
