"""Ingest LLaVA-style annotation files: `[{"id", "image", "conversations"}, ...]` + image folder.

The format of LLaVA-1.5's 558K/665K sets and of most instruction sets since: one JSON list (or
JSONL, one object per line) of rows with

- `"conversations"`: the LLaVA turns (`conversations.parse_conversation`);
- `"image"`: a path relative to the image folder, a list of paths (multi-image), or absent for a
  text-only sample. A `null` list item is an image without content (`none_image`); so is a
  `null` value where the text has `<image>` placeholders (one per placeholder; without any it is
  a text-only sample). An absent key with `<image>` in the text is an image-count mismatch. A
  path must stay inside the image folder (`input_paths.image_path`: no `..`, no absolute path
  unless allowed; else `UnsafePathError`);
- `"id"`: optional; without it a row is called by its place, `file#index` (JSON) or `file:line`
  (JSONL, 1-based like an editor).

Reading: a JSONL file is streamed, line by line, never read whole; its slices (`input_slices`)
are runs of `unit_rows` lines found by counting newlines in blocks. A JSON list is one value,
so planning decodes it once (msgspec, skipping the elements' contents: about 0.1 s per 50 MB,
the file's bytes in memory meanwhile) to find where each run of `unit_rows` elements starts and
ends; a slice then reads and decodes only its own bytes.

A file that is not JSON (a JSON list cut short, a JSONL line that does not parse, including a
last line cut off) is a `SourceFileError` naming the file and the line or byte: the job stops,
as the rows after the damage would be missing. A row that is JSON but not a usable sample is a
`malformed_row` entry. Images are not opened here: a `Path` goes into the `RawSample` and the
measuring step reports `missing_file` if it does not exist.
"""

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ov_train.data.conversations import (
    RowError,
    parse_conversation,
    parse_id,
    placeholder_count,
)
from ov_train.data.errors import InputConfigError, SourceFileError
from ov_train.data.input_paths import image_path
from ov_train.data.input_slices import Slice
from ov_train.data.raw_sample import BadSample, ImageRef, IngestResult, RawSample, Reason

SCAN_BLOCK_BYTES = 1 << 24
"""Block size of the newline count that plans a JSONL file's slices."""


@dataclass(frozen=True)
class LlavaSource:
    """A LLaVA JSON/JSONL file and the folder its image paths are relative to (default: the
    file's own folder)."""

    path: Path
    image_root: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.image_root is not None:
            object.__setattr__(self, "image_root", Path(self.image_root))

    @property
    def root(self) -> Path:
        """The folder image paths are resolved against."""
        return self.path.parent if self.image_root is None else self.image_root

    @property
    def jsonl(self) -> bool:
        """Whether the file is JSONL (by its suffix), else one JSON list."""
        return self.path.suffix.lower() == ".jsonl"

    def check(self) -> None:
        """InputConfigError if the file or the image folder does not exist."""
        if not self.path.is_file():
            raise InputConfigError(f"{self.path}: LLaVA annotation file not found")
        if not self.root.is_dir():
            raise InputConfigError(f"{self.root}: image folder of {self.path} not found")

    def iter_samples(
        self, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """Every row of the file, in order, as a RawSample or a BadSample."""
        for piece in self.slices(unit_rows=1 << 16):
            yield from self.read_slice(
                piece, caption_prompt=caption_prompt, allow_absolute_paths=allow_absolute_paths
            )

    def slices(self, *, unit_rows: int) -> Iterator[Slice]:
        """The file's rows as slices of `unit_rows` lines (JSONL) or elements (JSON)."""
        if self.jsonl:
            yield from _jsonl_slices(self.path, unit_rows)
        else:
            yield from _json_slices(self.path, unit_rows)

    def read_slice(
        self, piece: Slice, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """The rows of one slice, in order, as RawSamples or BadSamples."""
        del caption_prompt  # LLaVA rows always carry conversations
        rows = _jsonl_rows(piece) if self.jsonl else _json_rows(piece)
        for where, row in rows:
            yield self._sample(row, where, allow_absolute_paths)

    def _sample(self, row: Any, where: str, allow_absolute: bool) -> IngestResult:
        if not isinstance(row, Mapping):
            return BadSample(
                where, where, Reason.MALFORMED_ROW, f"row is a {type(row).__name__}, not an object"
            )
        try:
            sample_id = parse_id(row.get("id"), where)
        except RowError as error:
            return BadSample(where, where, Reason.MALFORMED_ROW, str(error))
        try:
            conversation = parse_conversation(row.get("conversations"))
            images = self._images(row, conversation, where, sample_id, allow_absolute)
        except RowError as error:
            return BadSample(sample_id, where, Reason.MALFORMED_ROW, str(error))
        return RawSample(sample_id, conversation, images, where)

    def _images(
        self,
        row: Mapping[str, Any],
        conversation: tuple[dict[str, str], ...],
        where: str,
        sample_id: str,
        allow_absolute: bool,
    ) -> tuple[ImageRef, ...]:
        if "image" not in row:
            return ()
        value = row["image"]
        if value is None:
            return (None,) * placeholder_count(conversation)
        items = value if isinstance(value, list) else [value]
        images: list[ImageRef] = []
        for index, item in enumerate(items):
            if item is None:
                images.append(None)
            elif isinstance(item, str) and item:
                images.append(
                    image_path(
                        self.root,
                        item,
                        allow_absolute=allow_absolute,
                        where=where,
                        sample_id=sample_id,
                        index=index,
                    )
                )
            else:
                raise RowError(f"image {index} must be a non-empty path string, got {item!r}")
        return tuple(images)


# --- JSONL --------------------------------------------------------------------------------------


def _jsonl_slices(path: Path, unit_rows: int) -> Iterator[Slice]:
    """Runs of `unit_rows` lines, found by counting newlines block by block (numpy)."""
    cuts = [0]
    newlines = 0  # newlines before `offset`
    next_cut = unit_rows  # cut after this many newlines
    offset = 0
    with path.open("rb") as file:
        while block := file.read(SCAN_BLOCK_BYTES):
            positions = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A)
            while newlines + len(positions) >= next_cut:
                cuts.append(offset + int(positions[next_cut - newlines - 1]) + 1)
                next_cut += unit_rows
            newlines += len(positions)
            offset += len(block)
    if cuts[-1] != offset:
        cuts.append(offset)
    for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
        yield Slice(path, start, stop, 1 + number * unit_rows)


def _jsonl_rows(piece: Slice) -> Iterator[tuple[str, Any]]:
    """(`file:line`, decoded row) of the slice's non-blank lines, read line by line."""
    name = str(piece.path)
    position = piece.start
    with piece.path.open("rb") as file:
        file.seek(piece.start)
        for number, line in enumerate(file, start=piece.first):
            if position >= piece.stop:
                return
            position += len(line)
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
            except msgspec.DecodeError as error:
                cut = "" if line.endswith(b"\n") else "; no newline ends it: the file looks cut"
                raise SourceFileError(
                    f"{name}:{number}: line is not JSON ({error}; line starts at byte "
                    f"{position - len(line)}){cut}"
                ) from None
            yield f"{name}:{number}", row


# --- JSON list ----------------------------------------------------------------------------------


def _json_slices(path: Path, unit_rows: int) -> Iterator[Slice]:
    """Runs of `unit_rows` elements of the file's JSON list, by byte range."""
    data = path.read_bytes()
    try:
        elements = msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.ValidationError as error:
        raise SourceFileError(f"{path}: expected a JSON list of rows ({error})") from None
    except msgspec.DecodeError as error:
        where = f"; the file ends at byte {len(data)}" if "truncated" in str(error) else ""
        raise SourceFileError(f"{path}: not valid JSON ({error}){where}") from None
    bounds = _element_bounds(data, elements, unit_rows)
    for number, (start, stop) in enumerate(bounds):
        yield Slice(path, start, stop, number * unit_rows)


def _element_bounds(
    data: bytes, elements: list[msgspec.Raw], unit_rows: int
) -> list[tuple[int, int]]:
    """Byte ranges of runs of `unit_rows` elements: from the first's start to the last's end.

    msgspec's Raw elements point into `data` (no copy), so an element's offset is its address
    minus the buffer's; each offset used is checked against the bytes, and if a check fails (a
    msgspec that copies) the offsets are found by searching forward instead.
    """
    firsts = list(range(0, len(elements), unit_rows))
    lasts = [min(first + unit_rows, len(elements)) - 1 for first in firsts]
    try:
        base = np.frombuffer(data, dtype=np.uint8).ctypes.data
        start = {
            index: np.frombuffer(elements[index], dtype=np.uint8).ctypes.data - base
            for index in (*firsts, *lasts)
        }
        ok = all(
            0 <= start[index] <= len(data) - len(elements[index])
            and data[start[index] : start[index] + len(elements[index])] == bytes(elements[index])
            for index in start
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        start, position = {}, 0
        for index, raw in enumerate(elements):
            position = data.index(bytes(raw), position)
            start[index] = position
            position += len(raw)
    return [
        (start[first], start[last] + len(elements[last]))
        for first, last in zip(firsts, lasts, strict=True)
    ]


def _json_rows(piece: Slice) -> Iterator[tuple[str, Any]]:
    """(`file#index`, decoded row) of the slice's elements."""
    name = str(piece.path)
    with piece.path.open("rb") as file:
        file.seek(piece.start)
        data = file.read(piece.stop - piece.start)
    try:
        rows = msgspec.json.decode(b"[" + data + b"]")
    except msgspec.DecodeError as error:
        raise SourceFileError(
            f"{name}: bytes {piece.start}-{piece.stop} (rows from #{piece.first}) are not the "
            f"JSON elements found when the job was planned; did the file change? ({error})"
        ) from None
    for index, row in enumerate(rows, start=piece.first):
        yield f"{name}#{index}", row
