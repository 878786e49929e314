"""Typed, checked access to the fields of a dataset row, with errors that say where.

Every loader reads rows (a dict per parquet row or JSONL line) through these helpers, so a
malformed row always fails with the file, the row and the column, and never slips through as a
`None` or a number where text was expected.

Image cells must hold encoded bytes (a wrong type or an image stored outside the file fails the
load), but their content is not decoded here: a corrupt image is one bad sample, not a bad
benchmark, so it is found when the runner decodes it, and that sample is recorded as an error
naming its file and row while the rest of the run goes on (`ov_eval.runner`).
`check_image_bytes` remains for callers that want to refuse an unreadable image up front.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ov_eval.errors import DatasetError
from rice_vit import ImageError, open_image

_SHOWN_CHARACTERS = 80


@dataclass(frozen=True, slots=True)
class RowLocation:
    """Where a row comes from: its file and its 0-based row (or 1-based line) number there."""

    path: Path
    row: int
    unit: str = "row"

    def __str__(self) -> str:
        return f"{self.path}, {self.unit} {self.row}"


def shown(value: Any) -> str:
    """`repr(value)`, cut to a length that fits in an error message."""
    text = repr(value)
    if len(text) > _SHOWN_CHARACTERS:
        text = text[: _SHOWN_CHARACTERS - 3] + "..."
    return text


def _fail(where: RowLocation, column: str, expected: str, value: Any) -> DatasetError:
    return DatasetError(f"{where}: column {column!r}: expected {expected}, got {shown(value)}")


def is_missing(value: Any) -> bool:
    """True for None and NaN, the two ways datasets write an empty cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def get_str(row: dict, column: str, where: RowLocation, *, allow_empty: bool = True) -> str:
    """The string in `column`; raises DatasetError for anything else (or '' if not allowed)."""
    value = row.get(column)
    if not isinstance(value, str):
        raise _fail(where, column, "a string", value)
    if not allow_empty and not value.strip():
        raise _fail(where, column, "a non-blank string", value)
    return value


def get_id(row: dict, column: str, where: RowLocation) -> str:
    """A sample id from `column`: a non-blank string, or an integer written as a string (datasets
    store ids either way, sometimes in different versions of the same benchmark)."""
    value = row.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return get_str(row, column, where, allow_empty=False)


def get_optional_str(row: dict, column: str, where: RowLocation) -> str | None:
    """The string in `column`, or None when the cell is empty (None/NaN) or the column absent."""
    value = row.get(column)
    if is_missing(value):
        return None
    if not isinstance(value, str):
        raise _fail(where, column, "a string or an empty cell", value)
    return value


def get_str_list(
    row: dict, column: str, where: RowLocation, *, allow_empty: bool = False
) -> tuple[str, ...]:
    """The list of strings in `column`, as a tuple (non-empty unless `allow_empty`)."""
    value = row.get(column)
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise _fail(where, column, "a list of strings", value)
    if not value and not allow_empty:
        raise _fail(where, column, "a non-empty list of strings", value)
    return tuple(value)


def get_int(row: dict, column: str, where: RowLocation) -> int:
    """The integer in `column`; integral strings ("12") are accepted, booleans are not."""
    value = row.get(column)
    if isinstance(value, bool):
        raise _fail(where, column, "an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(where, column, "an integer", value)


def get_image(row: dict, column: str, where: RowLocation) -> bytes:
    """The encoded image in `column`: a Hugging Face `Image` cell ({"bytes", "path"}) or bytes.
    Not decoded (see the module docstring): an unreadable image fails its sample at run time."""
    value = row.get(column)
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        if isinstance(value, dict) and value.get("path"):
            raise DatasetError(
                f"{where}: column {column!r}: the image is not embedded in the file "
                f"(it refers to {value['path']!r}); use the dataset's published parquet files"
            )
        raise _fail(where, column, "an image (encoded bytes)", value)
    return data


def check_image_bytes(data: bytes, what: str) -> bytes:
    """Return `data` if its header is a format Pillow can read and announces no more pixels
    than rice_vit's limit; raise DatasetError naming `what`."""
    try:
        with open_image(data, name=what):
            pass
    except ImageError as error:
        raise DatasetError(f"{what}: not a readable image ({error.problem})") from None
    return data
