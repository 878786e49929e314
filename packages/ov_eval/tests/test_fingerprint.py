"""Run fingerprints: the model's content hash, its digest cache, and the named differences."""

import os

import msgspec
import pytest

from ov_eval import fingerprint as fingerprints
from ov_eval.errors import EvalError, RunMismatchError
from ov_eval.fingerprint import (
    RunSetup,
    check_resumable,
    differences,
    fingerprint_hash,
    identify_model,
    make_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from ov_eval.tasks import get_task


def model_folder(folder, weights=b"w1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(weights)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"w2")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("not part of the model")
    return folder


def setup_for(folder, **changes):
    settings = {"dtype": "float32", "device": "cuda:1", "min_pixels": None, "max_pixels": None}
    settings |= {"max_new_tokens": None} | changes
    return RunSetup(model=identify_model(folder), **settings)


def test_the_model_hash_covers_weights_and_configs_not_other_files(tmp_path):
    folder = model_folder(tmp_path / "m")
    first = identify_model(folder)
    assert sorted(first.files) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
    ]
    (folder / "README.md").write_text("edited")
    assert identify_model(folder).sha256 == first.sha256
    (folder / "tokenizer.json").write_text('{"added": 1}')
    assert identify_model(folder).sha256 != first.sha256
    with pytest.raises(EvalError, match="no model files"):
        identify_model(tmp_path)


def test_unchanged_files_are_not_hashed_again(tmp_path, monkeypatch):
    folder = model_folder(tmp_path / "m")
    first = identify_model(folder)
    hashed = []
    original = fingerprints._sha256
    monkeypatch.setattr(
        fingerprints, "_sha256", lambda path: hashed.append(path.name) or original(path)
    )
    assert identify_model(folder, first.files) == first
    assert hashed == []
    shard = folder / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"w9")
    os.utime(shard, ns=(1, 1))
    assert identify_model(folder, first.files).sha256 != first.sha256
    assert hashed == [shard.name]


def test_differences_name_each_field_and_the_changed_files(tmp_path):
    task = get_task("jsonl")
    old = make_fingerprint(task, setup_for(model_folder(tmp_path / "a")))
    assert old.device == "cuda"  # the index does not change numerics
    new = make_fingerprint(task, setup_for(model_folder(tmp_path / "b", b"w3"), dtype="bfloat16"))
    found = differences(old, new)
    assert found[0] == f"model: '{tmp_path / 'a'}' -> '{tmp_path / 'b'}'"
    assert found[1].endswith("(files: model-00001-of-00002.safetensors)")
    assert found[2] == "dtype: 'float32' -> 'bfloat16'"
    assert len(found) == 3
    assert differences(old, old) == []
    copied = msgspec.structs.replace(old, model_files={})  # digests are a cache, not compared
    assert differences(old, copied) == []
    assert fingerprint_hash(old) == fingerprint_hash(copied) != fingerprint_hash(new)


def test_fingerprints_round_trip_and_a_foreign_file_is_refused(tmp_path):
    fingerprint = make_fingerprint(get_task("jsonl"), setup_for(model_folder(tmp_path / "m")))
    path = tmp_path / "out" / "jsonl.fingerprint.json"
    write_fingerprint(path, fingerprint)
    assert read_fingerprint(path) == fingerprint
    predictions = tmp_path / "out" / "jsonl.jsonl"
    check_resumable(path, predictions, fingerprint)  # no predictions yet: nothing to check
    predictions.write_text('{"sample_id": "1"}\n')
    check_resumable(path, predictions, fingerprint)
    path.write_text('{"format_version": 1}')
    with pytest.raises(RunMismatchError, match="not a fingerprint this ov-eval can compare"):
        check_resumable(path, predictions, fingerprint)
