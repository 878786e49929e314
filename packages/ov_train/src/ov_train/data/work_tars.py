"""Normalised source tars: the accepted samples as webdataset tars keyed for ov_packing's writer.

ov_packing's `write_shards` builds packed shards from webdataset tars whose keys are the plan's
sample ids. Whatever the raw format was, `prepare` writes each accepted sample once into such a
tar in its work folder: `<key>.json` (a `SampleRecord`) then `<key>.img0.<ext>`, ...

Why keys are not the raw ids: a webdataset key ends at the first '.' of the member's base name
and may not hold some characters, while raw ids are free text (`000123.jpg`, `a/b c`). The key is
`s<measuring unit, 6 digits>-<row in the unit, 6 digits>` (`sample_key`), unique and safe by
construction, and known inside the unit that measures the row (no unit needs to know how many
rows the units before it hold); the manifest and the record keep the raw id. A sample drawn k
times by a selection gets k - 1 extra copies keyed `<key>_r1`, `<key>_r2`, ... (`write_copies`),
because every packed item needs its own key.

Tars are written deterministically (mtime 0, uid/gid 0, no user names, mode 0o644, PAX format):
one per measuring unit (`open_work_tar`, `add_sample`), and the copies' tars split every
`samples_per_tar` samples (`WorkTarWriter`), so a re-run writes the same bytes.
"""

import io
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ov_train.data.sample_record import RECORD_EXT

SAMPLES_PER_TAR = 10_000


def sample_key(unit: int, row: int) -> str:
    """The work-tar key of row `row` (0-based) of measuring unit `unit`."""
    return f"s{unit:06d}-{row:06d}"


def copy_key(key: str, copy: int) -> str:
    """The key of extra copy `copy` (>= 1) of the sample keyed `key`."""
    return f"{key}_r{copy}"


class WorkTarWriter:
    """Writes samples into `<folder>/<prefix>-NNNNNN.tar`, `samples_per_tar` per file."""

    def __init__(
        self, folder: Path, *, prefix: str = "source", samples_per_tar: int = SAMPLES_PER_TAR
    ) -> None:
        if samples_per_tar < 1:
            raise ValueError(f"samples_per_tar must be positive, got {samples_per_tar}")
        self.folder = folder
        self.prefix = prefix
        self.samples_per_tar = samples_per_tar
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Append one sample: `files` are (extension, bytes) in the order to write them."""
        if self._tar is None or self._count == self.samples_per_tar:
            self._open_next()
        assert self._tar is not None
        add_sample(self._tar, key, files)
        self._count += 1

    def close(self) -> None:
        """Finish the current tar."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "WorkTarWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open_next(self) -> None:
        self.close()
        path = self.folder / f"{self.prefix}-{len(self.paths):06d}.tar"
        self.paths.append(path)
        self._tar = open_work_tar(path)
        self._count = 0


def open_work_tar(path: Path) -> tarfile.TarFile:
    """A new work tar at `path`, for `add_sample` (close it, or use it in a `with`)."""
    return tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8")


def add_sample(tar: tarfile.TarFile, key: str, files: Sequence[tuple[str, bytes]]) -> None:
    """Append one sample, deterministically: `files` are (extension, bytes) in order."""
    for ext, data in files:
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))


def write_copies(sources: Sequence[Path], copies: Mapping[str, int], writer: WorkTarWriter) -> None:
    """For every key of `sources` with `copies[key] = k > 1`, write copies 1 .. k-1 under
    `copy_key(key, c)` with the same files, in source order."""
    for path in sources:
        with tarfile.open(path, "r:", encoding="utf-8") as tar:
            key: str | None = None
            files: list[tuple[str, bytes]] = []
            for member in tar:
                member_key, ext = member.name.split(".", 1)
                if member_key != key:
                    _flush_copies(key, files, copies, writer)
                    key, files = member_key, []
                if copies.get(member_key, 1) > 1:
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    files.append((ext, extracted.read()))
            _flush_copies(key, files, copies, writer)


def _flush_copies(
    key: str | None,
    files: list[tuple[str, bytes]],
    copies: Mapping[str, int],
    writer: WorkTarWriter,
) -> None:
    if key is None or not files:
        return
    for copy in range(1, copies[key]):
        writer.add(copy_key(key, copy), files)


def record_files(record: bytes, images: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The (extension, bytes) list of one sample: its record, then its images."""
    return [(RECORD_EXT, record), *images]
