"""`ov-train recipes NAME`: every key of the recipe, unset ones as comment lines, model.path and
data.path as placeholders to fill in; the text loads back to the same recipe."""

import re
import tomllib

import msgspec
import pytest
from click.testing import CliRunner

from ov_train.commands import recipes_command
from ov_train.config import Recipe
from ov_train.config_io import apply_overrides, load_recipe, recipe_from_dict, recipe_to_dict
from ov_train.recipe_template import recipe_template
from ov_train.recipes import RECIPES


def _every_key(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _every_key(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _keys_in_text(text: str) -> set[str]:
    """Dotted keys the text names, as assignments or as comment lines, per table."""
    keys, table = set(), ""
    for line in text.splitlines():
        if header := re.fullmatch(r"\[([\w.]+)\]", line):
            table = header.group(1) + "."
        elif match := re.match(r"(?:# )?(\w+)(?: =|: unset)", line):
            keys.add(f"{table}{match.group(1)}")
    return keys


@pytest.mark.parametrize("name", ["stage1-8b", "stage1_5-4b", "stage2-tiny"])
def test_every_key_is_written_and_the_text_loads_back_to_the_recipe(name):
    result = CliRunner().invoke(recipes_command, [name])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text == recipe_template(RECIPES[name])
    assert _keys_in_text(text) == _every_key(recipe_to_dict(RECIPES[name]))
    assert recipe_from_dict(tomllib.loads(text)) == RECIPES[name]


def test_model_and_data_paths_are_placeholders_to_uncomment(tmp_path):
    text = recipe_template(RECIPES["stage2-8b"])
    model_line = next(line for line in text.splitlines() if line.startswith('# path = "MODEL_DIR"'))
    data_line = next(
        line for line in text.splitlines() if line.startswith('# path = "PREPARED_DIR"')
    )
    assert "ov-model init" in model_line
    assert "ov-train prepare --out" in data_line
    lora_line = "# lora: unset (no LoRA, the trainable modules train in full; a [train.lora] table"
    assert lora_line in text
    assert text.index("[train]") < text.index(lora_line) < text.index("[parallel]")
    filled = text.replace(model_line, f'path = "{tmp_path / "stage0"}"').replace(
        data_line, f'path = "{tmp_path / "prepared"}"'
    )
    (tmp_path / "mine.toml").write_text(filled)
    recipe = load_recipe(tmp_path / "mine.toml")
    assert recipe.model.path == str(tmp_path / "stage0")
    assert recipe.data.path == str(tmp_path / "prepared")
    assert (
        msgspec.structs.replace(
            recipe,
            model=msgspec.structs.replace(recipe.model, path=None),
            data=msgspec.structs.replace(recipe.data, path=None),
        )
        == RECIPES["stage2-8b"]
    )


def test_values_set_by_the_user_are_written_and_a_set_lora_table_too():
    recipe = apply_overrides(
        RECIPES["stage2-tiny"],
        ["model.path=/models/stage1", "optim.lr_vision=2e-4", "train.lora.rank=8"],
    )
    text = recipe_template(recipe)
    assert 'path = "/models/stage1"' in text.splitlines()
    assert "lr_vision = 0.0002" in text.splitlines()
    assert "# lr_vision" not in text
    assert "# lr_llm: unset (optim.lr)" in text
    assert "[train.lora]" in text
    assert _keys_in_text(text) == _every_key(recipe_to_dict(recipe))
    assert recipe_from_dict(tomllib.loads(text)) == recipe
    assert isinstance(recipe, Recipe)


def test_without_a_name_the_names_are_listed():
    result = CliRunner().invoke(recipes_command, [])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()[1:]] == list(RECIPES)


def test_the_printed_file_runs_as_a_recipe_with_paths_given_on_the_command_line(tmp_path):
    from ov_train.commands import run_command

    printed = CliRunner().invoke(recipes_command, ["stage2-4b"]).output
    (tmp_path / "stage2.toml").write_text(printed)
    result = CliRunner().invoke(
        run_command,
        [str(tmp_path / "stage2.toml"), "--model", "/m", "--data", "/d", "--show"],
    )
    assert result.exit_code == 0, result.output
    shown = recipe_from_dict(tomllib.loads(result.output))
    assert shown.model.path == "/m"
    assert shown.data.path == "/d"
    assert shown.train == RECIPES["stage2-4b"].train
    unfilled = CliRunner().invoke(run_command, [str(tmp_path / "stage2.toml")])
    assert unfilled.exit_code == 2
    assert "model.path is required" in unfilled.output
