"""read_lengths / write_lengths: every format round-trips, and every malformed input is reported
with its file and line (or npy index)."""

import io
import json
import re
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ov_packing import inputs
from ov_packing.errors import InputFormatError
from ov_packing.inputs import INT32_MAX, SampleLengths, iter_lengths, read_lengths, write_lengths
from ov_packing.sample_ids import SampleIds

IDS = ["coco/000001.jpg", "a:b:c", "llava/ä漢字.png", "x" * 300]
TOKENS = np.array([17, 70_000, 1, INT32_MAX], dtype=np.int32)
PATCHES = np.array([4, 65_536, 1, 123_456], dtype=np.int32)


def write_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def assert_same(read, ids, tokens, patches):
    assert read.ids == ids
    assert read.tokens.dtype == np.int32
    np.testing.assert_array_equal(read.tokens, tokens)
    if patches is None:
        assert read.patches is None
    else:
        assert read.patches.dtype == np.int32
        np.testing.assert_array_equal(read.patches, patches)


def raises_at(path, where, what):
    """pytest.raises for an InputFormatError naming `path`, then `where` (a line or index)."""
    return pytest.raises(InputFormatError, match=re.escape(f"{path}{where}") + ".*" + what)


# ---- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "zst"])
@pytest.mark.parametrize(
    ("suffix", "with_patches"),
    [(".jsonl", False), (".jsonl", True), (".txt", False), (".npy", False), (".npy", True)],
)
def test_every_format_round_trips(tmp_path, suffix, with_patches, compressed):
    path = tmp_path / ("lengths" + suffix + (".zst" if compressed else ""))
    patches = PATCHES if with_patches else None
    ids = None if suffix == ".npy" else IDS
    write_lengths(path, SampleLengths("memory", ids, TOKENS, patches))
    assert path.read_bytes().startswith(b"\x28\xb5\x2f\xfd") == compressed
    read = read_lengths(path)
    assert read.source == str(path)
    assert len(read) == len(TOKENS)
    assert_same(read, ids, TOKENS, patches)


@pytest.mark.parametrize("name", ["a.jsonl", "a.txt", "a.npy", "a.jsonl.zst", "a.npy.zst"])
def test_writing_is_deterministic(tmp_path, name):
    lengths = SampleLengths("memory", IDS, TOKENS, None)
    write_lengths(tmp_path / name, lengths)
    first = (tmp_path / name).read_bytes()
    write_lengths(tmp_path / name, SampleLengths("copy", list(IDS), TOKENS.copy(), None))
    assert (tmp_path / name).read_bytes() == first


def test_samples_without_ids_are_written_as_their_index(tmp_path):
    write_lengths(tmp_path / "a.jsonl", SampleLengths("memory", None, [5, 6], [1, 2]))
    assert (tmp_path / "a.jsonl").read_text() == (
        '{"id":"0","tokens":5,"patches":1}\n{"id":"1","tokens":6,"patches":2}\n'
    )
    write_lengths(tmp_path / "a.txt", SampleLengths("memory", None, [5, 6], None))
    assert (tmp_path / "a.txt").read_text() == "0:5\n1:6\n"


def test_explicit_format_overrides_the_suffix(tmp_path):
    write_lengths(tmp_path / "lengths.data", SampleLengths("memory", ["a"], [3], None), "text")
    assert (tmp_path / "lengths.data").read_text() == "a:3\n"
    assert read_lengths(tmp_path / "lengths.data").ids == ["a"]


def test_npy_2d_holds_tokens_and_patches_columns(tmp_path):
    write_lengths(tmp_path / "a.npy", SampleLengths("memory", None, [5, 6], [1, 2]))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [[5, 1], [6, 2]])


# ---- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".txt.zst", ".npy.zst"])
def test_zstd_is_detected_by_magic_without_the_suffix(tmp_path, suffix):
    ids = None if suffix == ".npy.zst" else IDS
    write_lengths(tmp_path / ("a" + suffix), SampleLengths("memory", ids, TOKENS, None))
    renamed = (tmp_path / ("a" + suffix)).rename(tmp_path / "lengths.bin")
    assert_same(read_lengths(renamed), ids, TOKENS, None)


def test_zstd_frames_without_content_size_and_concatenated_frames_are_read(tmp_path):
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(streamed, closefd=False) as writer:
        writer.write(b"a:1\nb:2\n")
    second = zstandard.ZstdCompressor().compress(b"c:3\n")
    path = write_file(tmp_path, "a.txt.zst", streamed.getvalue() + second)
    assert_same(read_lengths(path), ["a", "b", "c"], [1, 2, 3], None)


def test_truncated_zstd_is_an_error(tmp_path):
    data = zstandard.ZstdCompressor().compress(b'{"id": "a", "tokens": 1}\n' * 1000)
    path = write_file(tmp_path, "a.jsonl.zst", data[: len(data) // 2])
    with pytest.raises(InputFormatError, match=re.escape(f"{path}: zstd data is truncated")):
        read_lengths(path)


def test_zst_suffix_on_uncompressed_content_is_an_error(tmp_path):
    path = write_file(tmp_path, "a.txt.zst", "a:1\n")
    with pytest.raises(InputFormatError, match="not zstd-compressed"):
        read_lengths(path)


@pytest.mark.parametrize(
    ("content", "ids", "patches"),
    [
        ('\n  {"id": "a", "tokens": 3, "patches": 2}\n', ["a"], [2]),
        ("a:3\n", ["a"], None),
    ],
)
def test_format_is_detected_by_content_without_a_known_suffix(tmp_path, content, ids, patches):
    assert_same(read_lengths(write_file(tmp_path, "lengths", content)), ids, [3], patches)


def test_txt_suffix_reads_a_first_name_starting_with_a_brace_as_text(tmp_path):
    path = write_file(tmp_path, "a.txt", "{braces}:3\nb:4\n")
    assert_same(read_lengths(path), ["{braces}", "b"], [3, 4], None)


def test_txt_suffix_still_detects_jsonl_content(tmp_path):
    path = write_file(tmp_path, "a.txt", '{"id": "a:b", "tokens": 3}\n')
    assert_same(read_lengths(path), ["a:b"], [3], None)


def test_npy_is_detected_by_magic_whatever_the_suffix(tmp_path):
    path = write_file(tmp_path, "lengths.txt", npy_bytes(np.array([4, 5], dtype=np.int64)))
    assert_same(read_lengths(path), None, [4, 5], None)


def test_jsonl_suffix_gives_a_json_error_for_a_non_object_first_line(tmp_path):
    path = write_file(tmp_path, "a.jsonl", "a:3\n")
    with raises_at(path, ":1:", "malformed JSON"):
        read_lengths(path)


def test_npy_suffix_on_other_content_is_an_error(tmp_path):
    path = write_file(tmp_path, "a.npy", "a:3\n")
    with pytest.raises(InputFormatError, match=re.escape(f"{path}: not an npy file")):
        read_lengths(path)


# ---- accepted variations -----------------------------------------------------------------------


def test_text_name_is_split_at_the_last_colon(tmp_path):
    path = write_file(tmp_path, "a.txt", "s3://bucket/x.jpg:12\nhttp://h:80/y:7\n")
    assert_same(read_lengths(path), ["s3://bucket/x.jpg", "http://h:80/y"], [12, 7], None)


def test_text_lines_are_stripped_and_blank_lines_skipped(tmp_path):
    path = write_file(tmp_path, "a.txt", "\n  a b:1 \r\n\t\nc:  2\r\n\n   \n+d:+3")
    assert_same(read_lengths(path), ["a b", "c", "+d"], [1, 2, 3], None)


def test_jsonl_extra_keys_blank_lines_crlf_and_bom_are_accepted(tmp_path):
    content = (
        '\ufeff{"id": "a", "tokens": 3, "source": {"x": [1, 2]}}\r\n'
        "\r\n"
        '   {"tokens": 4, "id": "b", "image": null}  \n'
    )
    assert_same(read_lengths(write_file(tmp_path, "a.jsonl", content)), ["a", "b"], [3, 4], None)


def test_ids_longer_than_256_characters_round_trip(tmp_path):
    ids = ["p" * 257, "q" * 5000]
    for name in ("a.jsonl", "a.txt"):
        write_lengths(tmp_path / name, SampleLengths("memory", ids, [1, 2], None))
        assert read_lengths(tmp_path / name).ids == ids


def test_zero_patches_mark_text_only_samples(tmp_path):
    path = write_file(tmp_path, "a.jsonl", '{"id": "a", "tokens": 5, "patches": 0}\n')
    assert read_lengths(path).patches.tolist() == [0]
    npy = write_file(tmp_path, "a.npy", npy_bytes(np.array([[5, 0]])))
    assert read_lengths(npy).patches.tolist() == [0]


def test_lengths_above_65535_are_kept_exactly(tmp_path):
    path = write_file(tmp_path, "a.txt", f"a:65536\nb:1000000\nc:{INT32_MAX}\n")
    assert read_lengths(path).tokens.tolist() == [65_536, 1_000_000, INT32_MAX]


@pytest.mark.parametrize("name", ["a.jsonl", "a.txt", "lengths", "a.jsonl.zst"])
@pytest.mark.parametrize("content", [b"", b"\n  \n\r\n\t"])
def test_empty_input_gives_zero_samples(tmp_path, name, content):
    if name.endswith(".zst"):
        content = zstandard.ZstdCompressor().compress(content)
    read = read_lengths(write_file(tmp_path, name, content))
    assert len(read) == 0
    assert read.ids == []
    assert read.tokens.dtype == np.int32
    assert read.patches is None


def test_empty_npy_gives_zero_samples_without_ids(tmp_path):
    read = read_lengths(write_file(tmp_path, "a.npy", npy_bytes(np.zeros(0, dtype=np.int32))))
    assert len(read) == 0
    assert read.ids is None


# ---- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ('{"id": "a", "tokens": 1}\n{"id": "b", "tokens": 2,}\n', 2, "malformed JSON"),
        ('{"id": "a", "tokens": 1}\n\n[1, 2]\n', 3, "expected a JSON object"),
        ('{"id": "a", "tokens": 1}\n"text"\n', 2, "expected a JSON object"),
        ('{"tokens": 1}\n', 1, 'missing "id"'),
        ('{"id": "a"}\n', 1, 'missing "tokens"'),
        ('{"id": 7, "tokens": 1}\n', 1, '"id" must be a string, got 7'),
        ('{"id": "", "tokens": 1}\n', 1, '"id" is empty'),
        ('{"id": "a", "tokens": 3.0}\n', 1, '"tokens" must be an integer, got 3.0'),
        ('{"id": "a", "tokens": true}\n', 1, '"tokens" must be an integer, got True'),
        ('{"id": "a", "tokens": "3"}\n', 1, "\"tokens\" must be an integer, got '3'"),
        ('{"id": "a", "tokens": 1, "patches": 2.5}\n', 1, '"patches" must be an integer'),
        ('{"id": "a", "tokens": 1, "patches": null}\n', 1, '"patches" must be an integer'),
        ('{"id": "a", "tokens": 0}\n', 1, '"tokens" must be positive, got 0'),
        ('{"id": "a", "tokens": -5}\n', 1, '"tokens" must be positive, got -5'),
        ('{"id": "a", "tokens": 1, "patches": -1}\n', 1, '"patches" must not be negative, got -1'),
        ('{"id": "a", "tokens": 2147483648}\n', 1, "must be at most 2147483647"),
        ('{"id": "a", "tokens": 1' + "0" * 30 + "}\n", 1, "must be at most 2147483647"),
        ('{"id": "a", "tokens": 1}\n{"id": "a", "tokens": 2}\n', 2, "duplicate id 'a'.*line 1"),
        (
            '{"id": "a", "tokens": 1, "patches": 1}\n\n{"id": "b", "tokens": 2}\n',
            3,
            'has no "patches" but line 1 has',
        ),
        (
            '{"id": "a", "tokens": 1}\n{"id": "b", "tokens": 2, "patches": 1}\n',
            2,
            'has "patches" but line 1 has no',
        ),
        ('{"id": "a", "tokens": 1} {"id": "b", "tokens": 2}\n', 1, "malformed JSON"),
        # One value spanning two lines and two values on one line: counts match, lines do not.
        ('{"id": "a", "tokens": 1, "x": [1\n2]} {"id": "b", "tokens": 2}\n', 1, "malformed JSON"),
        (b'{"id": "\xff", "tokens": 1}\n', 1, "not valid UTF-8"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, line, what):
    path = write_file(tmp_path, "a.jsonl", content)
    with raises_at(path, f":{line}:", what):
        read_lengths(path)


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("a:1\nno colon here\n", 2, "found no ':'"),
        ("a:1\n\nb:3.5\n", 3, "length '3.5' is not an integer"),
        ("a:1\nb:\n", 2, "length '' is not an integer"),
        ("a:1\nb:x12\n", 2, "is not an integer"),
        ("a:0\n", 1, "length must be positive, got 0"),
        ("a:1\nb:-4\n", 2, "length must be positive, got -4"),
        ("a:2147483648\n", 1, "must be at most 2147483647"),
        ("a:99999999999999999999999\n", 1, "must be at most 2147483647"),
        (":5\n", 1, "empty sample name"),
        ("a:1\nb:2\n\na:3\n", 4, "duplicate id 'a'.*line 1"),
        (b"a:1\n\xff\xfe:2\n", 2, "not valid UTF-8"),
    ],
)
def test_malformed_text_names_file_and_line(tmp_path, content, line, what):
    path = write_file(tmp_path, "a.txt", content)
    with raises_at(path, f":{line}:", what):
        read_lengths(path)


@pytest.mark.parametrize(
    ("array", "what"),
    [
        (np.array([1.0, 2.0]), "must hold integers, got dtype float64"),
        (np.array([True, False]), "must hold integers, got dtype bool"),
        (np.ones((3, 3), dtype=np.int32), r"shape \(n,\) or \(n, 2\), got \(3, 3\)"),
        (np.ones((2, 2, 2), dtype=np.int32), "got \\(2, 2, 2\\)"),
        (np.array(5, dtype=np.int32), r"got \(\)"),
    ],
)
def test_npy_of_wrong_dtype_or_shape_is_an_error(tmp_path, array, what):
    path = write_file(tmp_path, "a.npy", npy_bytes(array))
    with pytest.raises(InputFormatError, match=re.escape(f"{path}: ") + ".*" + what):
        read_lengths(path)


@pytest.mark.parametrize(
    ("array", "index", "what"),
    [
        (np.array([3, 1, 0, -1], dtype=np.int64), 2, "tokens must be positive, got 0"),
        (np.array([[3, 0], [2, -7]], dtype=np.int16), 1, "patches must not be negative, got -7"),
        (np.array([[3, 0], [0, 0]], dtype=np.int16), 1, "tokens must be positive, got 0"),
        (np.array([1, 2**32], dtype=np.uint64), 1, "tokens must be at most 2147483647"),
    ],
)
def test_npy_values_out_of_range_name_the_index(tmp_path, array, index, what):
    path = write_file(tmp_path, "a.npy", npy_bytes(array))
    with raises_at(path, f": index {index}:", what):
        read_lengths(path)


def test_truncated_npy_is_an_error(tmp_path):
    path = write_file(tmp_path, "a.npy", npy_bytes(np.arange(1, 100))[:-8])
    with pytest.raises(InputFormatError, match=re.escape(f"{path}: unreadable npy")):
        read_lengths(path)


def test_pickled_npy_is_refused(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "a"], dtype=object), allow_pickle=True)
    path = write_file(tmp_path, "a.npy", buffer.getvalue())
    with pytest.raises(InputFormatError, match=re.escape(str(path))):
        read_lengths(path)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(InputFormatError, match=re.escape(f"{path}: no such file")):
        read_lengths(str(path))


def test_directory_is_not_a_lengths_file(tmp_path):
    with pytest.raises(InputFormatError, match="is a directory"):
        read_lengths(tmp_path)


# ---- SampleLengths and write_lengths refusals --------------------------------------------------


def test_sample_lengths_converts_integer_arrays_to_int32():
    lengths = SampleLengths("memory", None, np.array([1, 2], dtype=np.uint64), [3, 4])
    assert lengths.tokens.dtype == np.int32
    assert lengths.patches.dtype == np.int32


@pytest.mark.parametrize(
    ("ids", "tokens", "patches", "what"),
    [
        (["a"], [1, 2], None, "ids has 1 entries but tokens 2"),
        (None, [1, 2], [1], "patches has 1 entries but tokens 2"),
        (None, [1, 0], None, r"tokens\[1\] is 0, must be in \[1, "),
        (None, [1, 2], [0, -1], r"patches\[1\] is -1, must be in \[0, "),
        (None, [2**31], None, "must be in"),
        (None, [1.5], None, "must be integers"),
        (None, [[1, 2]], None, "must be 1-D"),
    ],
)
def test_sample_lengths_rejects_inconsistent_fields(ids, tokens, patches, what):
    with pytest.raises(ValueError, match=what):
        SampleLengths("memory", ids, tokens, patches)


def test_text_format_refuses_patch_counts(tmp_path):
    with pytest.raises(ValueError, match="no place for patch counts"):
        write_lengths(tmp_path / "a.txt", SampleLengths("memory", ["a"], [1], [1]))


@pytest.mark.parametrize("bad_id", ["two\nlines", " leading space", "\ttab"])
def test_text_format_refuses_ids_it_cannot_read_back(tmp_path, bad_id):
    with pytest.raises(ValueError, match="cannot be written as text"):
        write_lengths(tmp_path / "a.txt", SampleLengths("memory", ["ok", bad_id], [1, 2], None))


@pytest.mark.parametrize("name", ["a.jsonl", "a.txt"])
def test_writing_refuses_duplicate_and_empty_ids(tmp_path, name):
    with pytest.raises(ValueError, match="samples 0 and 2 have the same id 'a'"):
        write_lengths(tmp_path / name, SampleLengths("memory", ["a", "b", "a"], [1, 2, 3], None))
    with pytest.raises(ValueError, match="sample 1 has an empty id"):
        write_lengths(tmp_path / name, SampleLengths("memory", ["a", ""], [1, 2], None))


def test_writing_needs_a_known_suffix_or_format(tmp_path):
    lengths = SampleLengths("memory", ["a"], [1], None)
    with pytest.raises(ValueError, match="cannot infer the format"):
        write_lengths(tmp_path / "a.csv", lengths)
    with pytest.raises(ValueError, match="unknown lengths format 'csv'"):
        write_lengths(tmp_path / "a.jsonl", lengths, format="csv")


# ---- properties --------------------------------------------------------------------------------

TEXT_ID_ALPHABET = string.ascii_letters + string.digits + " :/._-{}\"'\\\r,é漢"
counts = st.integers(1, INT32_MAX)
patch_counts = st.integers(0, INT32_MAX)


@st.composite
def samples(draw, id_strategy, with_patches):
    ids = draw(st.lists(id_strategy, max_size=20, unique=True))
    tokens = draw(st.lists(counts, min_size=len(ids), max_size=len(ids)))
    patches = (
        draw(st.lists(patch_counts, min_size=len(ids), max_size=len(ids))) if with_patches else None
    )
    return SampleLengths("memory", ids, np.array(tokens, dtype=np.int32), patches)


jsonl_ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
text_ids = st.builds(
    str.__add__,
    st.sampled_from([c for c in TEXT_ID_ALPHABET if not c.isspace()]),
    st.text(TEXT_ID_ALPHABET, max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    with_patches=st.booleans(),
    compressed=st.booleans(),
)
def test_jsonl_round_trips_any_ids_and_lengths(tmp_path_factory, data, with_patches, compressed):
    lengths = data.draw(samples(jsonl_ids, with_patches))
    path = tmp_path_factory.mktemp("jsonl") / ("a.jsonl.zst" if compressed else "a.jsonl")
    write_lengths(path, lengths)
    assert_same(
        read_lengths(path), lengths.ids, lengths.tokens, lengths.patches if len(lengths) else None
    )


@settings(max_examples=60, deadline=None)
@given(lengths=samples(text_ids, with_patches=False))
def test_text_round_trips_any_ids_and_lengths(tmp_path_factory, lengths):
    path = tmp_path_factory.mktemp("text") / "a.txt"
    write_lengths(path, lengths)
    assert_same(read_lengths(path), lengths.ids, lengths.tokens, None)


def reference_text_rows(content):
    """The text format by its definition, one line at a time; None where a line is malformed."""
    rows = []
    for line in content.split("\n"):
        line = line.strip(" \t\r\x0b\x0c")
        if not line:
            continue
        name, _, length = line.rpartition(":")
        if not re.fullmatch(r"[+-]?[0-9]+", length.strip(" \t\r\x0b\x0c")) or not name:
            return None
        if not 1 <= int(length) <= INT32_MAX:
            return None
        rows.append((name, int(length)))
    return rows if len({name for name, _ in rows}) == len(rows) else None


@settings(max_examples=150, deadline=None)
@given(content=st.text(st.sampled_from("ab:0123 \t\r\n-+{}"), max_size=60))
def test_text_reader_matches_the_format_definition(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("text") / "a.txt"
    path.write_text(content, newline="")
    expected = reference_text_rows(content)
    if expected is None:
        with pytest.raises(InputFormatError, match=re.escape(str(path))):
            read_lengths(path)
    else:
        read = read_lengths(path)
        assert list(zip(read.ids, read.tokens.tolist(), strict=True)) == expected


json_fragments = st.sampled_from(
    [
        '{"id": "a", "tokens": 1}',
        '{"id": "b", "tokens": 2}',
        '{"id": "c", "tokens": 3, "x": [1',
        "2]}",
        "\n",
        "\n",
        " ",
        "{",
        "}",
        ",",
    ]
)


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(json_fragments, max_size=8))
def test_jsonl_reader_accepts_exactly_one_object_per_line(tmp_path_factory, pieces):
    content = "".join(pieces)
    path = tmp_path_factory.mktemp("jsonl") / "a.jsonl"
    path.write_text(content)
    try:
        rows = [json.loads(line) for line in content.split("\n") if line.strip()]
        valid = all(isinstance(row, dict) and {"id", "tokens"} <= row.keys() for row in rows)
    except json.JSONDecodeError:
        valid = False
    valid = valid and len({row["id"] for row in rows}) == len(rows)
    if not valid:
        with pytest.raises(InputFormatError, match=re.escape(str(path))):
            read_lengths(path)
    else:
        assert read_lengths(path).ids == [row["id"] for row in rows]


# ---- Arrow: Parquet, ids as one Arrow column, streamed blocks ----------------------------------


def test_ids_are_one_arrow_string_column(tmp_path):
    path = tmp_path / "a.jsonl"
    write_lengths(path, SampleLengths("memory", IDS, TOKENS, PATCHES))
    ids = read_lengths(path).ids
    assert isinstance(ids, SampleIds)
    assert ids.arrow.type == pa.large_string()
    assert ids.arrow.to_pylist() == IDS
    assert ids == IDS
    assert ids[1] == "a:b:c"
    assert sorted(ids) == sorted(IDS)


@pytest.mark.parametrize("with_patches", [False, True])
def test_parquet_round_trips(tmp_path, with_patches):
    path = tmp_path / "lengths.parquet"
    patches = PATCHES if with_patches else None
    write_lengths(path, SampleLengths("memory", IDS, TOKENS, patches))
    table = pq.read_table(path)
    assert table.column_names == ["id", "tokens"] + (["patches"] if with_patches else [])
    assert_same(read_lengths(path), IDS, TOKENS, patches)
    # Content decides, not the name.
    renamed = tmp_path / "lengths.bin"
    renamed.write_bytes(path.read_bytes())
    assert_same(read_lengths(renamed), IDS, TOKENS, patches)


def test_parquet_with_other_columns_and_types_is_read(tmp_path):
    path = tmp_path / "a.parquet"
    table = pa.table(
        {
            "caption": ["x", "y", "z"],
            "id": pa.array(["a", "b", "c"], pa.large_string()),
            "tokens": pa.array([5, 6, 7], pa.int64()),
            "patches": pa.array([0, 1, 2], pa.uint16()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    assert_same(read_lengths(path), ["a", "b", "c"], [5, 6, 7], [0, 1, 2])


@pytest.mark.parametrize(
    ("columns", "what"),
    [
        ({"tokens": [1]}, "Parquet file has no 'id' column"),
        ({"id": ["a"]}, "Parquet file has no 'tokens' column"),
        ({"id": [1], "tokens": [1]}, "column 'id' must hold strings, has int64"),
        ({"id": ["a"], "tokens": [1.5]}, "column 'tokens' must hold integers, has double"),
        ({"id": ["a", "b", "c"], "tokens": [1, 0, 3]}, 'row 1: "tokens" must be positive, got 0'),
        ({"id": ["a", None], "tokens": [1, 2]}, 'row 1: "id" is null'),
        ({"id": ["a", ""], "tokens": [1, 2]}, 'row 1: "id" is empty'),
        ({"id": ["a", "b"], "tokens": [1, None]}, 'row 1: "tokens" is null'),
        ({"id": ["a"], "tokens": [2**31]}, 'row 0: "tokens" must be at most 2147483647'),
        (
            {"id": ["a", "b"], "tokens": [1, 2], "patches": [3, -1]},
            'row 1: "patches" must not be negative, got -1',
        ),
        (
            {"id": ["a", "b", "c", "b"], "tokens": [1, 2, 3, 4]},
            "row 3: duplicate id 'b' \\(first in row 1\\)",
        ),
    ],
)
def test_malformed_parquet_names_file_and_row(tmp_path, columns, what):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=2)
    with pytest.raises(InputFormatError, match=re.escape(str(path)) + ": " + what):
        read_lengths(path)


def test_truncated_parquet_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "a.parquet"
    write_lengths(path, SampleLengths("memory", IDS, TOKENS, None))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputFormatError, match=re.escape(str(path)) + ": not a readable Parquet"):
        read_lengths(path)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~64 bytes read 16 bytes at a time, so a few rows span several blocks."""
    monkeypatch.setattr(inputs, "_BLOCK_BYTES", 64)
    monkeypatch.setattr(inputs, "_READ_BYTES", 16)
    monkeypatch.setattr(inputs, "_PARQUET_BATCH", 3)


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.zst", "a.txt", "a.parquet"])
def test_reading_in_many_blocks_gives_the_same_samples(tmp_path, small_blocks, name):
    ids = [f"sample/{i:03d}" for i in range(50)]
    tokens = np.arange(1, 51, dtype=np.int32) * 7
    patches = None if name == "a.txt" else np.arange(50, dtype=np.int32)
    path = tmp_path / name
    write_lengths(path, SampleLengths("memory", ids, tokens, patches))
    assert_same(read_lengths(path), ids, tokens, patches)
    blocks = list(iter_lengths(path))
    assert len(blocks) > 5
    assert [i for block in blocks for i in block.ids] == ids


def test_errors_in_later_blocks_name_the_file_line(tmp_path, small_blocks):
    rows = [f'{{"id": "r{i}", "tokens": {i + 1}}}' for i in range(30)]
    path = write_file(tmp_path, "a.jsonl", "\n".join([*rows[:20], "", '{"id": "x"}', *rows[20:]]))
    with raises_at(path, ":22:", 'missing "tokens"'):
        read_lengths(path)
    path = write_file(tmp_path, "b.jsonl", "\n".join([*rows[:25], '{"id": "r3", "tokens": 9}']))
    with raises_at(path, ":26:", "duplicate id 'r3'.*first on line 4"):
        read_lengths(path)
    with_patches = [f'{{"id": "p{i}", "tokens": 1, "patches": 2}}' for i in range(20)]
    path = write_file(
        tmp_path, "c.jsonl", "\n".join(["", *with_patches, '{"id": "q", "tokens": 1}'])
    )
    with raises_at(path, ":22:", 'has no "patches" but line 2 has'):
        read_lengths(path)
    text = "".join(f"name:{i}:{i + 1}\n" for i in range(40)) + "\n\nname:3:1\n"
    path = write_file(tmp_path, "d.txt", text)
    with raises_at(path, ":43:", "duplicate id 'name:3'.*first on line 4"):
        read_lengths(path)


def test_zstd_truncated_in_a_later_block_is_an_error(tmp_path, small_blocks):
    path = tmp_path / "a.jsonl.zst"
    write_lengths(
        path,
        SampleLengths("memory", [f"s{i}" for i in range(100)], np.ones(100, dtype=np.int32), None),
    )
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputFormatError, match="zstd data is truncated"):
        read_lengths(path)
