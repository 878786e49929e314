"""resolve_shards_dir: `ov-train run --data` takes a preparation folder or its shards/, and says
what it looked for otherwise."""

import pytest

from ov_train.data.errors import PrepareError
from ov_train.data.prepare_output import resolve_shards_dir


def test_the_preparation_folder_and_its_shards_both_resolve_to_the_shards(tmp_path):
    # The layout alone decides (a real preparation goes through it in test_source.py and
    # tests/test_train_on_your_data.py); this package's session fixture `packed_shards` is
    # not used here: under tests/data it would be built with this folder's other tiny model.
    shards = tmp_path / "prepared" / "shards"
    shards.mkdir(parents=True)
    (shards / "index.json").write_text("{}")
    (tmp_path / "prepared" / "report.json").write_text("{}")
    assert resolve_shards_dir(tmp_path / "prepared") == shards
    assert resolve_shards_dir(str(shards)) == shards


def test_a_missing_folder(tmp_path):
    with pytest.raises(PrepareError, match=r"nope: no such data folder"):
        resolve_shards_dir(tmp_path / "nope")


def test_a_file(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(PrepareError, match=r"data.json: is a file; give the folder"):
        resolve_shards_dir(tmp_path / "data.json")


def test_an_unrelated_folder_names_both_forms(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PrepareError) as error:
        resolve_shards_dir(tmp_path)
    assert "not packed data: neither index.json" in str(error.value)
    assert "nor shards/index.json (an `ov-train prepare` output folder)" in str(error.value)


def test_an_unfinished_preparation(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(PrepareError, match=r"an unfinished `ov-train prepare` \(no report.json\)"):
        resolve_shards_dir(tmp_path)


def test_a_preparation_that_packed_nothing(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(PrepareError, match=r"packed no sample \(no shards/\)"):
        resolve_shards_dir(tmp_path)
