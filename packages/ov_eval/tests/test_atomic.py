"""write_atomically: the old content or the new, never a mix, and no temporary file left."""

import os

import pytest

from ov_eval.atomic import write_atomically


def test_a_file_is_written_whole_and_parents_are_created(tmp_path):
    path = write_atomically(tmp_path / "a" / "b.json", b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path / "a") == ["b.json"]


def test_a_failed_replace_keeps_the_old_content_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_bytes(b"old")

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["results.json"]
