"""Ingesters: each format's rules, ids and source references, and damaged inputs reported
instead of crashing."""

import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ov_train.data.conversations import CAPTION_PROMPT
from ov_train.data.errors import InputConfigError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_parquet import ParquetSource
from ov_train.data.ingest_webdataset import WebDatasetSource
from ov_train.data.raw_sample import BadSample, RawSample

TURNS = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]


def _results(source):
    return list(source.iter_samples(caption_prompt=CAPTION_PROMPT))


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
        "{broken",
        json.dumps({"id": True, "conversations": TURNS}),
        json.dumps({"id": "t", "image": None, "conversations": TURNS[1:]}),
        json.dumps({"id": "c", "image": ["a.png", "b.png"], "conversations": [{"from": "human"}]}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines))
    first, broken, bad_id, text_only, bad_turn = _results(LlavaSource(path))
    assert first == RawSample(f"{path}:1", tuple(TURNS), (tmp_path / "a.png",), f"{path}:1")
    assert (broken.id, broken.reason) == (f"{path}:3", "malformed_row")
    assert "id must be" in bad_id.detail
    assert text_only.images == ()  # null image and no placeholder: a text-only sample
    assert bad_turn.reason == "malformed_row"
    assert 'turn 0 lacks string "from" and "value"' in bad_turn.detail


def test_llava_files_that_are_not_a_json_list_are_one_unreadable_source_entry(tmp_path):
    for text in ("{not json", json.dumps({"id": "x"})):
        path = tmp_path / "data.json"
        path.write_text(text)
        (result,) = _results(LlavaSource(path, tmp_path))
        assert isinstance(result, BadSample)
        assert (result.id, result.reason) == (str(path), "unreadable_source")


def test_llava_check_names_a_missing_file_or_image_folder(tmp_path):
    with pytest.raises(InputConfigError, match="LLaVA annotation file not found"):
        LlavaSource(tmp_path / "none.json").check()
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(InputConfigError, match="image folder"):
        LlavaSource(tmp_path / "data.json", tmp_path / "images").check()


def test_webdataset_keeps_samples_before_damage_and_reports_the_tar(tmp_path):
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
    path.write_bytes(data[: data.index(b"x" * 100) + 1000])  # cut inside sample c's image
    results = _results(WebDatasetSource(path))
    assert [type(result) for result in results] == [RawSample, RawSample, BadSample]
    assert results[0].conversation[1]["value"] == "A dog."
    assert results[0].conversation[0]["value"] == f"<image>\n{CAPTION_PROMPT}"
    assert results[1].source == f"{path}:b"
    assert results[2].reason == "unreadable_source"
    assert "in sample 'c'" in results[2].detail


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
    with pytest.raises(InputConfigError, match="not a readable parquet file"):
        ParquetSource(tmp_path / "b.parquet").check()
