"""The region manifest: reading JSONL/Parquet, malformed rows, path escapes, validation counts."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rice_vit.pretrain.region_manifest import (
    ManifestError,
    attach_clusters,
    load_region_manifest,
    read_manifest,
    validate_regions,
    write_manifest,
)


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 10, 10)).save(path)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _image(tmp_path / "img" / "a.png", 100, 50)
    _image(tmp_path / "img" / "b.png", 40, 40)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def _rows() -> list:
    return [
        {
            "image": "img/a.png",
            "regions": [
                {"box": [10, 5, 30, 25], "kind": "object"},  # 0 valid
                {"box": [90, 40, 120, 60], "kind": "object"},  # 1 partly outside: clipped
                {"box": [30, 5, 10, 25], "kind": "object"},  # 2 degenerate
                {"box": [10, 5, 10, 25], "kind": "object"},  # 3 empty
                {"box": [200, 5, 220, 25], "kind": "object"},  # 4 outside
                {"box": [0, 0, 2, 30], "kind": "object"},  # 5 too small (side 2 < 4)
                {"box": [0, 0, 50, 20], "kind": "ocr", "text": "SALE"},  # 6 valid
                {"box": [0, 0, 50, 20], "kind": "ocr", "text": "  "},  # 7 empty text
                {"box": [0, 0, float("nan"), 20], "kind": "object"},  # 8 not finite
            ],
        },
        {"image": "img/b.png", "regions": [{"box": [50, 50, 60, 60], "kind": "object"}]},
        {"image": "img/missing.png", "regions": [{"box": [0, 0, 5, 5], "kind": "object"}] * 2},
        {"image": "img/broken.png", "regions": [{"box": [0, 0, 5, 5], "kind": "object"}]},
        {"image": "img/b.png", "regions": []},
    ]


def test_validation_counts_every_region_once_with_its_reason(folder):
    manifest = _write_jsonl(folder / "m.jsonl", _rows())
    result = load_region_manifest(manifest, min_box_side=4)
    report = result.report
    assert report.images == 5
    assert report.images_used == 1
    assert report.images_unreadable == 2
    assert report.images_without_valid_region == 2
    assert report.regions == 9 + 1 + 2 + 1
    assert report.excluded == {
        "not_finite": 1,
        "degenerate": 1,
        "empty": 1,
        "empty_text": 1,
        "outside": 2,  # a's region 4 and b's only region
        "too_small": 1,
        "image_unreadable": 3,
    }
    assert report.regions_valid == 3
    assert report.valid_by_kind == {"object": 2, "ocr": 1}
    assert report.clipped == 1
    assert report.regions_valid + report.regions_excluded == report.regions
    (image,) = result.images
    assert (image.row, image.width, image.height) == (0, 100, 50)
    assert [r.index for r in image.regions] == [0, 1, 6]
    assert image.regions[1].box == (90, 40, 100, 50)
    assert result.region_index().tolist() == [[0, 0], [0, 1], [0, 6]]
    by_reason = {}
    for example in report.examples:
        by_reason.setdefault(example["reason"], example)
    assert by_reason["degenerate"]["region"] == 2
    assert by_reason["degenerate"]["source"] == f"{manifest}:1"
    assert by_reason["image_unreadable"]["image"] == "img/missing.png"
    assert "no such file" in by_reason["image_unreadable"]["detail"]
    assert by_reason["no_valid_region"]["source"] == f"{manifest}:2"
    text = report.format()
    assert "degenerate        1" in text
    assert "img/broken.png" in text
    report.write_json(folder / "report.json")
    assert json.loads((folder / "report.json").read_text())["excluded"]["outside"] == 2


def test_examples_are_capped_per_reason_but_counts_are_not(folder):
    rows = [{"image": "img/b.png", "regions": [{"box": [5, 5, 1, 9], "kind": "object"}] * 30}]
    manifest = _write_jsonl(folder / "m.jsonl", rows)
    result = validate_regions(read_manifest(manifest), max_examples=3)
    assert result.report.excluded["degenerate"] == 30
    assert sum(e["reason"] == "degenerate" for e in result.report.examples) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "m.jsonl:2: not valid JSON"),
        ('{"regions": []}', "m.jsonl:2: missing field 'image'"),
        ('{"image": "x.png"}', "m.jsonl:2: missing field 'regions'"),
        ('{"image": "x.png", "regions": [], "extra": 1}', "unknown key(s) extra"),
        ('{"image": "x.png", "regions": [{"kind": "object"}]}', "region 0: missing field 'box'"),
        ('{"image": "x.png", "regions": [{"box": [1, 2, 3], "kind": "object"}]}', "4 numbers"),
        ('{"image": "x.png", "regions": [{"box": [1, 2, 3, "4"], "kind": "object"}]}', "4 numbers"),
        ('{"image": "x.png", "regions": [{"box": [1, 2, 3, 4], "kind": "face"}]}', "'kind'"),
        ('{"image": "x.png", "regions": [{"box": [1, 2, 3, 4], "kind": "ocr"}]}', "needs 'text'"),
        (
            '{"image": "x.png", "regions": [{"box": [1, 2, 3, 4], "kind": "object", "text": "a"}]}',
            "only for OCR",
        ),
        (
            '{"image": "x.png", "regions": [{"box": [1, 2, 3, 4], "kind": "object", '
            '"cluster": -1}]}',
            "'cluster' must be an integer >= 0",
        ),
        ('{"image": "../x.png", "regions": []}', "leaves the image root"),
        ('{"image": "/etc/x.png", "regions": []}', "leaves the image root"),
        ('{"image": "a/../../x.png", "regions": []}', "leaves the image root"),
        ("[1, 2]", "a JSON array; a region manifest is JSON Lines"),
        ("3", "expected an object, got int"),
    ],
)
def test_malformed_rows_are_errors_naming_file_and_line(tmp_path, line, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "ok.png", "regions": []}\n' + line + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2") as error:
        read_manifest(manifest)
    assert message in str(error.value)


def test_paths_resolve_under_image_root_and_escapes_need_permission(tmp_path):
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"image": "../x.png", "regions": []}, {}][:1])
    (row,) = read_manifest(manifest, allow_outside_root=True)
    assert row.path == tmp_path / ".." / "x.png"
    _write_jsonl(manifest, [{"image": "sub/x.png", "regions": []}])
    (row,) = read_manifest(manifest, image_root=tmp_path / "root")
    assert row.path == tmp_path / "root" / "sub" / "x.png"


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '\n{"image": "a.png", "regions": []}\n\n{"image": "b.png", "regions": []}\n'
    )
    rows = read_manifest(manifest)
    assert [r.source for r in rows] == [f"{manifest}:2", f"{manifest}:4"]


def test_parquet_and_jsonl_round_trip_to_the_same_validation(folder):
    pytest.importorskip("pyarrow")
    rows = read_manifest(_write_jsonl(folder / "m.jsonl", _rows()))
    write_manifest(folder / "m.parquet", rows)
    write_manifest(folder / "copy.jsonl", rows)
    from_parquet = load_region_manifest(folder / "m.parquet", min_box_side=4)
    from_jsonl = load_region_manifest(folder / "copy.jsonl", min_box_side=4)
    assert from_parquet.report.excluded == from_jsonl.report.excluded
    assert from_parquet.images == tuple(
        type(i)(**{**i.__dict__, "source": p.source})
        for i, p in zip(from_jsonl.images, from_parquet.images, strict=True)
    )
    assert from_parquet.images[0].source == f"{folder / 'm.parquet'} row 1"


def test_parquet_errors_name_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(
        [
            {"image": "a.png", "regions": [{"box": [0, 0, 1, 1], "kind": "object"}]},
            {"image": "b.png", "regions": [{"box": [0, 0, 1, 1], "kind": "blob"}]},
        ]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m.parquet row 2 region 0: 'kind'"):
        read_manifest(tmp_path / "m.parquet")
    pq.write_table(pa.table({"image": ["a.png"]}), tmp_path / "cols.parquet")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(tmp_path / "cols.parquet")


def test_attach_clusters_labels_object_regions_and_round_trips(folder):
    rows = read_manifest(_write_jsonl(folder / "m.jsonl", _rows()))
    valid = validate_regions(rows, min_box_side=4)
    objects = np.array([[r, i] for r, i in valid.region_index() if i != 6])
    labelled = attach_clusters(rows, objects, np.array([7, 3]))
    write_manifest(folder / "labelled.jsonl", labelled)
    again = validate_regions(read_manifest(folder / "labelled.jsonl"), min_box_side=4)
    assert [r.cluster for r in again.images[0].regions] == [7, 3, None]
    with pytest.raises(ManifestError, match="only object regions"):
        attach_clusters(rows, np.array([[0, 6]]), np.array([1]))
    with pytest.raises(ManifestError, match="no such region"):
        attach_clusters(rows, np.array([[0, 9]]), np.array([1]))
    with pytest.raises(ManifestError, match="labelled twice"):
        attach_clusters(rows, np.array([[0, 0], [0, 0]]), np.array([1, 2]))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ManifestError, match=r"pip install 'rice-vit\[parquet\]'"):
        read_manifest(tmp_path / "m.parquet")
