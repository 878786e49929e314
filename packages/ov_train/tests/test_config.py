"""Recipes: the registry's values, TOML round trips, typed overrides, errors that name the key."""

import re
import tomllib

import msgspec
import pytest

from ov_train.config import LoraConfig, OptimConfig, Recipe, TrainConfig
from ov_train.config_io import (
    apply_overrides,
    load_recipe,
    recipe_to_toml,
    resolve_recipe,
    save_recipe,
)
from ov_train.errors import RecipeError
from ov_train.recipes import RECIPES


def test_registry_has_every_stage_at_every_size():
    expected = {
        f"{stage}-{size}"
        for stage in ("stage1", "stage1_5", "stage2")
        for size in ("tiny", "4b", "8b")
    }
    assert set(RECIPES) == expected
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        assert recipe.model.preset == name.split("-")[1]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_registered_recipe_round_trips_through_toml(name, tmp_path):
    recipe = RECIPES[name]
    assert load_recipe(save_recipe(recipe, tmp_path / f"{name}.toml")) == recipe


def test_stage1_trains_the_projector_only_and_later_stages_everything():
    for size in ("tiny", "4b", "8b"):
        assert RECIPES[f"stage1-{size}"].model.trainable == ("projector",)
        assert RECIPES[f"stage1_5-{size}"].model.trainable == ("vision", "projector", "llm")
        assert RECIPES[f"stage2-{size}"].model.trainable == ("vision", "projector", "llm")


def test_release_values_follow_the_release_scripts():
    four, eight = RECIPES["stage1-4b"], RECIPES["stage1-8b"]
    assert (four.optim.lr, four.optim.betas, four.optim.weight_decay) == (1e-4, (0.9, 0.99), 0.0)
    assert (eight.optim.betas, eight.optim.weight_decay) == ((0.9, 0.95), 0.01)
    assert (four.train.steps, eight.train.steps) == (2500, 5000)
    assert (four.train.grad_accumulation, four.train.micro_batch_tokens) == (8, 32768)
    mid = RECIPES["stage1_5-8b"]
    assert (mid.optim.lr, mid.optim.betas, mid.optim.weight_decay) == (1e-5, (0.9, 0.95), 0.01)
    assert (mid.train.micro_batch_tokens, mid.train.steps) == (8192, 20000)
    sft = RECIPES["stage2-8b"]
    assert (sft.optim.lr, sft.optim.betas, sft.optim.weight_decay) == (1e-5, (0.9, 0.99), 0.0)
    assert (sft.train.grad_accumulation, sft.train.steps) == (224, 3500)
    for recipe in (four, eight, mid, sft):
        assert recipe.optim.eps == 1e-5
        assert recipe.train.clip_grad_norm == 1.0
        assert (recipe.schedule.min_lr, recipe.schedule.warmup_fraction) == (1e-6, 0.002)
        assert recipe.train.dtype == "auto"


def test_overrides_are_parsed_with_the_type_of_their_field():
    recipe = apply_overrides(
        RECIPES["stage1-4b"],
        [
            "optim.lr=2e-5",
            "optim.lr_vision=3e-6",
            "optim.betas=0.9,0.999",
            "model.trainable=projector,llm",
            "model.path=/models/stage0",
            "train.steps=10",
            "train.deterministic=true",
            "stage=1.5",
        ],
    )
    assert recipe.optim.lr == 2e-5
    assert isinstance(recipe.optim.lr, float)
    assert recipe.optim.lr_for("vision") == 3e-6
    assert recipe.optim.lr_for("llm") == 2e-5
    assert recipe.optim.betas == (0.9, 0.999)
    assert recipe.model.trainable == ("projector", "llm")
    assert recipe.model.path == "/models/stage0"
    assert recipe.train.steps == 10
    assert recipe.train.deterministic is True
    assert recipe.stage == "1.5"  # a string field keeps the text, never the float 1.5


def test_overrides_accept_toml_lists_and_clear_optional_values():
    recipe = apply_overrides(RECIPES["stage1_5-tiny"], ["optim.betas=[0.8, 0.9]"])
    assert recipe.optim.betas == (0.8, 0.9)
    assert RECIPES["stage1_5-tiny"].optim.lr_vision is not None
    cleared = apply_overrides(RECIPES["stage1_5-tiny"], ["optim.lr_vision=none"])
    assert cleared.optim.lr_vision is None
    assert cleared.optim.lr_for("vision") == cleared.optim.lr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-5", "unknown key optim.lrr; did you mean optim.lr?"),
        ("optimm.lr=1e-5", "unknown key optimm.lr; did you mean optim.lr?"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("train.steps=1.5", "train.steps must be an integer, got 1.5"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.betas=0.9", "optim.betas must have 2 entries"),
        ("model.trainable=projector,decoder", "model.trainable must name modules"),
        ("train.dtype=fp8", "train.dtype must be one of"),
        ("schedule.min_lr=0.5", "schedule.min_lr (0.5) is above the peak learning rate"),
        ('checkpoint.dir=""', "checkpoint.dir must not be empty, got ''"),
        ("lr=1e-5", "unknown key lr"),
        ("optim.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_errors_naming_the_key(override, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        apply_overrides(RECIPES["stage1-4b"], [override])


def test_construction_coerces_ints_to_floats_and_rejects_wrong_types():
    optim = OptimConfig(lr=1, betas=[0.9, 0.95])
    assert optim.lr == 1.0
    assert isinstance(optim.lr, float)
    assert optim.betas == (0.9, 0.95)
    with pytest.raises(RecipeError, match=r"train\.steps must be an integer, got '10'"):
        TrainConfig(steps="10", micro_batch_tokens=128)
    with pytest.raises(RecipeError, match=r"train\.micro_batch_tokens must be >= 1, got 0"):
        TrainConfig(steps=10, micro_batch_tokens=0)
    with pytest.raises(RecipeError, match=r"optim\.eps must be finite"):
        OptimConfig(lr=1e-3, eps=float("nan"))
    with pytest.raises(RecipeError, match="optim must be a OptimConfig"):
        msgspec.structs.replace(RECIPES["stage2-tiny"], optim={"lr": 1e-3})


def test_toml_file_can_start_from_a_registered_recipe(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'base = "stage2-8b"\nname = "my-sft"\n\n[optim]\nlr_vision = 2e-6\n\n[train]\nsteps = 10\n'
    )
    recipe = load_recipe(path)
    assert recipe.name == "my-sft"
    assert recipe.optim.lr_vision == 2e-6
    assert recipe.train.steps == 10
    assert recipe.train.grad_accumulation == RECIPES["stage2-8b"].train.grad_accumulation
    assert recipe.optim.betas == RECIPES["stage2-8b"].optim.betas


def test_toml_errors_name_the_file_and_the_key(tmp_path):
    missing = tmp_path / "missing.toml"
    missing.write_text('name = "x"\nstage = "1"\n[optim]\nlr = 1e-4\n[train]\nsteps = 3\n')
    with pytest.raises(RecipeError, match=r"missing\.toml: train\.micro_batch_tokens is required"):
        load_recipe(missing)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('base = "stage1-tiny"\n[train]\nstep = 3\n')
    with pytest.raises(RecipeError, match=r"unknown\.toml: unknown key train\.step; did you mean"):
        load_recipe(unknown)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(RecipeError, match=r"broken\.toml: not valid TOML"):
        load_recipe(broken)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.toml")


def test_resolve_recipe_takes_a_name_or_a_file_and_suggests_close_names(tmp_path):
    assert resolve_recipe("stage1-4b") == RECIPES["stage1-4b"]
    path = save_recipe(RECIPES["stage2-tiny"], tmp_path / "copy.toml")
    assert resolve_recipe(path, ["train.steps=7"]).train.steps == 7
    with pytest.raises(RecipeError, match="did you mean stage1-4b"):
        resolve_recipe("stage1-4B")


def test_toml_text_leaves_out_unset_optional_values_and_quotes_strings():
    recipe = apply_overrides(RECIPES["stage2-tiny"], ['description=say "hi"\tnow'])
    text = recipe_to_toml(recipe)
    assert "lr_projector" not in text
    assert 'description = "say \\"hi\\"\tnow"' in text  # TOML allows a tab in a basic string
    assert tomllib.loads(text)["description"] == 'say "hi"\tnow'
    assert isinstance(recipe, Recipe)


def test_grad_accumulation_is_the_global_batch_split_over_the_ranks():
    train = RECIPES["stage2-8b"].train  # 224 micro-batches per step
    assert train.micro_batches_per_rank(1) == 224
    assert train.micro_batches_per_rank(8) == 28
    with pytest.raises(RecipeError, match=r"grad_accumulation \(224 .*not divisible by the 128"):
        train.micro_batches_per_rank(128)


def test_lora_section_round_trips_through_a_toml_table(tmp_path):
    recipe = apply_overrides(
        RECIPES["stage2-tiny"], ["train.lora.rank=8", "train.lora.targets=q_proj,v_proj"]
    )
    assert recipe.train.lora == LoraConfig(rank=8, targets=("q_proj", "v_proj"))
    text = recipe_to_toml(recipe)
    assert "\n[train.lora]\nrank = 8\n" in text
    assert load_recipe(save_recipe(recipe, tmp_path / "lora.toml")) == recipe
    assert "[train.lora]" not in recipe_to_toml(RECIPES["stage2-tiny"])


def test_lora_override_enables_with_defaults_and_none_clears_it():
    assert RECIPES["stage2-tiny"].train.lora is None
    enabled = apply_overrides(RECIPES["stage2-tiny"], ["train.lora.alpha=8"])
    assert enabled.train.lora == LoraConfig(alpha=8.0)
    cleared = apply_overrides(enabled, ["train.lora=none"])
    assert cleared.train.lora is None


def test_lora_table_in_a_toml_file_on_a_base_recipe(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "stage2-tiny"\n[train.lora]\nrank = 4\nmodules = ["llm", "vision"]\n')
    lora = load_recipe(path).train.lora
    assert (lora.rank, lora.modules, lora.targets) == (4, ("llm", "vision"), LoraConfig().targets)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lora.rnak=8", "unknown key train.lora.rnak; did you mean train.lora.rank?"),
        ("train.lora.rank=0", "train.lora.rank must be >= 1, got 0"),
        ("train.lora.dropout=high", "train.lora.dropout must be a number, got 'high'"),
        ("train.lora=8", "train.lora is a table"),
        ("train.steps.x=1", "unknown key train.steps.x"),
        ("train.lora.base_dtype=fp16", "train.lora.base_dtype must be one of ['fp32', 'bf16']"),
    ],
)
def test_bad_lora_overrides_name_the_dotted_key(override, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        apply_overrides(RECIPES["stage2-tiny"], [override])


def test_lora_modules_must_be_trainable(tmp_path):
    frozen_llm = r"train\.lora\.modules names \['llm'\].*model\.trainable"
    with pytest.raises(RecipeError, match=frozen_llm):
        apply_overrides(RECIPES["stage1-tiny"], ["train.lora.rank=8"])
    path = tmp_path / "frozen.toml"
    path.write_text('base = "stage1-tiny"\n[train.lora]\nmodules = ["projector"]\n')
    assert load_recipe(path).train.lora.modules == ("projector",)
    path.write_text('base = "stage1-tiny"\n[train.lora]\nmodules = ["vision"]\n')
    with pytest.raises(RecipeError, match=r"frozen\.toml: train\.lora\.modules names \['vision'\]"):
        load_recipe(path)
    path.write_text('base = "stage1-tiny"\n[train.lora]\nrnak = 2\n')
    with pytest.raises(RecipeError, match=r"unknown key train\.lora\.rnak; did you mean"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[optim]\nlr = "fast"\n', "optim.lr must be a number, got 'fast'"),
        ("[optim]\nbetas = [0.9, true]\n", "optim.betas[1] must be a number, got True"),
        ("[optim]\nbetas = [0.9]\n", "optim.betas must have 2 entries, got 1: [0.9]"),
        ("[train]\nsteps = 2.5\n", "train.steps must be an integer, got 2.5"),
        ("[train.lora]\nrank = -1\n", "train.lora.rank must be >= 1, got -1"),
        ('[train]\nlora = "yes"\n', "train.lora must be a table of keys, got 'yes'"),
        ("optim = 3\n", "optim must be a table of keys, got 3"),
        ('nmae = "x"\n', "unknown key nmae; did you mean name?"),
        ("[parallel]\ntp = 0\n", "parallel.tp must be >= 1, got 0"),
        ('stage = "3"\n', "stage must be one of ['1', '1.5', '2'], got '3'"),
        ('[parallel]\ncp_attention = "tree"\n', "parallel.cp_attention must be one of"),
        ("[optim]\nbetas = [0.9, 1.0]\n", "optim.betas[1] must be < 1.0, got 1.0"),
        ('[checkpoint]\ndir = ""\n', "checkpoint.dir must not be empty, got ''"),
        ("[train]\nclip_grad_norm = inf\n", "train.clip_grad_norm must be finite, got inf"),
    ],
)
def test_toml_type_and_range_errors_name_the_file_and_the_dotted_key(toml, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(f'base = "stage2-tiny"\n{toml}')
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}: {message}")
