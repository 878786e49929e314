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

A `path` cell must stay inside the parquet file's folder (`input_paths.image_path`: no `..`,
no absolute path unless allowed; else `UnsafePathError`).

A file without a conversations or caption column is a configuration error found by `check()`
before anything runs, and so is a file that is not parquet or is cut short (its footer is
gone): a `SourceFileError` naming the file and its size. A row group that turns out corrupt when
read is a `SourceFileError` naming the file, the row group and its rows: the job stops, as the
rows after the damage would be missing. Rows are read in record batches (`BATCH_ROWS`), so memory
stays bounded whatever the file size; a job's slices (`input_slices`) are runs of whole row
groups of at least `unit_rows` rows (a row group is never split).
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
from ov_train.data.errors import InputConfigError, SourceFileError
from ov_train.data.input_paths import expand_input, image_path
from ov_train.data.input_slices import Slice
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
        """InputConfigError naming the file if one lacks a text column; SourceFileError if one
        is not parquet or is truncated."""
        for path in self.files():
            self._text_column(path, _schema(path))

    def iter_samples(
        self, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """Every row of every file, in order, as a RawSample or a BadSample."""
        for piece in self.slices(unit_rows=1):
            yield from self.read_slice(
                piece, caption_prompt=caption_prompt, allow_absolute_paths=allow_absolute_paths
            )

    def slices(self, *, unit_rows: int) -> Iterator[Slice]:
        """Every file's row groups in runs of at least `unit_rows` rows (or a file's last run)."""
        for path in self.files():
            with _open(path) as parquet:
                metadata = parquet.metadata
            first = start = rows = 0
            for group in range(metadata.num_row_groups):
                rows += metadata.row_group(group).num_rows
                if rows >= unit_rows:
                    yield Slice(path, start, group + 1, first)
                    first, start, rows = first + rows, group + 1, 0
            if start < metadata.num_row_groups:
                yield Slice(path, start, metadata.num_row_groups, first)

    def read_slice(
        self, piece: Slice, *, caption_prompt: str, allow_absolute_paths: bool = False
    ) -> Iterator[IngestResult]:
        """The rows of one slice (row groups `start`..`stop` of a file), in order."""
        with _open(piece.path) as parquet:
            yield from self._read_groups(
                parquet, piece, caption_prompt=caption_prompt, allow_absolute=allow_absolute_paths
            )

    def _read_groups(
        self, parquet: pq.ParquetFile, piece: Slice, *, caption_prompt: str, allow_absolute: bool
    ) -> Iterator[IngestResult]:
        path, name = piece.path, str(piece.path)
        schema = parquet.schema_arrow
        text_column = self._text_column(path, schema)
        columns = [text_column]
        for column in (self.image_column, self.id_column):
            if column is not None and column in schema.names and column not in columns:
                columns.append(column)
        has_images = self.image_column in columns
        row_number = piece.first
        for group in range(piece.start, piece.stop):
            group_rows = parquet.metadata.row_group(group).num_rows
            group_first = row_number
            batches = _group_batches(parquet, group, columns)
            while True:
                try:
                    batch = next(batches, None)
                except (OSError, pa.ArrowException) as error:
                    last = group_first + group_rows - 1
                    raise SourceFileError(
                        f"{name}: row group {group} (rows #{group_first}-#{last}) cannot be read "
                        f"after {row_number - group_first} of its rows: the file is corrupt "
                        f"({error})"
                    ) from None
                if batch is None:
                    break
                for row in batch.to_pylist():
                    where = f"{name}#{row_number}"
                    yield self._sample(
                        row,
                        where,
                        path,
                        text_column,
                        has_images,
                        caption_prompt,
                        allow_absolute,
                    )
                    row_number += 1

    def _text_column(self, path: Path, schema: pa.Schema) -> str:
        for column in (self.conversations_column, self.caption_column):
            if column in schema.names:
                return column
        raise InputConfigError(
            f"{path}: has neither a {self.conversations_column!r} nor a {self.caption_column!r} "
            f"column (columns: {', '.join(schema.names)})"
        )

    def _sample(
        self,
        row: dict[str, Any],
        where: str,
        path: Path,
        text_column: str,
        has_images: bool,
        caption_prompt: str,
        allow_absolute: bool,
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
                _images(
                    row[self.image_column],
                    path.parent,
                    conversation,
                    where,
                    sample_id,
                    allow_absolute,
                )
                if has_images and self.image_column is not None
                else ()
            )
        except RowError as error:
            return BadSample(sample_id, where, Reason.MALFORMED_ROW, str(error))
        return RawSample(sample_id, conversation, images, where)


def _group_batches(parquet: pq.ParquetFile, group: int, columns: list[str]) -> Iterator[Any]:
    """The record batches of one row group, decoded one at a time."""
    return parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise _not_parquet(path, error) from None


def _not_parquet(path: Path, error: BaseException) -> SourceFileError:
    try:
        size = f"{path.stat().st_size:,} bytes"
    except OSError:
        size = "size unknown"
    return SourceFileError(
        f"{path}: not a readable parquet file ({size}; truncated, or not parquet): {error}"
    )


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise _not_parquet(path, error) from None


def _images(
    cell: Any,
    folder: Path,
    conversation: tuple[dict[str, str], ...],
    where: str,
    sample_id: str,
    allow_absolute: bool,
) -> tuple[ImageRef, ...]:
    if cell is None:
        return (None,) * placeholder_count(conversation)
    items = cell if isinstance(cell, list) else [cell]
    return tuple(
        _image(item, folder, index, where, sample_id, allow_absolute)
        for index, item in enumerate(items)
    )


def _image(
    item: Any, folder: Path, index: int, where: str, sample_id: str, allow_absolute: bool
) -> ImageRef:
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
        return image_path(
            folder,
            path,
            allow_absolute=allow_absolute,
            where=where,
            sample_id=sample_id,
            index=index,
        )
    raise RowError(
        f"image {index} is a {type(item).__name__}; expected bytes or a {{bytes, path}} struct"
    )
