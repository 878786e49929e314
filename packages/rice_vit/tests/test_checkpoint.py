"""Checkpoint IO: both layouts, sharding, bit-identical round trips, and precise errors."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rice_vit.checkpoint import inspect_checkpoint, parse_size
from rice_vit.errors import CheckpointError
from rice_vit.model import RiceViT

FIXTURES = Path(__file__).parents[3] / "fixtures"
LLAVA_OV = FIXTURES / "llava_ov_tiny" / "hf"
MLCD = FIXTURES / "rice_vit_mlcd_tiny" / "hf"


def stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, single file or sharded."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def write_checkpoint(folder: Path, config_from: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_from / "config.json", folder / "config.json")
    save_file(tensors, folder / "model.safetensors")
    return folder


def encoder_part_of_llava_ov() -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for name, tensor in load_file(LLAVA_OV / "model.safetensors").items()
        if name.startswith("visual.") and not name.startswith("visual.merger.")
    }


def test_mlcd_checkpoint_saved_as_mlcd_is_bit_identical_config_included(tmp_path):
    RiceViT.from_pretrained(MLCD).save_pretrained(tmp_path, "mlcd")
    assert_bitwise_equal(stored_tensors(tmp_path), stored_tensors(MLCD))
    original = json.loads((MLCD / "config.json").read_text())
    original.pop("transformers_version")
    assert json.loads((tmp_path / "config.json").read_text()) == original


def test_llava_ov_encoder_saved_as_llava_ov_is_bit_identical_to_its_visual_tensors(tmp_path):
    RiceViT.from_pretrained(LLAVA_OV).save_pretrained(tmp_path, "llava-ov")
    assert_bitwise_equal(stored_tensors(tmp_path), encoder_part_of_llava_ov())


def test_saving_a_loaded_save_reproduces_the_files_byte_for_byte(tmp_path):
    RiceViT.from_pretrained(LLAVA_OV).save_pretrained(tmp_path / "a", "llava-ov")
    RiceViT.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b", "llava-ov")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_mlcd_to_llava_ov_and_back_is_bit_identical_except_the_dropped_post_layernorm(tmp_path):
    dropped = RiceViT.from_pretrained(MLCD).save_pretrained(tmp_path / "ov", "llava-ov")
    assert dropped == ["post_layernorm.weight", "post_layernorm.bias"]
    RiceViT.from_pretrained(tmp_path / "ov").save_pretrained(tmp_path / "mlcd", "mlcd")
    original = stored_tensors(MLCD)
    for name in dropped:
        original.pop(f"vision_model.{name}")
    assert_bitwise_equal(stored_tensors(tmp_path / "mlcd"), original)


@pytest.mark.parametrize("layout", ["mlcd", "llava-ov"])
def test_sharded_save_writes_an_index_and_loads_back_bit_identical(tmp_path, layout):
    model = RiceViT.from_pretrained(MLCD)
    model.save_pretrained(tmp_path, layout, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) == 6
    assert not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    stored = stored_tensors(tmp_path)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in stored.values())
    for shard in shards:  # within the limit, or one tensor alone that is larger
        held = load_file(shard)
        assert len(held) == 1 or sum(t.numel() * 4 for t in held.values()) <= 100_000
    reloaded = RiceViT.from_pretrained(tmp_path)
    expected = model.state_dict()
    if layout == "llava-ov":
        expected = {n: t for n, t in expected.items() if not n.startswith("post_layernorm.")}
    assert_bitwise_equal(reloaded.state_dict(), expected)


def test_older_model_visual_prefix_and_bare_names_load_the_same_encoder(tmp_path):
    reference = RiceViT.from_pretrained(LLAVA_OV).state_dict()
    encoder = encoder_part_of_llava_ov()
    language_model = {"model.embed_tokens.weight": torch.zeros(8, 64)}
    for prefix in ("model.visual.", ""):
        renamed = {prefix + n.removeprefix("visual."): t for n, t in encoder.items()}
        folder = write_checkpoint(tmp_path / (prefix or "bare"), LLAVA_OV, renamed | language_model)
        assert_bitwise_equal(RiceViT.from_pretrained(folder).state_dict(), reference)


def test_full_llava_ov_checkpoint_reads_only_the_encoder(tmp_path):
    info = inspect_checkpoint(LLAVA_OV)
    assert info.layout == "llava-ov"
    assert info.detected.prefix == "visual."
    assert len(info.shapes) == 29
    assert "lm_head.weight" in info.detected.other_names
    assert "visual.merger.ln_q.weight" in info.detected.other_names
    assert info.num_parameters == RiceViT.from_pretrained(LLAVA_OV).num_parameters()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.pop("visual.blocks.1.mlp.fc2.bias"),
            r"missing tensors \(1\): visual.blocks.1.mlp.fc2.bias",
        ),
        (
            lambda t: t.update({"visual.blocks.2.norm1.weight": torch.ones(64)}),
            r"unexpected tensors \(1\): visual.blocks.2.norm1.weight",
        ),
        (
            lambda t: t.update({"visual.class_pos_emb": torch.ones(1, 16)}),
            r"mis-shaped tensors \(1\): visual.class_pos_emb: "
            r"stored \(1, 16\), config needs \(1, 8\)",
        ),
    ],
)
def test_llava_ov_tensors_that_do_not_match_the_config_are_listed(tmp_path, edit, message):
    tensors = encoder_part_of_llava_ov()
    edit(tensors)
    folder = write_checkpoint(tmp_path, LLAVA_OV, tensors)
    with pytest.raises(CheckpointError, match=message):
        RiceViT.from_pretrained(folder)


def test_mlcd_errors_name_the_missing_q_k_v_part_and_foreign_tensors(tmp_path):
    tensors = stored_tensors(MLCD)
    tensors.pop("vision_model.encoder.layers.0.self_attn.k_proj.weight")
    tensors.pop("vision_model.pre_layrnorm.bias")
    tensors["text_model.embeddings.weight"] = torch.zeros(3)
    folder = write_checkpoint(tmp_path, MLCD, tensors)
    with pytest.raises(CheckpointError) as error:
        RiceViT.from_pretrained(folder)
    assert str(error.value).endswith(
        "does not match its config: missing tensors (2): "
        "vision_model.encoder.layers.0.self_attn.k_proj.weight, vision_model.pre_layrnorm.bias; "
        "unexpected tensors (1): text_model.embeddings.weight"
    )


def test_dtype_none_keeps_stored_bfloat16_bytes_and_dtype_casts(tmp_path):
    model = RiceViT.from_pretrained(LLAVA_OV, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.save_pretrained(tmp_path, "llava-ov")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = RiceViT.from_pretrained(tmp_path)
    assert_bitwise_equal(reloaded.state_dict(), model.state_dict())


def test_saving_over_a_checkpoint_needs_overwrite_which_removes_stale_shards(tmp_path):
    model = RiceViT.from_pretrained(MLCD)
    model.save_pretrained(tmp_path, "mlcd", max_shard_size="100KB")
    with pytest.raises(CheckpointError, match=r"already holds .*config.json.*overwrite=True"):
        model.save_pretrained(tmp_path, "mlcd")
    model.save_pretrained(tmp_path, "mlcd", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_folders_without_weights_corrupt_files_and_broken_indexes_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copy(MLCD / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(
        CheckpointError, match=r"empty: neither model.safetensors nor .*config.json"
    ):
        RiceViT.from_pretrained(tmp_path / "empty")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(MLCD / "config.json", corrupt / "config.json")
    (corrupt / "model.safetensors").write_bytes((MLCD / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"corrupt/model.safetensors: unreadable"):
        RiceViT.from_pretrained(corrupt)

    RiceViT.from_pretrained(MLCD).save_pretrained(
        tmp_path / "sharded", "mlcd", max_shard_size="100KB"
    )
    (tmp_path / "sharded" / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"lists model-00002-of-00006\.safetensors, which does"
    ):
        RiceViT.from_pretrained(tmp_path / "sharded")

    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        RiceViT.from_pretrained(tmp_path / "nowhere")


def test_tensors_of_no_known_layout_are_an_error(tmp_path):
    folder = write_checkpoint(tmp_path, MLCD, {"encoder.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="no RICE-ViT encoder found"):
        RiceViT.from_pretrained(folder)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1000, 1000), ("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("500 mb", 5 * 10**8), ("1.5KB", 1500)],
)
def test_shard_sizes_parse_like_transformers(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["five", "0", -3, "5XB"])
def test_unreadable_shard_sizes_are_errors(size):
    with pytest.raises(CheckpointError):
        parse_size(size)


def test_mlcd_q_k_v_parts_beyond_the_depth_or_of_unequal_shapes_are_reported(tmp_path):
    tensors = stored_tensors(MLCD)
    tensors["vision_model.encoder.layers.2.self_attn.q_proj.weight"] = torch.zeros(64, 64)
    tensors["vision_model.encoder.layers.1.self_attn.v_proj.weight"] = torch.zeros(64, 32)
    folder = write_checkpoint(tmp_path, MLCD, tensors)
    with pytest.raises(CheckpointError) as error:
        RiceViT.from_pretrained(folder)
    message = str(error.value)
    assert (
        "unexpected tensors (1): vision_model.encoder.layers.2.self_attn.q_proj.weight" in message
    )
    assert "unequal parts q_proj (64, 64), k_proj (64, 64), v_proj (64, 32)" in message


def test_llava_ov_to_mlcd_and_back_is_bit_identical(tmp_path):
    RiceViT.from_pretrained(LLAVA_OV).save_pretrained(tmp_path / "mlcd", "mlcd")
    assert inspect_checkpoint(tmp_path / "mlcd").layout == "mlcd"
    RiceViT.from_pretrained(tmp_path / "mlcd").save_pretrained(tmp_path / "ov", "llava-ov")
    assert_bitwise_equal(stored_tensors(tmp_path / "ov"), encoder_part_of_llava_ov())


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    """The process umask set to the parameter for the test, restored after."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_saved_files_and_folders_follow_the_umask_not_0600(tmp_path, tiny_model, umask):
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    tiny_model.save_pretrained(tmp_path / "single")
    written = sorted((tmp_path / "sharded").iterdir()) + sorted((tmp_path / "single").iterdir())
    assert len(written) > 4
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {
        p.name: 0o666 & ~umask for p in written
    }
    assert {(tmp_path / f).stat().st_mode & 0o777 for f in ("sharded", "single")} == {
        0o777 & ~umask
    }


def test_the_umask_is_read_the_same_without_procfs(monkeypatch, umask):
    from rice_vit import safetensors_folder

    assert safetensors_folder.process_umask() == umask
    monkeypatch.setattr(safetensors_folder, "_PROC_UMASK", re.compile("(?!)"))  # matches nothing
    assert safetensors_folder.process_umask() == umask
    assert os.umask(umask) == umask  # and it is left as it was
