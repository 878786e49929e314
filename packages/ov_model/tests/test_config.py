"""LlavaOVConfig: field-for-field config.json round trips, presets, validation."""

import json

import pytest

from ov_model.config import PRESETS, LlavaOVConfig, TextConfig
from ov_model.errors import ConfigError


def test_official_config_round_trips_field_for_field(fixture_dir):
    data = json.loads((fixture_dir / "config.json").read_text())
    config = LlavaOVConfig.from_hf_dict(data)
    assert config.to_hf_dict() == data
    assert config.image_token_id == 5
    assert config.text.num_key_value_heads == 2
    assert config.text.qk_norm
    assert not config.text.tie_word_embeddings


def test_tied_config_writes_the_text_flag_and_reads_back():
    tied = LlavaOVConfig.from_preset("3b")
    data = tied.to_hf_dict()
    assert data["text_config"]["tie_word_embeddings"] is True
    assert "tie_word_embeddings" not in data  # the official saver omits the top level when True
    again = LlavaOVConfig.from_hf_dict(data)
    assert again == tied
    assert not again.text.qk_norm  # qwen2
    assert again.text.attention_bias


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_survive_a_round_trip(name):
    preset = LlavaOVConfig.from_preset(name)
    assert LlavaOVConfig.from_hf_dict(preset.to_hf_dict()) == preset


def test_4b_and_8b_sizes_match_the_recipes():
    four, eight = PRESETS["4b"].text, PRESETS["8b"].text
    assert (four.num_hidden_layers, four.hidden_size, four.intermediate_size) == (36, 2560, 9728)
    assert (eight.hidden_size, eight.intermediate_size, eight.rope_theta) == (4096, 12288, 1e6)
    assert four.rope_theta == 5e6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_attention_heads": 6, "num_key_value_heads": 4}, "multiple of num_key_value_heads"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"rms_norm_eps": -1.0}, "rms_norm_eps must be a finite number"),
        ({"head_dim": 15}, "head_dim must be even"),
        ({"hidden_act": "gelu"}, "unsupported"),
    ],
)
def test_invalid_text_values_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        TextConfig(**changes)


def test_mismatched_merger_width_is_refused(fixture_dir):
    data = json.loads((fixture_dir / "config.json").read_text())
    data["vision_config"]["text_hidden_size"] = 32
    with pytest.raises(ConfigError, match="text_hidden_size 32"):
        LlavaOVConfig.from_hf_dict(data, source="cfg.json")


def test_wrong_model_type_names_the_file(fixture_dir):
    data = json.loads((fixture_dir / "config.json").read_text())
    data["model_type"] = "llava"
    with pytest.raises(ConfigError, match=r"cfg\.json: model_type 'llava'"):
        LlavaOVConfig.from_hf_dict(data, source="cfg.json")
