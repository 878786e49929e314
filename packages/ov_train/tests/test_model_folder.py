"""model.path: a folder that does not exist and a folder that is not a model are different
one-line errors; the second names the missing file, or says the folder is a raw LLM or ViT."""

import json
import shutil
from pathlib import Path

import pytest

from ov_train.errors import RecipeError
from ov_train.model_folder import check_model_folder

FIXTURE = Path(__file__).parents[3] / "fixtures" / "llava_ov_tiny" / "hf"


def _model_folder(tmp_path: Path, *, tokenizer: bool = True) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_model_folder_passes(tmp_path):
    folder = _model_folder(tmp_path)
    assert check_model_folder(str(folder)) == folder


def test_a_missing_folder_does_not_exist(tmp_path):
    with pytest.raises(RecipeError) as error:
        check_model_folder(tmp_path / "nope")
    assert str(error.value).startswith(f"model.path {tmp_path / 'nope'}: does not exist (")


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match=r"file: is a file, not a model folder"):
        check_model_folder(tmp_path / "file")


def test_an_empty_folder_names_every_missing_file(tmp_path):
    with pytest.raises(RecipeError) as error:
        check_model_folder(tmp_path)
    assert (
        f"model.path {tmp_path}: exists but is not a model folder: no config.json, no "
        "model.safetensors or model.safetensors.index.json, no tokenizer.json ("
    ) in str(error.value)


@pytest.mark.parametrize("removed", ["config.json", "model.safetensors", "tokenizer.json"])
def test_one_missing_file_is_named(tmp_path, removed):
    folder = _model_folder(tmp_path)
    (folder / removed).unlink()
    with pytest.raises(RecipeError) as error:
        check_model_folder(folder)
    message = str(error.value)
    assert "exists but is not a model folder: no " in message
    assert message.count("no ") == 1
    assert removed in message


def test_the_tokenizer_is_optional_for_callers_with_their_own_processor(tmp_path):
    folder = _model_folder(tmp_path, tokenizer=False)
    assert check_model_folder(folder, tokenizer=False) == folder
    with pytest.raises(RecipeError, match=r"no tokenizer\.json"):
        check_model_folder(folder)


@pytest.mark.parametrize(
    ("model_type", "what"),
    [("qwen3", "a Qwen LLM"), ("qwen2", "a Qwen LLM"), ("mlcd_vision_model", "a RICE-ViT")],
)
def test_a_raw_llm_or_vit_folder_says_to_run_ov_model_init(tmp_path, model_type, what):
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(RecipeError) as error:
        check_model_folder(folder)
    assert f"is {what}" in str(error.value)
    assert "ov-model init --vit VIT_DIR --llm LLM_DIR --out STAGE0_DIR" in str(error.value)


def test_another_model_type_is_named(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RecipeError, match=r"config\.json has model_type 'llama', not"):
        check_model_folder(folder)
