"""Reading and writing the per-sample lengths the packer consumes.

The packer's input is numbers: for every sample an id, its LLM token count and, optionally, its ViT
patch count. Four formats carry them:

- Parquet (`.parquet`, or any file starting with `PAR1`): columns `id` (string), `tokens`
  (integer) and optionally `patches` (integer); other columns are ignored and not read. Read with
  pyarrow, row group by row group; errors name the 0-based row.
- JSONL, one object per line: `{"id": "a/b.jpg", "tokens": 1234, "patches": 980}`. "patches" is
  optional, but either every row has it or none does; other keys are ignored.
- Text, one `name:length` per line, as written by the original LLaVA-OneVision-1.5 release. The name
  is everything before the last ':' (names may contain ':'); there are no patch counts.
- `.npy`: a 1-D integer array of token counts, or an (n, 2) integer array of [tokens, patches].
  Samples have no ids; sample i is called `str(i)`. Loaded with `allow_pickle=False`.

JSONL, text and npy may be zstd-compressed. Detection goes by content first: a file starting with
the zstd magic `28 B5 2F FD` is decompressed (whatever its name), then the `\\x93NUMPY` magic means
npy, a first non-blank character `{` means JSONL, and anything else is read as text. The name is a
hint on top of that: a `.npy` file that is not npy is an error, a `.jsonl` file is always parsed as
JSONL (so a broken first line gets a JSON error rather than a text one), a `.txt` file is JSONL
only if its first line also ends with '}' (so a text name may start with '{'), and a non-empty
`.zst` file that is not zstd is an error. Text is UTF-8; a leading byte-order mark is ignored.

Error policy: every malformed input raises `InputFormatError` naming the file and the 1-based line
(the array index for npy, the row for Parquet) and what is wrong; nothing is skipped or clamped.
Blank lines are skipped but still counted, so line numbers match an editor's. Token counts must be
positive, patch counts non-negative (a text-only sample has no patches, and the packing core
accepts 0), both must fit in int32; ids must be non-empty and unique (a repeated id names both
lines or rows). An empty input is not an error: it yields zero samples.

Memory and speed: ids are one Arrow string column (`SampleIds`), never a Python string per sample.
JSONL and text are streamed in blocks of about 16 MiB (decompressed on the fly): each block is
parsed by pyarrow (`pyarrow.json` for JSONL, Arrow regex kernels for text) after a vectorised
check that every line is one clean row; a block that fails any check is re-read by a slow
line-by-line parser, which defines what is accepted and names the first bad line, so the fast path
only has to be conservative. Repeated ids are found by hashing (see `sample_ids`).
"""

import io
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import zstandard

from ov_packing.errors import InputFormatError
from ov_packing.sample_ids import SampleIds

INT32_MAX = int(np.iinfo(np.int32).max)
FORMATS = ("jsonl", "text", "npy", "parquet")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NPY_MAGIC = b"\x93NUMPY"
_UTF8_BOM = b"\xef\xbb\xbf"
_ZSTD_LEVEL = 3
_PARQUET_MAGIC = b"PAR1"
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".txt": "text", ".npy": "npy", ".parquet": "parquet"}
_BLOCK_BYTES = 16 << 20  # text read per block
_PARQUET_BATCH = 1 << 16  # Parquet rows decoded per batch
_READ_BYTES = 4 << 20  # file bytes read per call
_JSONL_SCHEMA = pa.schema([("id", pa.string()), ("tokens", pa.int64()), ("patches", pa.int64())])
_TEXT_ROW = r"^(?P<name>.+):(?P<length>[0-9]{1,10})$"
_FIRST_NON_BLANK = re.compile(rb"\S")
_TEXT_LENGTH = re.compile(rb"[+-]?[0-9]+")
_TEXT_ROW_END = re.compile(rb":([0-9]{1,10})\n")
# Any of these in a text input means some line is blank or has whitespace to strip.
_UNCLEAN_LINE_MARKS = (b"\r", b"\t", b"\x0b", b"\x0c", b" \n", b"\n ", b"\n\n")
# What `bytes.strip()` removes, which is what the readers strip from every line.
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"

MIN_TOKENS = 1
MIN_PATCHES = 0
_TokenCount = Annotated[int, msgspec.Meta(ge=MIN_TOKENS, le=INT32_MAX)]
_PatchCount = Annotated[int, msgspec.Meta(ge=MIN_PATCHES, le=INT32_MAX)]


class _JsonlRowOut(msgspec.Struct):
    id: str
    tokens: int


class _JsonlRowWithPatchesOut(msgspec.Struct):
    id: str
    tokens: int
    patches: int


@dataclass(frozen=True, eq=False)
class SampleLengths:
    """Per-sample lengths read from one input file.

    Construction checks the shapes and converts integer arrays to int32 (tokens must be positive,
    patches non-negative, both fit in int32) and any sequence of id strings (or Arrow string array)
    to `SampleIds`; it does not check that ids are unique (the readers, `write_lengths`, `pack`
    and `PackPlan` do).
    """

    source: str
    """The path as given, for messages."""
    ids: SampleIds | None
    """Sample ids (one Arrow string column), or None for npy input (sample i is then `str(i)`)."""
    tokens: np.ndarray
    """int32, shape (n,): LLM tokens per sample."""
    patches: np.ndarray | None
    """int32, shape (n,): ViT patches per sample, or None when the input has no patch counts."""

    def __post_init__(self) -> None:
        tokens = _as_counts(self.tokens, "tokens", MIN_TOKENS)
        object.__setattr__(self, "tokens", tokens)
        if self.patches is not None:
            patches = _as_counts(self.patches, "patches", MIN_PATCHES)
            if patches.shape != tokens.shape:
                raise ValueError(f"patches has {len(patches)} entries but tokens {len(tokens)}")
            object.__setattr__(self, "patches", patches)
        if self.ids is not None:
            if not isinstance(self.ids, SampleIds):
                object.__setattr__(self, "ids", SampleIds(self.ids))
            if len(self.ids) != len(tokens):
                raise ValueError(f"ids has {len(self.ids)} entries but tokens {len(tokens)}")

    def __len__(self) -> int:
        return len(self.tokens)


def _as_counts(values: Any, name: str, minimum: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iu" and array.size:
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    bad = np.flatnonzero((array < minimum) | (array > INT32_MAX))
    if bad.size:
        raise ValueError(
            f"{name}[{bad[0]}] is {array[bad[0]]}, must be in [{minimum}, {INT32_MAX}]"
        )
    return array.astype(np.int32, copy=False)


@dataclass
class _Part:
    """The rows of one block: ids, counts, and the 1-based line of the block's first line."""

    ids: pa.LargeStringArray | None
    tokens: np.ndarray | None
    patches: np.ndarray | None
    first_line: int


def read_lengths(path: str | Path) -> SampleLengths:
    """Read per-sample lengths from a Parquet, JSONL, text or npy file (JSONL, text and npy
    optionally zstd-compressed).

    Raises `InputFormatError` naming the file and line (npy index, Parquet row) on any malformed
    input, a repeated id included.
    """
    source = os.fspath(path)
    opened = _open_parts(Path(path), source)
    if isinstance(opened, SampleLengths):
        return opened
    unit, parts, rows_hint = opened
    return _combine(parts, source, Path(path), unit, rows_hint)


def iter_lengths(path: str | Path) -> Iterator[SampleLengths]:
    """The samples of a lengths file in consecutive blocks (a Parquet row group, about 16 MiB of
    JSONL or text, a whole npy), each checked as `read_lengths` checks it, except that ids are
    not checked unique across blocks. Memory: one block at a time."""
    source = os.fspath(path)
    opened = _open_parts(Path(path), source)
    if isinstance(opened, SampleLengths):
        yield opened
        return
    for part in opened[1]:
        yield SampleLengths(source, SampleIds(part.ids), part.tokens, part.patches)


def _open_parts(path: Path, source: str) -> "SampleLengths | tuple[str, Iterator[_Part], int]":
    """A whole SampleLengths (npy, empty input) or ("line" or "row", the blocks' parts, the
    number of rows if known up front, else 0)."""
    hint = _suffix_format(path)
    if hint == "parquet" or _starts_with(path, source, _PARQUET_MAGIC):
        return "row", _parquet_parts(path, source), _parquet_rows(path, source)
    blocks = _text_blocks(path, source)
    first = next(blocks, b"")
    if first.startswith(_NPY_MAGIC):
        return _parse_npy(first + b"".join(blocks), source)
    if first.startswith(_UTF8_BOM):
        first = first[len(_UTF8_BOM) :]
    pending = [first]
    while (found := _FIRST_NON_BLANK.search(pending[-1])) is None:
        following = next(blocks, None)
        if following is None:
            empty = np.zeros(0, dtype=np.int32)
            return SampleLengths(source, None if hint == "npy" else [], empty, None)
        pending.append(following)
    if hint == "npy":
        raise InputFormatError(f"{source}: not an npy file (it does not start with the npy magic)")
    jsonl = hint == "jsonl" or _looks_like_jsonl(pending[-1], found.start(), hint)
    parse = _parse_jsonl_block if jsonl else _parse_text_block

    def parts() -> Iterator[_Part]:
        first_part: _Part | None = None
        line = 1
        for block in itertools.chain(pending, blocks):
            part = parse(block, source, line)
            if part is not None:
                if first_part is None:
                    first_part = part
                elif (part.patches is None) != (first_part.patches is None):
                    _raise_patch_pattern(
                        source,
                        part.first_line,
                        first_part.first_line,
                        first_part.patches is not None,
                    )
                yield part
            line += block.count(b"\n")

    return "line", parts(), 0


class _Growing:
    """A numpy array appended to in place, grown by half again when full (one copy at a time)."""

    def __init__(self, dtype: type, capacity: int) -> None:
        self.array = np.empty(max(capacity, 1024), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + values.shape[0]
        if end > self.array.shape[0]:
            grown = np.empty(max(end, self.array.shape[0] * 3 // 2), dtype=self.array.dtype)
            grown[: self.size] = self.array[: self.size]
            self.array = grown
        self.array[self.size : end] = values
        self.size = end

    def result(self) -> np.ndarray:
        if self.array.shape[0] > self.size:
            self.array = (
                self.array[: self.size].copy()
                if self.size < 0.9 * len(self.array)
                else (self.array[: self.size])
            )
        return self.array


def _combine(
    parts: Iterator[_Part], source: str, path: Path, unit: str, rows_hint: int = 0
) -> SampleLengths:
    """One SampleLengths from consecutive parts, built in place: the ids' bytes and offsets, the
    counts are appended to growing buffers, so the parts are never all held at once. Parts
    without ids (Parquet read without its id column) give a SampleLengths without ids."""
    offsets = _Growing(np.int64, rows_hint + 1)
    offsets.extend(np.zeros(1, dtype=np.int64))
    data: _Growing | None = None
    tokens = _Growing(np.int32, rows_hint)
    patches: _Growing | None = None
    with_ids = True
    rows = 0
    for part in parts:
        ids = part.ids
        if ids is None:
            with_ids = False
        else:
            _, offsets_buffer, data_buffer = ids.buffers()
            part_offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
                ids.offset : ids.offset + len(ids) + 1
            ]
            low, high = int(part_offsets[0]), int(part_offsets[-1])
            if data is None:
                # Guess the total from the first part's bytes per row (grown if short).
                per_row = (high - low) / max(1, len(ids))
                data = _Growing(np.uint8, int(per_row * max(rows_hint, len(ids)) * 1.02) + 64)
            offsets.extend(part_offsets[1:] + (offsets.array[offsets.size - 1] - low))
            if high > low:
                data.extend(np.frombuffer(data_buffer, dtype=np.uint8)[low:high])
        rows += len(part.ids) if part.tokens is None else len(part.tokens)
        if part.tokens is not None:
            tokens.extend(part.tokens)
        if part.patches is not None:
            if patches is None:
                patches = _Growing(np.int32, rows_hint)
            patches.extend(part.patches)
        del part, ids
    tokens_array = tokens.result()
    if tokens.size != rows:  # ids alone were read: one token each, a zero-stride placeholder
        tokens_array = np.broadcast_to(np.int32(1), (rows,))
    patches_array = None if patches is None else patches.result()
    if not with_ids:
        pa.default_memory_pool().release_unused()
        return SampleLengths(source, None, tokens_array, patches_array)
    if data is None:
        return SampleLengths(source, [], np.zeros(0, dtype=np.int32), None)
    ids = _unique_ids(
        pa.LargeStringArray.from_buffers(
            offsets.size - 1, pa.py_buffer(offsets.result()), pa.py_buffer(data.result())
        ),
        source,
        path,
        unit,
    )
    return SampleLengths(source, ids, tokens_array, patches_array)


def _unique_ids(array: pa.LargeStringArray, source: str, path: Path, unit: str) -> SampleIds:
    pa.default_memory_pool().release_unused()  # the parts' Arrow buffers, back to the system
    ids = SampleIds(array)
    duplicate = ids.first_duplicate()
    if duplicate is not None:
        first, second = duplicate
        sample_id = _shorten(ids[second])
        if unit == "row":
            raise InputFormatError(
                f"{source}: row {second}: duplicate id {sample_id} (first in row {first})"
            )
        first_line, second_line = _lines_of_rows(path, source, (first, second))
        raise InputFormatError(
            f"{source}:{second_line}: duplicate id {sample_id} (first on line {first_line})"
        )
    ids.mark_unique()
    return ids


def is_parquet(path: str | Path) -> bool:
    """Whether `read_lengths` reads `path` as Parquet (by its suffix or its first bytes)."""
    path = Path(path)
    return _suffix_format(path) == "parquet" or _starts_with(path, os.fspath(path), _PARQUET_MAGIC)


def read_counts(path: str | Path) -> SampleLengths:
    """`read_lengths` without the ids for Parquet input (its id column is not even read: see
    `read_ids`), so the packer can run without them in memory; other formats are read whole and
    their ids dropped."""
    source = os.fspath(path)
    if not is_parquet(path):
        lengths = read_lengths(path)
        return SampleLengths(source, None, lengths.tokens, lengths.patches)
    path = Path(path)
    parts = _parquet_parts(path, source, with_ids=False)
    return _combine(parts, source, path, "row", _parquet_rows(path, source))


def read_ids(path: str | Path) -> SampleIds | None:
    """The ids of a lengths file, checked (non-empty, unique; errors name the row or line), as
    `read_lengths` reads them; for Parquet only the id column is read. None for npy input."""
    source = os.fspath(path)
    if not is_parquet(path):
        return read_lengths(path).ids
    path = Path(path)
    parts = _parquet_parts(path, source, with_counts=False)
    return _combine(parts, source, path, "row", _parquet_rows(path, source)).ids


def _lines_of_rows(path: Path, source: str, rows: tuple[int, int]) -> tuple[int, int]:
    """1-based lines of the given 0-based rows (non-blank lines), by reading the file again."""
    found: dict[int, int] = {}
    row = 0
    line = 1
    for index, block in enumerate(_text_blocks(path, source)):
        if index == 0 and block.startswith(_UTF8_BOM):
            block = block[len(_UTF8_BOM) :]
        for text in block.split(b"\n")[: block.count(b"\n") + (not block.endswith(b"\n"))]:
            if text.strip():
                if row in rows:
                    found[row] = line
                row += 1
            line += 1
        if len(found) == len(set(rows)):
            break
    return found[rows[0]], found[rows[1]]


def _starts_with(path: Path, source: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except FileNotFoundError as exc:
        raise InputFormatError(f"{source}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFormatError(f"{source}: is a directory, not a lengths file") from exc


def _looks_like_jsonl(data: bytes, start: int, hint: str | None) -> bool:
    """Whether the first non-blank line, at `start`, opens a JSON object.

    For a `.txt` file the line must also end with '}': a text line ends with a digit, so a
    `name:length` whose name starts with '{' is still read as text.
    """
    if data[start : start + 1] != b"{":
        return False
    if hint != "text":
        return True
    end = data.find(b"\n", start)
    return data[start : None if end < 0 else end].rstrip().endswith(b"}")


def _suffix_format(path: Path) -> str | None:
    name = path.name.removesuffix(".zst")
    return _SUFFIX_FORMATS.get(Path(name).suffix)


def _file_chunks(path: Path, source: str) -> Iterator[bytes]:
    """The file's bytes, decompressed on the fly when it starts with the zstd magic."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except FileNotFoundError as exc:
        raise InputFormatError(f"{source}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFormatError(f"{source}: is a directory, not a lengths file") from exc
    with handle:
        data = handle.read(_READ_BYTES)
        if not data.startswith(_ZSTD_MAGIC):
            if path.suffix == ".zst" and data:
                raise InputFormatError(f"{source}: has a .zst suffix but is not zstd-compressed")
            while data:
                yield data
                data = handle.read(_READ_BYTES)
            return
        # decompressobj rather than stream_reader: a stream reader returns a truncated frame's
        # partial output without complaint, and `eof` is how a truncated file is told from a
        # whole one. One decompressor per frame; frames may be concatenated.
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        fed = False
        try:
            while data:
                output = decompressor.decompress(data)
                fed = True
                if output:
                    yield output
                data = decompressor.unused_data if decompressor.eof else b""
                if decompressor.eof:
                    decompressor = zstandard.ZstdDecompressor().decompressobj()
                    fed = False
                if not data:
                    data = handle.read(_READ_BYTES)
        except zstandard.ZstdError as exc:
            raise InputFormatError(f"{source}: corrupt zstd data ({exc})") from exc
        if fed and not decompressor.eof:
            raise InputFormatError(f"{source}: zstd data is truncated")


def _text_blocks(path: Path, source: str) -> Iterator[bytes]:
    """The (decompressed) file in blocks of about _BLOCK_BYTES, each ending after a newline
    (except the last, which ends where the file does)."""
    pending: list[bytes] = []
    size = 0
    for chunk in _file_chunks(path, source):
        pending.append(chunk)
        size += len(chunk)
        if size >= _BLOCK_BYTES:
            data = b"".join(pending)
            start = 0
            while len(data) - start >= _BLOCK_BYTES:
                cut = data.find(b"\n", start + _BLOCK_BYTES - 1) + 1
                if not cut:
                    break  # a line longer than a block: wait for its end
                yield data[start:cut]
                start = cut
            data = data[start:]
            pending, size = [data], len(data)
    data = b"".join(pending)
    if data:
        yield data


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _clean_lines(block: bytes, first: bytes, last: bytes) -> int | None:
    """The number of lines when every line of `block` starts with `first` and ends with `last`
    (so none is blank or has whitespace around it), else None. Vectorised."""
    buffer = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10)
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    starts = np.concatenate([[0], ends[:-1] + 1])
    if np.any(ends <= starts):
        return None
    if first and not np.all(buffer[starts] == first[0]):
        return None
    if last and not np.all(buffer[ends - 1] == last[0]):
        return None
    return int(ends.size)


def _checked_counts(values: pa.Array, minimum: int) -> np.ndarray | None:
    """int32 numpy counts, or None when a value is null or out of range (the slow path reports)."""
    if values.null_count:
        return None
    array = values.to_numpy(zero_copy_only=False)
    if array.size and (array.min() < minimum or array.max() > INT32_MAX):
        return None
    return array.astype(np.int32)


# ---- JSONL ------------------------------------------------------------------------------------


def _parse_jsonl_block(block: bytes, source: str, line: int) -> _Part | None:
    """The rows of one block (None if it has none); `line` is the block's first line number."""
    rows = _clean_lines(block, b"{", b"}")
    if rows is not None:
        part = _parse_jsonl_fast(block, rows, line)
        if part is not None:
            return part
    return _parse_jsonl_slow(block, source, line)


def _parse_jsonl_fast(block: bytes, rows: int, line: int) -> _Part | None:
    """pyarrow's JSON reader on a block of clean lines; None when anything is off.

    pyarrow reads whitespace-separated objects, so two checks make it line-exact: every line opens
    with '{' and closes with '}', and there are as many objects as lines. With the former no value
    can continue onto the next line (after a closing '}' inside a value JSON needs ',', '}' or ']',
    never '{'), so equal counts mean exactly one object per line.
    """
    try:
        table = pajson.read_json(
            io.BytesIO(block),
            read_options=pajson.ReadOptions(use_threads=True, block_size=1 << 22),
            parse_options=pajson.ParseOptions(
                explicit_schema=_JSONL_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != rows:
        return None
    ids = table.column("id").combine_chunks()
    try:
        ids.validate(full=True)  # pyarrow's JSON reader does not check UTF-8
    except pa.ArrowInvalid:
        return None
    if ids.null_count or pc.any(pc.equal(pc.binary_length(ids), 0)).as_py():
        return None
    tokens = _checked_counts(table.column("tokens").combine_chunks(), MIN_TOKENS)
    if tokens is None:
        return None
    patch_column = table.column("patches").combine_chunks()
    patches = None
    if patch_column.null_count == rows and b'"patches"' in block:
        return None  # an explicit null (or the word in a string): the slow path tells which
    if patch_column.null_count != rows:
        patches = _checked_counts(patch_column, MIN_PATCHES)
        if patches is None:
            return None
    return _Part(ids.cast(pa.large_string()), tokens, patches, line)


def _parse_jsonl_slow(block: bytes, source: str, line_offset: int) -> _Part | None:
    ids: list[str] = []
    tokens: list[int] = []
    patches: list[int] = []
    first_line = 0
    first_has_patches = False
    for number, line in enumerate(block.split(b"\n"), line_offset):
        line = line.strip()
        if not line:
            continue
        where = f"{source}:{number}"
        try:
            row = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise InputFormatError(f"{where}: malformed JSON ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise InputFormatError(f"{where}: not valid UTF-8") from exc
        if not isinstance(row, dict):
            raise InputFormatError(f"{where}: expected a JSON object, got {_shorten(row)}")
        if "id" not in row:
            raise InputFormatError(f'{where}: missing "id"')
        if "tokens" not in row:
            raise InputFormatError(f'{where}: missing "tokens"')
        sample_id = row["id"]
        if not isinstance(sample_id, str):
            raise InputFormatError(f'{where}: "id" must be a string, got {_shorten(sample_id)}')
        if not sample_id:
            raise InputFormatError(f'{where}: "id" is empty')
        ids.append(sample_id)
        tokens.append(_check_count(row["tokens"], '"tokens"', where, MIN_TOKENS))
        if not first_line:
            first_line, first_has_patches = number, "patches" in row
        elif ("patches" in row) != first_has_patches:
            _raise_patch_pattern(source, number, first_line, first_has_patches)
        if "patches" in row:
            patches.append(_check_count(row["patches"], '"patches"', where, MIN_PATCHES))
    if not ids:
        return None
    return _Part(
        pa.array(ids, pa.large_string()),
        np.array(tokens, dtype=np.int32),
        np.array(patches, dtype=np.int32) if patches else None,
        first_line,
    )


def _raise_patch_pattern(source: str, line: int, first_line: int, first_has_patches: bool) -> None:
    this, first = ("has no", "has") if first_has_patches else ("has", "has no")
    raise InputFormatError(
        f'{source}:{line}: row {this} "patches" but line {first_line} {first} '
        "(either every row has patch counts or none does)"
    )


def _check_count(value: Any, name: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputFormatError(f"{where}: {name} must be an integer, got {_shorten(value)}")
    if value < minimum:
        rule = "be positive" if minimum > 0 else "not be negative"
        raise InputFormatError(f"{where}: {name} must {rule}, got {value}")
    if value > INT32_MAX:
        raise InputFormatError(f"{where}: {name} must be at most {INT32_MAX}, got {value}")
    return value


# ---- name:length text -------------------------------------------------------------------------


def _parse_text_block(block: bytes, source: str, line: int) -> _Part | None:
    rows = _clean_lines(block, b"", b"")
    if rows is not None and not any(mark in block for mark in _UNCLEAN_LINE_MARKS):
        part = _parse_text_fast(block, rows, line)
        if part is not None:
            return part
    return _parse_text_slow(block, source, line)


def _parse_text_fast(block: bytes, rows: int, line: int) -> _Part | None:
    """Arrow regex kernels over a block of stripped, non-blank lines; None when a line needs the
    slow path. On such lines `name:digits` is exactly "the line ends with ':' and 1 to 10 digits"
    (the name is what precedes them, maybe with ':'s)."""
    if block[:1].isspace() or block.rstrip(b"\n")[-1:].isspace():
        return None
    text = block[:-1] if block.endswith(b"\n") else block
    whole = pa.StringArray.from_buffers(
        1, pa.py_buffer(np.array([0, len(text)], dtype=np.int32)), pa.py_buffer(text)
    )
    try:
        whole.validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    lines = pc.split_pattern(whole, "\n").flatten()
    if len(lines) != rows:
        return None
    matched = pc.extract_regex(lines, _TEXT_ROW)
    if matched.null_count:
        return None
    # At most 10 digits cannot overflow int64; the range check is left to the slow path's messages.
    tokens = _checked_counts(pc.cast(matched.field("length"), pa.int64()), MIN_TOKENS)
    if tokens is None:
        return None
    return _Part(matched.field("name").cast(pa.large_string()), tokens, None, line)


def _parse_text_slow(block: bytes, source: str, line_offset: int) -> _Part | None:
    ids: list[str] = []
    tokens: list[int] = []
    first_line = 0
    for number, line in enumerate(block.split(b"\n"), line_offset):
        line = line.strip()
        if not line:
            continue
        where = f"{source}:{number}"
        name, separator, length = line.rpartition(b":")
        if not separator:
            raise InputFormatError(f"{where}: expected 'name:length', found no ':'")
        if not name:
            raise InputFormatError(f"{where}: empty sample name before ':'")
        try:
            sample_id = name.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputFormatError(f"{where}: sample name is not valid UTF-8") from exc
        length = length.strip()
        if not _TEXT_LENGTH.fullmatch(length):
            raise InputFormatError(
                f"{where}: length {_shorten(length.decode('utf-8', 'replace'))} is not an integer"
            )
        first_line = first_line or number
        ids.append(sample_id)
        tokens.append(_check_count(int(length), "length", where, MIN_TOKENS))
    if not ids:
        return None
    return _Part(
        pa.array(ids, pa.large_string()), np.array(tokens, dtype=np.int32), None, first_line
    )


# ---- Parquet ----------------------------------------------------------------------------------


def _parquet_parts(
    path: Path, source: str, with_ids: bool = True, with_counts: bool = True
) -> Iterator[_Part]:
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise InputFormatError(f"{source}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFormatError(f"{source}: is a directory, not a lengths file") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputFormatError(f"{source}: not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    for name in ("id", "tokens"):
        if name not in schema.names:
            raise InputFormatError(f"{source}: Parquet file has no {name!r} column")
    with_patches = "patches" in schema.names
    for name in ("id", "tokens", "patches")[: 3 if with_patches else 2]:
        kind = schema.field(name).type
        ok = (
            pa.types.is_string(kind) or pa.types.is_large_string(kind)
            if name == "id"
            else pa.types.is_integer(kind)
        )
        if not ok:
            wanted = "strings" if name == "id" else "integers"
            raise InputFormatError(f"{source}: column {name!r} must hold {wanted}, has {kind}")
    columns = (["id"] if with_ids else []) + (
        ["tokens"] + (["patches"] if with_patches else []) if with_counts else []
    )
    row = 0
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=columns, use_threads=False)
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            ids = None
            if with_ids:
                ids = batch.column("id").cast(pa.large_string())
                _check_parquet_ids(ids, source, row)
            tokens = None
            patches = None
            if with_counts:
                tokens = _parquet_counts(
                    batch.column("tokens"), '"tokens"', source, row, MIN_TOKENS
                )
                if with_patches:
                    patches = _parquet_counts(
                        batch.column("patches"), '"patches"', source, row, MIN_PATCHES
                    )
            del batch
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputFormatError(
                f"{source}: corrupt Parquet data after row {row} ({exc})"
            ) from exc
        yield _Part(ids, tokens, patches, row)
        row += len(ids) if tokens is None else len(tokens)


def _parquet_rows(path: Path, source: str) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return 0  # reported by _parquet_parts


def _check_parquet_ids(ids: pa.Array, source: str, row: int) -> None:
    if ids.null_count:
        first = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputFormatError(f'{source}: row {row + first}: "id" is null')
    empty = pc.equal(pc.binary_length(ids), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        raise InputFormatError(f'{source}: row {row + int(np.argmax(empty))}: "id" is empty')


def _parquet_counts(values: pa.Array, name: str, source: str, row: int, minimum: int) -> np.ndarray:
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputFormatError(f"{source}: row {row + first}: {name} is null")
    array = values.to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((array < minimum) | (array > INT32_MAX))
    if bad.size:
        _check_count(int(array[bad[0]]), name, f"{source}: row {row + int(bad[0])}", minimum)
    return array.astype(np.int32)


# ---- npy --------------------------------------------------------------------------------------


def _parse_npy(data: bytes, source: str) -> SampleLengths:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise InputFormatError(f"{source}: unreadable npy ({exc})") from exc
    if array.dtype.kind not in "iu":
        raise InputFormatError(f"{source}: npy must hold integers, got dtype {array.dtype}")
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 2)):
        raise InputFormatError(f"{source}: npy must have shape (n,) or (n, 2), got {array.shape}")
    minimum = np.array([MIN_TOKENS, MIN_PATCHES][: 1 if array.ndim == 1 else 2])
    out_of_range = (array < minimum) | (array > INT32_MAX)
    bad = np.flatnonzero(out_of_range if array.ndim == 1 else out_of_range.any(axis=1))
    if bad.size:
        index = int(bad[0])
        values = np.atleast_1d(array[index]).tolist()
        for name, value, low in zip(("tokens", "patches"), values, minimum.tolist(), strict=False):
            _check_count(value, name, f"{source}: index {index}", low)
    if array.ndim == 1:
        return SampleLengths(source, None, array.astype(np.int32), None)
    return SampleLengths(source, None, array[:, 0].astype(np.int32), array[:, 1].astype(np.int32))


# ---- writing ----------------------------------------------------------------------------------


def write_lengths(path: str | Path, lengths: SampleLengths, format: str | None = None) -> None:
    """Write `lengths` as "parquet", "jsonl", "text" or "npy"; JSONL, text and npy are
    zstd-compressed (level 3) if the name ends .zst.

    With `format=None` the format comes from the suffix (`.parquet`, or `.jsonl`, `.txt`, `.npy`,
    each optionally followed by `.zst`). Parquet gets columns `id` (string), `tokens` and
    `patches` (int32, only with patch counts), zstd-compressed, row groups of 1M rows. Samples
    without ids are written as `str(i)`. The same input always gives the same bytes. Raises
    InputFormatError for an unknown format, patch counts in the text format (it has no place for
    them), or ids the format cannot read back (duplicate, empty, or for text containing a newline
    or starting with whitespace).
    """
    path = Path(path)
    if format is None:
        format = _suffix_format(path)
        if format is None:
            raise InputFormatError(
                f"{path}: cannot infer the format from the name; use a .parquet, .jsonl, .txt or "
                ".npy suffix (the last three optionally followed by .zst) or pass format="
            )
    if format not in FORMATS:
        raise InputFormatError(f"unknown lengths format {format!r}; expected one of {FORMATS}")
    if format == "text" and lengths.patches is not None:
        raise InputFormatError("the text format has no place for patch counts; use jsonl or npy")
    if not path.parent.is_dir():
        raise InputFormatError(f"{path}: folder {path.parent} does not exist")
    ids = (
        lengths.ids
        if lengths.ids is not None
        else SampleIds(pa.array(np.arange(len(lengths)).astype(str), pa.large_string()))
    )
    if format != "npy":
        _check_writable_ids(ids, text=format == "text")
    if format == "parquet":
        _write_parquet(path, ids, lengths)
        return
    if format == "npy":
        data = _encode_npy(lengths)
    elif format == "jsonl":
        data = _encode_jsonl(ids, lengths)
    else:
        data = "".join(map("{}:{}\n".format, ids, lengths.tokens.tolist())).encode()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    path.write_bytes(data)


def _write_parquet(path: Path, ids: SampleIds, lengths: SampleLengths) -> None:
    columns = {"id": ids.arrow.cast(pa.string()), "tokens": pa.array(lengths.tokens)}
    if lengths.patches is not None:
        columns["patches"] = pa.array(lengths.patches)
    pq.write_table(
        pa.table(columns), path, row_group_size=1 << 20, compression="zstd", store_schema=False
    )


def _check_writable_ids(ids: SampleIds, text: bool) -> None:
    array = ids.arrow
    empty = pc.equal(pc.binary_length(array), 0).to_numpy(zero_copy_only=False)
    bad = empty
    if text:
        bad = bad | pc.match_substring(array, "\n").to_numpy(zero_copy_only=False)
        bad = bad | pc.match_substring_regex(array, "^[ \t\n\r\x0b\x0c]").to_numpy(
            zero_copy_only=False
        )
    if bad.any():
        index = int(np.argmax(bad))
        if empty[index]:
            raise InputFormatError(f"sample {index} has an empty id")
        raise InputFormatError(
            f"sample {index} id {_shorten(ids[index])} cannot be written as text "
            "(it contains a newline or starts with whitespace)"
        )
    duplicate = ids.first_duplicate()
    if duplicate is not None:
        first, second = duplicate
        raise InputFormatError(
            f"samples {first} and {second} have the same id {_shorten(ids[first])}"
        )


def _encode_jsonl(ids: SampleIds, lengths: SampleLengths) -> bytes:
    encode = msgspec.json.Encoder().encode
    tokens = lengths.tokens.tolist()
    if lengths.patches is None:
        rows = map(_JsonlRowOut, ids, tokens)
    else:
        rows = map(_JsonlRowWithPatchesOut, ids, tokens, lengths.patches.tolist())
    return b"".join(encode(row) + b"\n" for row in rows)


def _encode_npy(lengths: SampleLengths) -> bytes:
    if lengths.patches is None:
        array = lengths.tokens.astype("<i4")
    else:
        array = np.stack([lengths.tokens, lengths.patches], axis=1).astype("<i4")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
