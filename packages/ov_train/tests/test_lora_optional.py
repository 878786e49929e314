"""peft is optional (`ov-train[lora]`): ov_train imports and trains without it."""

import subprocess
import sys

WITHOUT_PEFT = """
import sys
sys.modules["peft"] = None  # `import peft` raises ImportError from here on
import ov_train.cli, ov_train.export, ov_train.lora, ov_train.lora_export, ov_train.train_loop
from ov_train.config_io import apply_overrides
from ov_train.errors import RecipeError
from ov_train.lora import apply_lora
from ov_train.recipes import RECIPES
from ov_train.model_loading import build_training_model
from ov_train.parallel import SingleProcess

build_training_model(RECIPES["stage2-tiny"], SingleProcess())  # full fine-tuning: no peft
recipe = apply_overrides(RECIPES["stage2-tiny"], ["train.lora.rank=4"])
try:
    build_training_model(recipe, SingleProcess())
except RecipeError as error:
    print(error)
"""


def test_without_peft_ov_train_imports_and_only_a_lora_recipe_asks_for_the_extra():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PEFT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert "train.lora needs peft" in line
    assert "install ov-train[lora]" in line
