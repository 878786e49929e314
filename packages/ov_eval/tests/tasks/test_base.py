"""The shared parquet loading of Task: file discovery, limits, and errors that say where."""

import pyarrow as pa
import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task


def chart_rows(count, make_image_cell):
    return [
        {"type": "human_test", "question": f"q{i}", "answer": str(i), "image": make_image_cell()}
        for i in range(count)
    ]


def test_shards_are_read_in_name_order_and_ids_follow_the_split_order(
    tmp_path, make_parquet, make_image_cell
):
    rows = chart_rows(5, make_image_cell)
    make_parquet(tmp_path / "data" / "test-00001-of-00002.parquet", rows[3:])
    make_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", rows[:3])
    samples = get_task("chartqa").load(tmp_path)
    assert [s.question for s in samples] == ["q0", "q1", "q2", "q3", "q4"]
    assert [s.id for s in samples] == ["0", "1", "2", "3", "4"]


def test_limit_keeps_the_first_samples(tmp_path, make_parquet, make_image_cell):
    make_parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet", chart_rows(200, make_image_cell)
    )
    samples = get_task("chartqa").load(tmp_path, limit=3)
    assert [s.id for s in samples] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="limit"):
        get_task("chartqa").load(tmp_path, limit=0)


def test_a_directory_holding_the_split_files_directly_also_works(
    tmp_path, make_parquet, make_image_cell
):
    make_parquet(tmp_path / "test-00000-of-00001.parquet", chart_rows(2, make_image_cell))
    assert len(get_task("chartqa").load(tmp_path)) == 2


def test_missing_directory_and_missing_files_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        get_task("chartqa").load(tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"no file matches data/test-\*\.parquet"):
        get_task("chartqa").load(tmp_path)


def test_missing_columns_are_named_with_the_file(tmp_path, make_parquet):
    path = make_parquet(tmp_path / "data" / "test-0.parquet", [{"question": "q", "answer": "1"}])
    with pytest.raises(DatasetError, match=f"{path}: missing column\\(s\\) type, image"):
        get_task("chartqa").load(tmp_path)


def test_a_file_that_is_not_parquet_is_reported(tmp_path):
    path = tmp_path / "data" / "test-0.parquet"
    path.parent.mkdir()
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=f"{path}: not a readable parquet file"):
        get_task("chartqa").load(tmp_path)


def test_a_malformed_row_is_reported_with_file_row_and_column(
    tmp_path, make_parquet, make_image_cell
):
    rows = chart_rows(3, make_image_cell)
    rows[2]["answer"] = None
    path = make_parquet(tmp_path / "data" / "test-0.parquet", rows)
    with pytest.raises(DatasetError, match=f"{path}, row 2: column 'answer': expected a string"):
        get_task("chartqa").load(tmp_path)


def test_a_corrupt_image_fails_its_sample_not_the_load_and_names_file_and_row(
    tmp_path, make_parquet, make_image_cell
):
    from rice_vit import ImageError

    rows = chart_rows(2, make_image_cell)
    rows[1]["image"] = make_image_cell(b"\x89PNG but truncated")
    path = make_parquet(tmp_path / "data" / "test-0.parquet", rows)
    good, bad = get_task("chartqa").load(tmp_path)
    assert good.source == f"{path}, row 0"
    assert len(good.open_images()) == 1
    with pytest.raises(ImageError, match=f"{path}, row 1: sample '1': image 0: "):
        bad.open_images()


def test_an_empty_split_is_an_error_naming_the_file(tmp_path, make_parquet):
    schema = pa.schema(
        [
            ("type", pa.string()),
            ("question", pa.string()),
            ("answer", pa.string()),
            ("image", pa.binary()),
        ]
    )
    path = make_parquet(tmp_path / "data" / "test-0.parquet", [], schema)
    with pytest.raises(DatasetError, match=f"{path}: no rows"):
        get_task("chartqa").load(tmp_path)


def test_an_image_stored_outside_the_file_is_reported(tmp_path, make_parquet, make_image_cell):
    rows = chart_rows(1, make_image_cell)
    rows[0]["image"] = {"bytes": None, "path": "images/0.png"}
    make_parquet(tmp_path / "data" / "test-0.parquet", rows)
    with pytest.raises(DatasetError, match=r"not embedded in the file.*images/0\.png"):
        get_task("chartqa").load(tmp_path)


def test_duplicate_ids_are_reported_with_both_rows(tmp_path, make_parquet, make_image_cell):
    row = {
        "questionId": "7",
        "question": "q",
        "answers": ["a"],
        "image": make_image_cell(),
    }
    path = make_parquet(tmp_path / "DocVQA" / "validation-0.parquet", [row, row])
    with pytest.raises(
        DatasetError, match=f"{path}, row 1: sample id '7' already used at {path}, row 0"
    ):
        get_task("docvqa_val").load(tmp_path)


def test_binary_image_columns_are_accepted(tmp_path, make_parquet, make_png):
    schema = pa.schema(
        [
            ("type", pa.string()),
            ("question", pa.string()),
            ("answer", pa.string()),
            ("image", pa.binary()),
        ]
    )
    rows = [{"type": "human_test", "question": "q", "answer": "1", "image": make_png()}]
    make_parquet(tmp_path / "data" / "test-0.parquet", rows, schema)
    (sample,) = get_task("chartqa").load(tmp_path)
    assert sample.images == (make_png(),)
