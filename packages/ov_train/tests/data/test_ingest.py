"""Ingesters: each format's rules, ids and source references; damaged input files stop the job
naming the file and the position; image paths and member names cannot leave their folder; JSONL
is streamed."""

import gzip
import io
import json
import re
import tarfile
import tracemalloc
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ov_train.data import ingest_llava
from ov_train.data.conversations import CAPTION_PROMPT
from ov_train.data.errors import InputConfigError, SourceFileError, UnsafePathError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_parquet import ParquetSource
from ov_train.data.ingest_webdataset import WebDatasetSource
from ov_train.data.raw_sample import RawSample

TURNS = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]


def _results(source, **options):
    return list(source.iter_samples(caption_prompt=CAPTION_PROMPT, **options))


def _results_until_error(source, error_type, match):
    """The results yielded before `source` raises `error_type` matching `match`."""
    results = []

    def read_all():
        results.extend(source.iter_samples(caption_prompt=CAPTION_PROMPT))

    with pytest.raises(error_type, match=match):
        read_all()
    return results


def _tar_bytes(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_llava_jsonl_rows_are_named_by_line_and_images_resolve_against_the_file_folder(tmp_path):
    lines = [
        json.dumps({"image": "a.png", "conversations": TURNS, "extra": 1}),
        "",
        "[1, 2]",
        json.dumps({"id": True, "conversations": TURNS}),
        json.dumps({"id": "t", "image": None, "conversations": TURNS[1:]}),
        json.dumps({"id": "c", "image": ["a.png", "b.png"], "conversations": [{"from": "human"}]}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines))
    first, broken, bad_id, text_only, bad_turn = _results(LlavaSource(path))
    assert first == RawSample(f"{path}:1", tuple(TURNS), (tmp_path / "a.png",), f"{path}:1")
    assert (broken.id, broken.reason) == (f"{path}:3", "malformed_row")  # JSON, not an object
    assert "id must be" in bad_id.detail
    assert text_only.images == ()  # null image and no placeholder: a text-only sample
    assert bad_turn.reason == "malformed_row"
    assert 'turn 0 lacks string "from" and "value"' in bad_turn.detail


def test_a_jsonl_line_that_is_not_json_stops_the_job_naming_the_file_and_line(tmp_path):
    good = json.dumps({"id": "a", "conversations": TURNS})
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n\n{{broken\n{good}\n")
    before = _results_until_error(
        LlavaSource(path), SourceFileError, rf"^{re.escape(str(path))}:3: line is not JSON .*byte "
    )
    assert [result.id for result in before] == ["a"]
    # A file cut in the middle of its last line: the message says it looks cut.
    data = f"{good}\n{good}\n".encode()
    path.write_bytes(data[:-9])
    with pytest.raises(SourceFileError, match=rf"{re.escape(str(path))}:2: .*the file looks cut"):
        _results(LlavaSource(path))


def test_a_json_list_cut_short_or_not_a_list_stops_the_job(tmp_path):
    path = tmp_path / "data.json"
    data = json.dumps([{"id": "a", "conversations": TURNS}] * 3).encode()
    path.write_bytes(data[:-20])
    with pytest.raises(
        SourceFileError,
        match=rf"^{re.escape(str(path))}: not valid JSON .*ends at byte {len(data) - 20}",
    ):
        _results(LlavaSource(path))
    path.write_text('[{"id": "a"}, {"not json": ')
    with pytest.raises(SourceFileError, match="not valid JSON"):
        _results(LlavaSource(path))
    path.write_text(json.dumps({"id": "x"}))
    with pytest.raises(SourceFileError, match=r"expected a JSON list of rows \(Expected `array`"):
        _results(LlavaSource(path))


def test_json_slices_read_back_every_row_whatever_the_unit_size(tmp_path):
    rows = [{"id": f"r{i}", "conversations": TURNS, "pad": " " * (i % 5)} for i in range(23)]
    path = tmp_path / "data.json"
    path.write_text("  [\n" + " ,\n  ".join(json.dumps(row) for row in rows) + "\n]\n")
    source = LlavaSource(path)
    expected = [sample.id for sample in _results(source)]
    assert expected == [f"r{i}" for i in range(23)]
    for unit_rows in (1, 4, 23, 100):
        pieces = list(source.slices(unit_rows=unit_rows))
        assert len(pieces) == -(-23 // unit_rows)
        assert [piece.first for piece in pieces] == list(range(0, 23, unit_rows))
        ids = [
            sample.id
            for piece in pieces
            for sample in source.read_slice(piece, caption_prompt=CAPTION_PROMPT)
        ]
        assert ids == expected
    # Offsets found by searching when the elements do not point into the file's bytes.
    data = path.read_bytes()
    elements = msgspec.json.decode(bytes(bytearray(data)), type=list[msgspec.Raw])
    assert ingest_llava._element_bounds(data, elements, 4) == ingest_llava._element_bounds(
        data, msgspec.json.decode(data, type=list[msgspec.Raw]), 4
    )
    copies = [msgspec.Raw(bytes(element)) for element in elements]
    assert ingest_llava._element_bounds(data, copies, 4) == ingest_llava._element_bounds(
        data, elements, 4
    )


def test_jsonl_slices_start_at_their_line_and_the_file_is_streamed(tmp_path, monkeypatch):
    # Slices: every row read back once, named by its line, whatever the unit size.
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"conversations": TURNS}) if i % 4 else "" for i in range(1, 31)]
    path.write_text("\n".join(lines))  # no newline at the end of the last line
    source = LlavaSource(path)
    expected = [f"{path}:{i}" for i in range(1, 31) if i % 4]
    for unit_rows in (1, 3, 7, 30, 64):
        pieces = list(source.slices(unit_rows=unit_rows))
        assert [piece.first for piece in pieces] == list(range(1, 31, unit_rows))
        ids = [
            sample.id
            for piece in pieces
            for sample in source.read_slice(piece, caption_prompt=CAPTION_PROMPT)
        ]
        assert ids == expected
    # Streaming: a 24 MB file of 100 kB rows is planned and read with a small peak of memory.
    monkeypatch.setattr(ingest_llava, "SCAN_BLOCK_BYTES", 1 << 20)
    row = json.dumps(
        {"conversations": [{"from": "human", "value": "x" * 100_000}, TURNS[1]]}
    ).encode()
    big = tmp_path / "big.jsonl"
    with big.open("wb") as file:
        for _ in range(240):
            file.write(row + b"\n")
    assert big.stat().st_size > 24_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in LlavaSource(big).iter_samples(caption_prompt=CAPTION_PROMPT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 240
    assert peak < 4_000_000, f"peak {peak:,} bytes: the file was not streamed"


def test_image_paths_cannot_leave_the_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "data.jsonl"

    def write(image):
        path.write_text(
            json.dumps({"id": "ok", "image": "a.png", "conversations": TURNS})
            + "\n"
            + json.dumps({"id": "bad", "image": image, "conversations": TURNS})
            + "\n"
        )

    source = LlavaSource(path, images)
    where = re.escape(f"{path}:2: sample 'bad', image 0")
    for image in ("../secret.png", "sub/../../x.png", ["a.png", "./../x.png"]):
        write(image)
        index = 1 if isinstance(image, list) else 0
        at = re.escape(f"{path}:2: sample 'bad', image {index}: path ")
        with pytest.raises(UnsafePathError, match=rf"^{at}.* has a '\.\.' component"):
            _results(source)
        with pytest.raises(UnsafePathError, match=r"'\.\.' component"):
            _results(source, allow_absolute_paths=True)  # '..' is refused whatever the flag
    write("/etc/passwd")
    with pytest.raises(UnsafePathError, match=rf"{where}: absolute path '/etc/passwd'.*--allow"):
        _results(source)
    ok, absolute = _results(source, allow_absolute_paths=True)
    assert ok.images == (images / "a.png",)
    assert absolute.images == (Path("/etc/passwd"),)
    write("a\x00.png")
    _, nul = _results(source)
    assert nul.reason == "malformed_row"
    assert "NUL" in nul.detail
    # Parquet cells that hold a path follow the same rule, relative to the file's folder.
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": ["p"],
            "image": pa.array([{"bytes": None, "path": "../x.png"}], image_type),
            "conversations": [json.dumps(TURNS)],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(UnsafePathError, match=r"d\.parquet#0: sample 'p', image 0: path '\.\./x"):
        _results(ParquetSource(tmp_path / "d.parquet"))


def test_llava_check_names_a_missing_file_or_image_folder(tmp_path):
    with pytest.raises(InputConfigError, match="LLaVA annotation file not found"):
        LlavaSource(tmp_path / "none.json").check()
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(InputConfigError, match="image folder"):
        LlavaSource(tmp_path / "data.json", tmp_path / "images").check()


def test_a_damaged_tar_stops_the_job_naming_the_tar_the_byte_and_the_sample(tmp_path):
    data = _tar_bytes(
        [
            ("__info__", b"{}"),  # no key.ext form: skipped, as webdataset does
            ("a.jpg", b"jpeg bytes"),
            ("a.json", json.dumps({"caption": "A dog."}).encode()),
            ("b.png", b"png"),
            ("b.txt", b"caption b"),
            ("c.png", b"x" * 5000),
            ("c.txt", b"caption c"),
        ]
    )
    path = tmp_path / "broken.tar"
    name = re.escape(str(path))
    path.write_bytes(data[: data.index(b"x" * 100) + 1000])  # cut inside sample c's image
    before = _results_until_error(
        WebDatasetSource(path),
        SourceFileError,
        rf"^{name}: tar is truncated or corrupt at byte 5632 of the tar stream \(member 'c\.png' "
        r"of sample 'c'\): unexpected end of data",
    )
    assert [result.id for result in before] == ["a", "b"]
    assert before[0].conversation[1]["value"] == "A dog."
    assert before[0].conversation[0]["value"] == f"<image>\n{CAPTION_PROMPT}"
    assert before[1].source == f"{path}:b"
    # Cut exactly after a member: tarfile alone would end quietly; the missing end blocks say.
    path.write_bytes(data[: data.index(b"x" * 100)])  # ends at c.png's data
    with pytest.raises(SourceFileError, match=rf"^{name}: tar is truncated .* 5632 .*sample 'c'"):
        _results(WebDatasetSource(path))
    end_of_b = data.index(b"caption b") + 512  # b.txt's data block: c.png's header is cut off
    path.write_bytes(data[:end_of_b])
    with pytest.raises(
        SourceFileError,
        match=rf"^{name}: the tar stream ends at byte {end_of_b} without its end-of-archive "
        r"blocks \(last sample read: 'b'\)",
    ):
        _results(WebDatasetSource(path))
    path.write_bytes(data[:end_of_b] + b"\x01" * 512 + b"\x00" * 1024)  # a garbled header
    with pytest.raises(SourceFileError, match="without its end-of-archive"):
        _results(WebDatasetSource(path))
    gz = tmp_path / "broken.tar.gz"
    gz.write_bytes(gzip.compress(data)[:-40])
    with pytest.raises(SourceFileError, match=rf"^{re.escape(str(gz))}: tar is truncated"):
        _results(WebDatasetSource(gz))
    path.write_bytes(data)  # the whole tar reads
    assert [result.id for result in _results(WebDatasetSource(path))] == ["a", "b", "c"]


def test_webdataset_member_names_cannot_leave_the_folder(tmp_path):
    for name, what in (("../evil.jpg", "a '..' component"), ("/abs/x.jpg", "an absolute name")):
        path = tmp_path / "t.tar"
        path.write_bytes(_tar_bytes([("a.jpg", b"1"), ("a.txt", b"cap"), (name, b"2")]))
        member = re.escape(f"{path}: member {name!r} (header at byte 2048) has {what}")
        with pytest.raises(UnsafePathError, match=rf"^{member}: a webdataset member name must"):
            _results(WebDatasetSource(path))


def test_webdataset_reads_gzipped_tars_and_refuses_repeated_extensions(tmp_path):
    data = _tar_bytes(
        [
            ("x.jpg", b"1"),
            ("x.JPG", b"2"),
            ("x.txt", b"t"),
            ("y.seg.png", b"s"),
            ("y.0.png", b"0"),
            ("y.json", json.dumps({"conversations": TURNS}).encode()),
        ]
    )
    (tmp_path / "part.tar.gz").write_bytes(gzip.compress(data))
    repeated, two = _results(WebDatasetSource(tmp_path))
    assert repeated.reason == "malformed_row"
    assert "'JPG' appears twice" in repeated.detail
    assert two.images == (b"0", b"s")  # natural order of the extensions: "0.png" < "seg.png"


def test_webdataset_check_needs_a_tar(tmp_path):
    with pytest.raises(InputConfigError, match="no webdataset tar"):
        WebDatasetSource(tmp_path).check()
    with pytest.raises(InputConfigError, match="pattern matches no webdataset tar"):
        WebDatasetSource(tmp_path / "*.tar").check()


def test_parquet_reads_raw_bytes_lists_of_images_and_json_string_conversations(tmp_path):
    two = [{"from": "human", "value": "<image><image>Both?"}, {"from": "gpt", "value": "Yes."}]
    table = pa.table(
        {
            "id": pa.array([7, None, 9], pa.int64()),
            "image": pa.array([[b"a", b"b"], [b"c"], []], pa.list_(pa.binary())),
            "conversations": pa.array([json.dumps(two), json.dumps(TURNS), "not json"]),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    first, second, third = _results(ParquetSource(path))
    assert first == RawSample("7", tuple(two), (b"a", b"b"), f"{path}#0")
    assert second.id == f"{path}#1"
    assert second.images == (b"c",)
    assert third.reason == "malformed_row"
    assert "not a JSON list" in third.detail


def test_parquet_without_an_image_column_is_text_only(tmp_path):
    table = pa.table({"caption": ["A cat.", "A dog."]})
    pq.write_table(table, tmp_path / "c.parquet")
    first, _ = _results(ParquetSource(tmp_path))
    assert first.images == ()  # the caption's placeholder then fails as an image-count mismatch


def test_parquet_check_refuses_files_without_a_text_column_or_not_parquet(tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "text": ["hi"]}), tmp_path / "a.parquet")
    with pytest.raises(InputConfigError, match=r"neither a 'conversations' nor a 'caption'"):
        ParquetSource(tmp_path / "a.parquet").check()
    ParquetSource(tmp_path / "a.parquet", caption_column="text").check()
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceFileError, match=r"not a readable parquet file \(11 bytes; trunc"):
        ParquetSource(tmp_path / "b.parquet").check()


def test_a_truncated_or_corrupt_parquet_file_stops_the_job_naming_the_row_group(tmp_path):
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(12)],
            "conversations": [json.dumps(TURNS)] * 12,
            "image": [bytes([i]) * 300 for i in range(12)],
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=4)
    data = path.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        SourceFileError,
        match=rf"cut\.parquet: not a readable parquet file \({len(data) // 2:,} bytes; truncated",
    ):
        ParquetSource(tmp_path / "cut.parquet").check()
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    damaged = bytearray(data)
    damaged[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(damaged)
    ParquetSource(path).check()  # the footer is intact: the damage shows when row group 2 is read
    before = _results_until_error(
        ParquetSource(path),
        SourceFileError,
        rf"^{re.escape(str(path))}: row group 2 \(rows #8-#11\) cannot be read after 0 of its "
        "rows: the file is corrupt",
    )
    assert [result.id for result in before] == [f"r{i}" for i in range(8)]
    source = ParquetSource(path)
    assert [(piece.start, piece.stop, piece.first) for piece in source.slices(unit_rows=5)] == [
        (0, 2, 0),
        (2, 3, 8),
    ]
