"""The pretraining config: paper defaults, strict TOML reading, typed overrides."""

import tomllib

import pytest

from rice_vit.errors import ConfigError
from rice_vit.pretrain.config import (
    PretrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
)


def test_defaults_are_the_papers_values():
    config = PretrainConfig()
    assert (config.optim.lr, config.optim.weight_decay) == (1e-3, 0.2)
    assert (config.loss.scale, config.loss.margin, config.loss.sample_rate) == (64.0, 0.3, 0.1)
    assert config.data.regions_per_image == 10
    assert config.warmup_steps == 50  # 5% of 1000


def test_toml_round_trip_and_relative_paths(tmp_path):
    config = apply_overrides(
        PretrainConfig(), ["model.region_layers=1", "optim.betas=[0.9, 0.95]", "train.steps=7"]
    )
    text = config_to_toml(config)
    assert config_from_dict(tomllib.loads(text)) == config
    (tmp_path / "run.toml").write_text(
        '[data]\nmanifest = "labelled/m.jsonl"\n[train]\nsteps = 3\n'
    )
    loaded = load_config(tmp_path / "run.toml", ["loss.margin_kind=cosface"])
    assert loaded.data.manifest == str(tmp_path / "labelled" / "m.jsonl")
    assert (loaded.train.steps, loaded.loss.margin_kind) == (3, "cosface")
    assert loaded.optim == PretrainConfig().optim


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optim": {"lrr": 1.0}}, r"unknown key 'optim.lrr' in \[optim\]; did you mean 'lr'"),
        ({"trainer": {}}, r"unknown key 'trainer' in the top level; did you mean 'train'"),
        ({"train": {"steps": 2.5}}, r"train.steps must be an integer, got 2.5"),
        ({"train": {"steps": 0}}, r"train.steps must be >= 1, got 0"),
        ({"loss": {"margin_kind": "sphere"}}, r"loss.margin_kind must be one of"),
        ({"optim": {"betas": [0.9]}}, r"optim.betas must be a list of 2 values"),
        ({"train": {"deterministic": 1}}, r"train.deterministic must be true or false"),
        ({"train": {"device": "gpu"}}, r"train.device must be auto, cpu, cuda or cuda:N"),
        ({"data": {"min_pixels": 10, "max_pixels": 5}}, r"data.min_pixels must be <= max"),
    ],
)
def test_bad_values_and_unknown_keys_are_errors_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, source="run.toml")


def test_overrides_are_parsed_with_the_fields_type():
    config = apply_overrides(PretrainConfig(), ["optim.lr=5e-4", "model.checkpoint=/a/b"])
    assert config.optim.lr == 5e-4
    assert isinstance(config.optim.lr, float)
    assert config.model.checkpoint == "/a/b"
    assert apply_overrides(config, ["model.checkpoint=none"]).model.checkpoint is None
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides(config, ["steps=3"])
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        apply_overrides(config, ["train.step=3"])
