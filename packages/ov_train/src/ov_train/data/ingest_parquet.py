"""Ingest HF-style parquet files: an image column plus conversations or captions.

Columns (names configurable, defaults as the HF hub's LLaVA-style sets use them):
- `image`: what HF `datasets` writes for an `Image` feature, a struct `{bytes, path}` (bytes
  win; a cell with only a path reads that file, relative to the parquet file's folder), or plain
  binary, or a list of either (multi-image). A null cell where the text has `<image>`
  placeholders is reported as `none_image` (one per placeholder); without placeholders it is a
  text-only sample. Without the column at all (`image_column=None` or absent) every sample is
  text-only;
- `conversations`: LLaVA turns (a list of `{from, value}` structs, or a JSON string of one);
  used when the file has the column, else
- `caption`: a string, turned into the one-turn caption conversation;
- `id`: optional; without the column (or in a null cell) a row is called `file#row`.

A file without a conversations or caption column is a configuration error found by `check()`
before anything runs; a file that turns out corrupt part-way is one `unreadable_source` entry
after the rows read before the damage. Rows are read in record batches (`BATCH_ROWS`), so memory
stays bounded whatever the file size.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ov_train.data.conversations import (
    RowError,
    caption_conversation,
    parse_conversation,
    parse_id,
    placeholder_count,
)
from ov_train.data.errors import InputConfigError
from ov_train.data.input_paths import expand_input
from ov_train.data.raw_sample import BadSample, ImageRef, IngestResult, RawSample, Reason

BATCH_ROWS = 256
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files (a file, a directory of them, or a glob) and the columns to read."""

    path: Path
    image_column: str | None = "image"
    conversations_column: str = "conversations"
    caption_column: str = "caption"
    id_column: str = "id"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        for name in ("conversations_column", "caption_column", "id_column"):
            if not getattr(self, name):
                raise InputConfigError(f"ParquetSource.{name} must be a non-empty column name")

    def files(self) -> list[Path]:
        """The parquet files to read, in order; InputConfigError if there are none."""
        return expand_input(self.path, PARQUET_SUFFIXES, "parquet")

    def check(self) -> None:
        """InputConfigError naming the file if one is not parquet or lacks a text column."""
        for path in self.files():
            self._text_column(path, _schema(path))

    def iter_samples(self, *, caption_prompt: str) -> Iterator[IngestResult]:
        """Every row of every file, in order, as a RawSample or a BadSample."""
        for path in self.files():
            yield from self._file_samples(path, caption_prompt)

    def _text_column(self, path: Path, schema: pa.Schema) -> str:
        for column in (self.conversations_column, self.caption_column):
            if column in schema.names:
                return column
        raise InputConfigError(
            f"{path}: has neither a {self.conversations_column!r} nor a {self.caption_column!r} "
            f"column (columns: {', '.join(schema.names)})"
        )

    def _file_samples(self, path: Path, caption_prompt: str) -> Iterator[IngestResult]:
        name = str(path)
        row_number = 0
        try:
            parquet = pq.ParquetFile(path)
            schema = parquet.schema_arrow
            text_column = self._text_column(path, schema)
            columns = [text_column]
            for column in (self.image_column, self.id_column):
                if column is not None and column in schema.names and column not in columns:
                    columns.append(column)
            has_images = self.image_column in columns
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    where = f"{name}#{row_number}"
                    yield self._sample(row, where, path, text_column, has_images, caption_prompt)
                    row_number += 1
        except (OSError, pa.ArrowException) as error:
            yield BadSample(
                name,
                name,
                Reason.UNREADABLE_SOURCE,
                f"parquet file is unreadable after {row_number} rows: {error}",
            )

    def _sample(
        self,
        row: dict[str, Any],
        where: str,
        path: Path,
        text_column: str,
        has_images: bool,
        caption_prompt: str,
    ) -> IngestResult:
        try:
            sample_id = parse_id(row.get(self.id_column), where)
        except RowError as error:
            return BadSample(where, where, Reason.MALFORMED_ROW, str(error))
        try:
            if text_column == self.conversations_column:
                conversation = parse_conversation(row[text_column])
            else:
                conversation = caption_conversation(row[text_column], caption_prompt)
            images = (
                _images(row[self.image_column], path.parent, conversation)
                if has_images and self.image_column is not None
                else ()
            )
        except RowError as error:
            return BadSample(sample_id, where, Reason.MALFORMED_ROW, str(error))
        return RawSample(sample_id, conversation, images, where)


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise InputConfigError(f"{path}: not a readable parquet file ({error})") from None


def _images(
    cell: Any, folder: Path, conversation: tuple[dict[str, str], ...]
) -> tuple[ImageRef, ...]:
    if cell is None:
        return (None,) * placeholder_count(conversation)
    items = cell if isinstance(cell, list) else [cell]
    return tuple(_image(item, folder, index) for index, item in enumerate(items))


def _image(item: Any, folder: Path, index: int) -> ImageRef:
    if item is None or isinstance(item, bytes):
        return item
    if isinstance(item, Mapping) and set(item) <= {"bytes", "path"}:
        data, path = item.get("bytes"), item.get("path")
        if data is not None:
            if not isinstance(data, bytes):
                raise RowError(f"image {index}: 'bytes' is a {type(data).__name__}")
            return data
        if path is None:
            return None
        if not isinstance(path, str) or not path:
            raise RowError(f"image {index}: 'path' must be a non-empty string, got {path!r}")
        return folder / path
    raise RowError(
        f"image {index} is a {type(item).__name__}; expected bytes or a {{bytes, path}} struct"
    )
