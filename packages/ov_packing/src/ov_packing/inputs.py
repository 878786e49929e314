"""Reading and writing the per-sample lengths the packer consumes.

The packer's input is numbers: for every sample an id, its LLM token count and, optionally, its ViT
patch count. Three formats carry them, each optionally zstd-compressed:

- JSONL, one object per line: `{"id": "a/b.jpg", "tokens": 1234, "patches": 980}`. "patches" is
  optional, but either every row has it or none does; other keys are ignored.
- Text, one `name:length` per line, as written by the original LLaVA-OneVision-1.5 release. The name
  is everything before the last ':' (names may contain ':'); there are no patch counts.
- `.npy`: a 1-D integer array of token counts, or an (n, 2) integer array of [tokens, patches].
  Samples have no ids; sample i is called `str(i)`. Loaded with `allow_pickle=False`.

Detection goes by content first: a file starting with the zstd magic `28 B5 2F FD` is decompressed
(whatever its name), then the `\\x93NUMPY` magic means npy, a first non-blank character `{` means
JSONL, and anything else is read as text. The name is a hint on top of that: a `.npy` file that is
not npy is an error, a `.jsonl` file is always parsed as JSONL (so a broken first line gets a JSON
error rather than a text one), a `.txt` file is JSONL only if its first line also ends with '}'
(so a text name may start with '{'), and a non-empty `.zst` file that is not zstd is an error.
Text is UTF-8; a leading byte-order mark is ignored.

Error policy: every malformed input raises `InputFormatError` naming the file and the 1-based line
(the array index for npy) and what is wrong; nothing is skipped or clamped. Blank lines are skipped
but still counted, so line numbers match an editor's. Token counts must be positive, patch counts
non-negative (a text-only sample has no patches, and the packing core accepts 0), both must fit in
int32; ids must be non-empty and unique. An empty input is not an error: it yields zero samples.

Speed: a million rows must read in about a second, so the common case never runs Python per line.
JSONL rows are decoded by msgspec in one call, text rows by two regex passes over the whole buffer
(one for the lengths, one leaving the names). When that fast path fails, a slow line-by-line
parser runs instead; it defines what is accepted and finds the first bad line to report, so the
fast path only has to be conservative.
"""

import io
import os
import re
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import zstandard

from ov_packing.errors import InputFormatError

INT32_MAX = int(np.iinfo(np.int32).max)
FORMATS = ("jsonl", "text", "npy")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NPY_MAGIC = b"\x93NUMPY"
_UTF8_BOM = b"\xef\xbb\xbf"
_ZSTD_LEVEL = 3
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".txt": "text", ".npy": "npy"}
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


class _JsonlRow(msgspec.Struct, forbid_unknown_fields=False):
    """One JSONL row as the fast path accepts it; anything else goes to the slow path."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    tokens: _TokenCount
    patches: _PatchCount | msgspec.UnsetType = msgspec.UNSET


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
    patches non-negative, both fit in int32); it does not check that ids are unique (the readers and
    `write_lengths` do).
    """

    source: str
    """The path as given, for messages."""
    ids: list[str] | None
    """Sample ids, or None for npy input (sample i is then called `str(i)`)."""
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
        if self.ids is not None and len(self.ids) != len(tokens):
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


def read_lengths(path: str | Path) -> SampleLengths:
    """Read per-sample lengths from a JSONL, text or npy file, optionally zstd-compressed.

    Raises `InputFormatError` naming the file and line (or npy index) on any malformed input.
    """
    source = os.fspath(path)
    data = _read_decompressed(Path(path), source)
    hint = _suffix_format(Path(path))
    if data.startswith(_NPY_MAGIC):
        return _parse_npy(data, source)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    first = _FIRST_NON_BLANK.search(data)
    if first is None:
        empty = np.zeros(0, dtype=np.int32)
        return SampleLengths(source, None if hint == "npy" else [], empty, None)
    if hint == "npy":
        raise InputFormatError(f"{source}: not an npy file (it does not start with the npy magic)")
    if hint == "jsonl" or _looks_like_jsonl(data, first.start(), hint):
        return _parse_jsonl(data, source)
    return _parse_text(data, source)


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


def _read_decompressed(path: Path, source: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputFormatError(f"{source}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFormatError(f"{source}: is a directory, not a lengths file") from exc
    if not data.startswith(_ZSTD_MAGIC):
        if path.suffix == ".zst" and data:
            raise InputFormatError(f"{source}: has a .zst suffix but is not zstd-compressed")
        return data
    # decompressobj rather than stream_reader: a stream reader returns a truncated frame's partial
    # output without complaint, and `eof` is how a truncated file is told from a whole one.
    chunks = []
    try:
        while data:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            chunks.append(decompressor.decompress(data))
            if not decompressor.eof:
                raise InputFormatError(f"{source}: zstd data is truncated")
            data = decompressor.unused_data
    except zstandard.ZstdError as exc:
        raise InputFormatError(f"{source}: corrupt zstd data ({exc})") from exc
    return b"".join(chunks)


def _stripped_lines(data: bytes) -> list[bytes]:
    return [line.strip() for line in data.split(b"\n")]


def _line_numbers(stripped: list[bytes]) -> list[int]:
    """1-based line numbers of the non-blank lines."""
    return [number for number, line in enumerate(stripped, 1) if line]


def _first_duplicate(ids: list[str]) -> tuple[int, int] | None:
    """Indices of the earliest repeat of an id and of its first occurrence, or None."""
    if len(set(ids)) == len(ids):
        return None
    first_index: dict[str, int] = {}
    for index, sample_id in enumerate(ids):
        if sample_id in first_index:
            return first_index[sample_id], index
        first_index[sample_id] = index
    raise AssertionError("unreachable: the set was smaller than the list")


def _check_unique(ids: list[str], data: bytes, source: str) -> None:
    """Raise on a repeated id; row i of `ids` must come from the i-th non-blank line of `data`."""
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        line_numbers = _line_numbers(_stripped_lines(data))
        first, second = line_numbers[duplicate[0]], line_numbers[duplicate[1]]
        sample_id = _shorten(ids[duplicate[1]])
        raise InputFormatError(
            f"{source}:{second}: duplicate id {sample_id} (first on line {first})"
        )


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- JSONL ------------------------------------------------------------------------------------


def _parse_jsonl(data: bytes, source: str) -> SampleLengths:
    stripped = _stripped_lines(data)
    nonblank = stripped if all(stripped) else [line for line in stripped if line]
    rows = _decode_jsonl_fast(data, nonblank)
    if rows is None:
        return _parse_jsonl_slow(data, source)
    ids = [row.id for row in rows]
    tokens = np.fromiter((row.tokens for row in rows), dtype=np.int32, count=len(rows))
    patch_values = [row.patches for row in rows]
    unset = patch_values.count(msgspec.UNSET)
    patches = None
    if unset == 0:
        patches = np.array(patch_values, dtype=np.int32)
    elif unset != len(rows):
        has_first = patch_values[0] is not msgspec.UNSET
        index = next(i for i, p in enumerate(patch_values) if (p is not msgspec.UNSET) != has_first)
        line_numbers = _line_numbers(stripped)
        _raise_patch_pattern(source, line_numbers[index], line_numbers[0], has_first)
    _check_unique(ids, data, source)
    return SampleLengths(source, ids, tokens, patches)


def _decode_jsonl_fast(data: bytes, nonblank: list[bytes]) -> list[_JsonlRow] | None:
    """Decode every row in one msgspec call; None when anything is off (the slow path reports it).

    `decode_lines` reads whitespace-separated values, not lines, so two checks make it line-exact:
    one value per non-blank line, and every such line opening with '{' and closing with '}'. With
    the latter no value can continue onto the next line (after a closing '}' inside a value JSON
    needs ',', '}' or ']', never '{'), so equal counts mean exactly one object per line.
    """
    if not (
        all(map(bytes.startswith, nonblank, repeat(b"{")))
        and all(map(bytes.endswith, nonblank, repeat(b"}")))
    ):
        return None
    try:
        rows = msgspec.json.Decoder(_JsonlRow).decode_lines(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return rows if len(rows) == len(nonblank) else None


def _parse_jsonl_slow(data: bytes, source: str) -> SampleLengths:
    stripped = _stripped_lines(data)
    ids: list[str] = []
    tokens: list[int] = []
    patches: list[int] = []
    first_line = 0
    first_has_patches = False
    for number, line in enumerate(stripped, 1):
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
    _check_unique(ids, data, source)
    return SampleLengths(
        source,
        ids,
        np.array(tokens, dtype=np.int32),
        np.array(patches, dtype=np.int32) if patches else None,
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


def _parse_text(data: bytes, source: str) -> SampleLengths:
    parsed = _parse_text_fast(data)
    if parsed is None:
        return _parse_text_slow(data, source)
    ids, tokens = parsed
    _check_unique(ids, data, source)
    return SampleLengths(source, ids, tokens, None)


def _parse_text_fast(data: bytes) -> tuple[list[str], np.ndarray] | None:
    """Parse every row with whole-buffer regex passes; None when a line needs the slow path.

    On lines that are stripped, non-blank and '\n'-terminated, `name:digits` is exactly "the
    line ends with ':' and 1 to 10 digits": each match of `_TEXT_ROW_END` ends a line, so as many
    matches as lines means every line has one (the name is what precedes it, maybe with ':'s).
    """
    if not data.endswith(b"\n"):
        data += b"\n"
    if data[:1].isspace() or any(mark in data for mark in _UNCLEAN_LINE_MARKS):
        data = b"".join(line + b"\n" for line in _stripped_lines(data) if line)
    lengths = _TEXT_ROW_END.findall(data)
    if len(lengths) != data.count(b"\n"):
        return None
    # At most 10 digits cannot overflow int64; the range check is left to the slow path's messages.
    tokens = np.array(list(map(int, lengths)), dtype=np.int64)
    if tokens.size and (tokens.min() < 1 or tokens.max() > INT32_MAX):
        return None
    try:
        # Names cannot contain '\n' (lines were split on it), so one decode serves all of them.
        ids = _TEXT_ROW_END.sub(b"\n", data).decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError:
        return None
    if not all(ids):
        return None
    return ids, tokens.astype(np.int32)


def _parse_text_slow(data: bytes, source: str) -> SampleLengths:
    stripped = _stripped_lines(data)
    ids: list[str] = []
    tokens: list[int] = []
    for number, line in enumerate(stripped, 1):
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
        ids.append(sample_id)
        tokens.append(_check_count(int(length), "length", where, MIN_TOKENS))
    _check_unique(ids, data, source)
    return SampleLengths(source, ids, np.array(tokens, dtype=np.int32), None)


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
    """Write `lengths` as "jsonl", "text" or "npy"; zstd-compressed (level 3) if the name ends .zst.

    With `format=None` the format comes from the suffix (`.jsonl`, `.txt`, `.npy`, each optionally
    followed by `.zst`). Samples without ids are written as `str(i)`. The same input always gives
    the same bytes. Raises InputFormatError for an unknown format, patch counts in the text format
    (it has no place for them), or ids the format cannot read back (duplicate, empty, or for text
    containing a newline or starting with whitespace).
    """
    path = Path(path)
    if format is None:
        format = _suffix_format(path)
        if format is None:
            raise InputFormatError(
                f"{path}: cannot infer the format from the name; use a .jsonl, .txt or .npy "
                "suffix (optionally followed by .zst) or pass format="
            )
    if format not in FORMATS:
        raise InputFormatError(f"unknown lengths format {format!r}; expected one of {FORMATS}")
    if format == "text" and lengths.patches is not None:
        raise InputFormatError("the text format has no place for patch counts; use jsonl or npy")
    ids = lengths.ids if lengths.ids is not None else [str(i) for i in range(len(lengths))]
    if format == "npy":
        data = _encode_npy(lengths)
    else:
        _check_writable_ids(ids, text=format == "text")
        if format == "jsonl":
            data = _encode_jsonl(ids, lengths)
        else:
            data = "".join(map("{}:{}\n".format, ids, lengths.tokens.tolist())).encode()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    if not path.parent.is_dir():
        raise InputFormatError(f"{path}: folder {path.parent} does not exist")
    path.write_bytes(data)


def _check_writable_ids(ids: list[str], text: bool) -> None:
    for index, sample_id in enumerate(ids):
        if not sample_id:
            raise InputFormatError(f"sample {index} has an empty id")
        if text and ("\n" in sample_id or sample_id[0] in _ASCII_WHITESPACE):
            raise InputFormatError(
                f"sample {index} id {_shorten(sample_id)} cannot be written as text "
                "(it contains a newline or starts with whitespace)"
            )
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        first, second = duplicate
        raise InputFormatError(
            f"samples {first} and {second} have the same id {_shorten(ids[first])}"
        )


def _encode_jsonl(ids: list[str], lengths: SampleLengths) -> bytes:
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
