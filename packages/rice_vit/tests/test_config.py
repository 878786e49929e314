"""RiceViTConfig: validation at construction, presets, and both config.json dialects."""

import json
from pathlib import Path

import pytest

from rice_vit.config import (
    PRESETS,
    RiceViTConfig,
    config_from_hf_dict,
    config_to_hf_dict,
    read_config_file,
    write_config_file,
)
from rice_vit.errors import ConfigError

FIXTURES = Path(__file__).parents[3] / "fixtures"


def test_large_preset_is_rice_vit_l14():
    config = RiceViTConfig.from_preset("rice-vit-large-patch14")
    assert (config.depth, config.hidden_size, config.num_heads, config.intermediate_size) == (
        24,
        1024,
        16,
        4096,
    )
    assert (config.head_dim, config.patch_dim) == (64, 588)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="rice-vit-tiny"):
        RiceViTConfig.from_preset("rice-vit-huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"depth": 2.0}, "depth must be a positive integer"),
        ({"num_heads": True}, "num_heads must be a positive integer"),
        ({"num_heads": 5}, r"hidden_size \(1024\) must be divisible by num_heads \(5\)"),
        ({"hidden_size": 96, "num_heads": 16}, "head_dim .* = 6 must be a multiple of 4"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be finite and > 0"),
        ({"block_layer_norm_eps": float("nan")}, "block_layer_norm_eps must be finite"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"has_post_layernorm": 1}, "has_post_layernorm must be a bool"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        RiceViTConfig(**changes)


def test_replace_validates_again():
    with pytest.raises(ConfigError, match="patch_size"):
        PRESETS["rice-vit-tiny"].replace(patch_size=-14)


def test_reads_the_vision_config_of_the_llava_ov_fixture():
    config = read_config_file(FIXTURES / "llava_ov_tiny" / "hf" / "config.json")
    assert config == PRESETS["rice-vit-tiny"].replace(image_size=560)


def test_reads_the_mlcd_fixture_config():
    config = read_config_file(FIXTURES / "rice_vit_mlcd_tiny" / "hf" / "config.json")
    assert config == PRESETS["rice-vit-tiny"]


def test_mlcd_dialect_reproduces_the_fixture_config_keys():
    path = FIXTURES / "rice_vit_mlcd_tiny" / "hf" / "config.json"
    stored = json.loads(path.read_text())
    written = config_to_hf_dict(read_config_file(path), "mlcd", torch_dtype="float32")
    stored.pop("transformers_version")
    assert written == stored


def test_llava_ov_dialect_reproduces_the_fixture_vision_config():
    path = FIXTURES / "llava_ov_tiny" / "hf" / "config.json"
    stored = json.loads(path.read_text())["vision_config"]
    written = config_to_hf_dict(read_config_file(path), "llava-ov", text_hidden_size=64)
    assert written == stored


@pytest.mark.parametrize("layout", ["mlcd", "llava-ov"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trips_through_both_dialects(tmp_path, layout, preset):
    config = PRESETS[preset]
    write_config_file(tmp_path / "config.json", config, layout)
    if layout == "llava-ov":  # records no image_size: it reads back as the default
        config = config.replace(image_size=RiceViTConfig().image_size)
    assert read_config_file(tmp_path / "config.json") == config


def test_block_eps_is_the_hard_coded_llava_ov_value_whatever_layer_norm_eps_says():
    config = config_from_hf_dict(
        {
            "model_type": "rice_vit",
            "hidden_size": 64,
            "depth": 1,
            "num_heads": 4,
            "intermediate_size": 128,
            "layer_norm_eps": 1e-6,
        }
    )
    assert (config.layer_norm_eps, config.block_layer_norm_eps) == (1e-6, 1e-5)
    with pytest.raises(ConfigError, match="MLCD configs have one layer_norm_eps"):
        config_to_hf_dict(config, "mlcd")


def test_mlcd_eps_applies_to_every_layernorm():
    config = config_from_hf_dict(
        {
            "model_type": "mlcd_vision_model",
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "layer_norm_eps": 1e-6,
        }
    )
    assert (config.layer_norm_eps, config.block_layer_norm_eps) == (1e-6, 1e-6)
    with pytest.raises(ConfigError, match="hard-codes eps 1e-5"):
        config_to_hf_dict(config, "llava-ov")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model_type": "clip_vision_model"}, "model_type 'clip_vision_model' is not a RICE-ViT"),
        ({"model_type": "mlcd_vision_model", "hidden_size": 64}, "missing key 'num_hidden_layers'"),
        (
            {
                "vision_config": {
                    "hidden_size": 64,
                    "depth": 1,
                    "num_heads": 4,
                    "intermediate_size": 8,
                    "temporal_patch_size": 2,
                }
            },
            "temporal_patch_size = 2 is not supported",
        ),
        (
            {
                "model_type": "mlcd_vision_model",
                "hidden_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "intermediate_size": 8,
                "num_key_value_groups": 2,
            },
            "num_key_value_groups = 2",
        ),
        (
            {
                "model_type": "rice_vit",
                "hidden_size": 64,
                "depth": 0,
                "num_heads": 4,
                "intermediate_size": 8,
            },
            "src.json: RiceViTConfig.depth must be a positive integer",
        ),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_unreadable_hf_configs_are_errors_naming_the_source(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_hf_dict(data, source="src.json")


def test_a_config_file_that_is_not_json_is_named_in_the_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{path}: not valid JSON"):
        read_config_file(path)
