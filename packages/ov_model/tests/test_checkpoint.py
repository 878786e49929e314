"""HF checkpoint IO: bit-identical round trips, sharding, tying, and loud errors."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ov_model.errors import CheckpointError
from ov_model.model import LlavaOV


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def test_official_checkpoint_round_trips_bit_identically(fixture_dir, tmp_path):
    model = LlavaOV.from_pretrained(fixture_dir)
    model.save_pretrained(tmp_path)
    assert _same_tensors(
        load_file(tmp_path / "model.safetensors"), load_file(fixture_dir / "model.safetensors")
    )
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        (fixture_dir / "config.json").read_text()
    )
    assert (tmp_path / "generation_config.json").read_text() != ""
    again = LlavaOV.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_sharded_save_loads_back_identically(tmp_path, make_model):
    model = make_model(1)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = LlavaOV.from_pretrained(tmp_path)
    assert _same_tensors(model.state_dict(), again.state_dict())


def test_tied_model_writes_no_lm_head_and_shares_the_embedding(tmp_path, make_model):
    model = make_model(2, tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in stored
    again = LlavaOV.from_pretrained(tmp_path)
    assert again.lm_head is None
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_missing_lm_head_with_untied_embeddings_is_an_error(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    tensors = load_file(tmp_path / "ckpt" / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lm_head\.weight is missing"):
        LlavaOV.from_pretrained(tmp_path / "ckpt")


def test_missing_and_unexpected_tensors_are_all_listed(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    tensors = load_file(tmp_path / "ckpt" / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    del tensors["visual.blocks.0.norm1.bias"]
    tensors["model.layers.9.extra.weight"] = torch.zeros(2)
    tensors["something.else"] = torch.zeros(2)
    save_file(tensors, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        LlavaOV.from_pretrained(tmp_path / "ckpt")
    message = str(error.value)
    for name in (
        "model.layers.1.mlp.up_proj.weight",
        "visual.blocks.0.norm1.bias",
        "model.layers.9.extra.weight",
        "something.else",
    ):
        assert name in message


def test_older_in_memory_prefixes_are_accepted(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    tensors = load_file(tmp_path / "ckpt" / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith("visual."):
            name = "model." + name
        elif name.startswith("model."):
            name = "model.language_model." + name.removeprefix("model.")
        renamed[name] = tensor
    save_file(renamed, tmp_path / "ckpt" / "model.safetensors")
    old = LlavaOV.from_pretrained(tmp_path / "ckpt")
    assert _same_tensors(old.state_dict(), LlavaOV.from_pretrained(fixture_dir).state_dict())


def test_dtype_argument_casts_on_load(fixture_dir):
    model = LlavaOV.from_pretrained(fixture_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    """The process umask set to the parameter for the test, restored after."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_model_folders_are_readable_by_the_group_as_the_umask_allows(tmp_path, make_model, umask):
    from ov_model.tiny import create_tiny_model

    make_model(1).save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    create_tiny_model(tmp_path / "tiny", ["a red circle and a blue square"] * 20, seed=0)
    written = [*(tmp_path / "sharded").iterdir(), *(tmp_path / "tiny").iterdir()]
    assert {"model.safetensors", "tokenizer.json", "model.safetensors.index.json"} <= {
        p.name for p in written
    }
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {
        p.name: 0o666 & ~umask for p in written
    }
    assert {(tmp_path / f).stat().st_mode & 0o777 for f in ("sharded", "tiny")} == {0o777 & ~umask}
