"""Ingest LLaVA-style annotation files: `[{"id", "image", "conversations"}, ...]` + image folder.

The format of LLaVA-1.5's 558K/665K sets and of most instruction sets since: one JSON list (or
JSONL, one object per line) of rows with

- `"conversations"`: the LLaVA turns (`conversations.parse_conversation`);
- `"image"`: a path relative to the image folder, a list of paths (multi-image), or absent for a
  text-only sample. A `null` list item is an image without content (`none_image`); so is a
  `null` value where the text has `<image>` placeholders (one per placeholder; without any it is
  a text-only sample). An absent key with `<image>` in the text is an image-count mismatch;
- `"id"`: optional; without it a row is called by its place, `file#index` (JSON) or `file:line`
  (JSONL, 1-based like an editor).

The file is decoded at once (msgspec: about 1 s per 500 MB); a file that is not JSON is one
`unreadable_source` entry. Images are not opened here: a `Path` goes into the `RawSample` and the
measuring step reports `missing_file` if it does not exist.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ov_train.data.conversations import (
    RowError,
    parse_conversation,
    parse_id,
    placeholder_count,
)
from ov_train.data.errors import InputConfigError
from ov_train.data.raw_sample import BadSample, ImageRef, IngestResult, RawSample, Reason


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

    def check(self) -> None:
        """InputConfigError if the file or the image folder does not exist."""
        if not self.path.is_file():
            raise InputConfigError(f"{self.path}: LLaVA annotation file not found")
        if not self.root.is_dir():
            raise InputConfigError(f"{self.root}: image folder of {self.path} not found")

    def iter_samples(self, *, caption_prompt: str) -> Iterator[IngestResult]:
        """Every row of the file, in order, as a RawSample or a BadSample."""
        del caption_prompt  # LLaVA rows always carry conversations
        jsonl = self.path.suffix.lower() == ".jsonl"
        for where, row in self._rows(jsonl):
            if isinstance(row, BadSample):
                yield row
                continue
            yield self._sample(row, where)

    def _rows(self, jsonl: bool) -> Iterator[tuple[str, Any]]:
        name = str(self.path)
        data = self.path.read_bytes()
        if not jsonl:
            try:
                rows = msgspec.json.decode(data)
            except msgspec.DecodeError as error:
                yield name, _unreadable(name, f"not valid JSON ({error})")
                return
            if not isinstance(rows, list):
                yield name, _unreadable(name, f"expected a JSON list, got {type(rows).__name__}")
                return
            for index, row in enumerate(rows):
                yield f"{name}#{index}", row
            return
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            where = f"{name}:{number}"
            try:
                yield where, msgspec.json.decode(line)
            except msgspec.DecodeError as error:
                yield where, BadSample(where, where, Reason.MALFORMED_ROW, f"not JSON ({error})")

    def _sample(self, row: Any, where: str) -> IngestResult:
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
            images = self._images(row, conversation)
        except RowError as error:
            return BadSample(sample_id, where, Reason.MALFORMED_ROW, str(error))
        return RawSample(sample_id, conversation, images, where)

    def _images(
        self, row: Mapping[str, Any], conversation: tuple[dict[str, str], ...]
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
                images.append(self.root / item)
            else:
                raise RowError(f"image {index} must be a non-empty path string, got {item!r}")
        return tuple(images)


def _unreadable(name: str, detail: str) -> BadSample:
    return BadSample(name, name, Reason.UNREADABLE_SOURCE, detail)
