"""LoRA fine-tuning (`train.lora`, ov_train/lora.py, lora_export.py) on the tiny model, on CPU.

Checked: which layers get adapters and what trains; the recipe errors; bf16 storage of the
frozen base; a run's checkpoint holds only the trainable state and resumes exactly after a real
SIGKILL (the pattern of test_resume.py); the merged export gives the adapter model's logits and
loads with ov_model; the PEFT adapter folder round-trips through peft; the quickstart's colour
question is learned (slow).
"""

import multiprocessing
import sys
import time
import warnings

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("peft")  # the `lora` extra; CI installs it

from ov_model import LlavaOV
from ov_train.checkpointing import SafeFileSystemReader, latest_checkpoint
from ov_train.cli import main
from ov_train.config import LoraConfig
from ov_train.errors import RecipeError
from ov_train.export import export_checkpoint
from ov_train.lora import (
    adapted_layers,
    apply_lora,
    check_lora_supported,
    import_peft,
)
from ov_train.lora_export import adapter_model, checkpoint_recipe
from ov_train.memory_loader import InMemoryLoader
from ov_train.metrics_log import read_metrics
from ov_train.model_loading import build_training_model
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.source import model_inputs
from ov_train.train_loop import Trainer, TrainerHooks

LORA = ("train.lora.rank=4", "train.lora.alpha=8", "model.trainable=projector,llm")
STEPS, EVERY = 6, 2
TIMEOUT = 120


def lora_recipe(make_recipe, *overrides, base="stage2-tiny"):
    """A tiny recipe with LoRA rank 4 on the LLM's projections, the projector fully trained."""
    return make_recipe(*LORA, *overrides, base=base)


def logits_of(model, batch):
    with torch.no_grad():
        return model(**model_inputs(batch, torch.device("cpu"))).logits


# ------------------------------------------------------------------------- layers and errors
def test_adapters_go_on_matching_linear_layers_of_the_lora_groups_only(tiny_model):
    freeze(tiny_model, ("vision", "projector", "llm"))
    lora = LoraConfig(rank=4, modules=("vision", "llm"), targets=("q_proj", "qkv"))
    layers = apply_lora(tiny_model, lora)
    assert layers == [
        "vision.blocks.0.attn.qkv",
        "vision.blocks.1.attn.qkv",
        "language_model.layers.0.self_attn.q_proj",
        "language_model.layers.1.self_attn.q_proj",
    ]
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_" in n}
    assert len(adapters) == 2 * len(layers)
    projector = {n for n, _ in tiny_model.named_parameters() if n.startswith("projector.")}
    assert trainable == adapters | projector  # vision and llm bases frozen, projector trains
    optimizer = build_optimizer(tiny_model, lora_test_recipe())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in tiny_model.parameters() if p.requires_grad}
    decays = {g["name"]: len(g["params"]) for g in optimizer.param_groups}
    assert decays["llm.decay"] == 4  # A and B of two layers: Linear weights decay
    assert "llm.no_decay" not in decays  # the frozen norms and embeddings are left out


def lora_test_recipe():
    from ov_train.config_io import apply_overrides
    from ov_train.recipes import RECIPES

    return apply_overrides(RECIPES["stage2-tiny"], ["optim.weight_decay=0.1"])


def test_a_target_matching_no_layer_of_the_groups_is_an_error_naming_it(tiny_model):
    with pytest.raises(RecipeError, match=r"train\.lora\.targets: 'qkv' matches no Linear"):
        adapted_layers(tiny_model, LoraConfig(modules=("llm",), targets=("q_proj", "qkv")))


def test_the_output_head_is_refused_as_a_target(tiny_model):
    with pytest.raises(RecipeError, match="matches lm_head, the output head"):
        adapted_layers(tiny_model, LoraConfig(modules=("llm",), targets=("q_proj", "lm_head")))


def test_every_adaptable_layer_is_used_by_the_forward(tiny_model, make_batches):
    """An adapter on a Linear layer the model bypasses (its weight used directly, as lm_head's)
    would never train: every allowed target of every group gets a gradient."""
    freeze(tiny_model, ("vision", "projector", "llm"))
    suffixes = {
        name.rsplit(".", 1)[-1]
        for name, module in tiny_model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    lora = LoraConfig(rank=2, modules=("vision", "projector", "llm"), targets=tuple(suffixes))
    layers = apply_lora(tiny_model, lora)
    for name, parameter in tiny_model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(parameter)
    batch = make_batches(1, 3, 0)[0].batch
    out = tiny_model(**model_inputs(batch, torch.device("cpu")), return_logits=False)
    out.loss_sum.backward()
    adapters = [(n, p) for n, p in tiny_model.named_parameters() if ".lora_" in n]
    assert len(adapters) == 2 * len(layers) > 2 * 20
    assert [n for n, p in adapters if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_lora_groups_must_be_trainable(make_recipe):
    with pytest.raises(RecipeError, match=r"train\.lora\.modules"):
        make_recipe("model.trainable=projector", "train.lora.modules=llm")


@pytest.mark.parametrize("setting", ["parallel.tp=2", "parallel.pp=2", "parallel.cp=2"])
def test_model_parallel_lora_is_refused(make_recipe, setting):
    recipe = lora_recipe(make_recipe, setting)
    with pytest.raises(RecipeError, match=f"train.lora with {setting.replace('=', ' = ')}"):
        check_lora_supported(recipe, 1)


def test_without_peft_the_error_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(RecipeError, match=r"install ov-train\[lora\]"):
        import_peft()


# ------------------------------------------------------------------------ bf16 base from a folder
def test_bf16_base_is_stored_in_bf16_and_trains_under_the_fp32_policy(
    make_recipe, tiny_model_dir, processor_batches
):
    recipe = lora_recipe(
        make_recipe, f"model.path={tiny_model_dir}", "train.lora.base_dtype=bf16", "train.seed=3"
    )
    model, _ = build_training_model(recipe, SingleProcess())
    reference = LlavaOV.from_pretrained(tiny_model_dir)
    stored = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        plain = name.replace(".base_layer.", ".")
        if ".lora_" in name or name.startswith("projector."):
            assert parameter.dtype == torch.float32, name
            assert parameter.requires_grad, name
        elif name.startswith(("language_model.", "lm_head")):
            assert parameter.dtype == torch.bfloat16, name
            assert not parameter.requires_grad, name
            assert torch.equal(parameter, stored[plain].to(torch.bfloat16)), name
        else:  # vision: frozen by model.trainable, not adapted: as stored
            assert torch.equal(parameter, stored[plain]), name
    optimizer = build_optimizer(model, recipe)
    out = model(
        **model_inputs(processor_batches[0].batch, torch.device("cpu")), return_logits=False
    )
    assert out.loss_sum.dtype == torch.float32
    out.loss_sum.backward()
    optimizer.step()
    states = [s for state in optimizer.state.values() for s in state.values() if s.dim() > 0]
    assert states
    assert all(s.dtype == torch.float32 for s in states)
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero and moved


# ---------------------------------------------------------------- a run: checkpoint and export
def _train(recipe, batches, run_dir, pause_after_step=None):
    """Train (resuming if possible), or pause after `pause_after_step` until killed."""
    torch.set_num_threads(1)
    marker = run_dir.with_name(run_dir.name + ".paused")

    def pause():
        marker.write_text("paused")
        time.sleep(TIMEOUT)

    hooks = TrainerHooks(on_step_end=lambda step, _: pause() if step == pause_after_step else None)
    Trainer(recipe, InMemoryLoader(batches, seed=3), run_dir, hooks=hooks).run()


def _start(*args):
    process = multiprocessing.get_context("fork").Process(target=_train, args=args)
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        process.start()
    return process


def _run_to_the_end(recipe, batches, run_dir):
    process = _start(recipe, batches, run_dir)
    process.join(TIMEOUT)
    assert process.exitcode == 0


def _kill_after(kill_paused, recipe, batches, run_dir, step):
    process = _start(recipe, batches, run_dir, step)
    kill_paused(process, run_dir.with_name(run_dir.name + ".paused"), TIMEOUT)


def _stored(checkpoint):
    reader = SafeFileSystemReader(checkpoint / "model_optim")
    return reader.read_metadata().state_dict_metadata


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, make_recipe, tiny_model_dir, processor_batches):
    """A LoRA run from the tiny model folder: 6 steps, checkpoints every 2, dropout on."""
    recipe = lora_recipe(
        make_recipe,
        f"model.path={tiny_model_dir}",
        f"train.steps={STEPS}",
        f"checkpoint.every={EVERY}",
        "train.grad_accumulation=2",
        "train.deterministic=true",
        "train.lora.dropout=0.1",  # draws random numbers: the RNG state must resume too
        "optim.lr=1e-2",
    )
    run_dir = tmp_path_factory.mktemp("lora") / "uninterrupted"
    _run_to_the_end(recipe, processor_batches, run_dir)
    return recipe, run_dir


def test_a_checkpoint_holds_only_the_trainable_state(uninterrupted):
    _, run_dir = uninterrupted
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    names = {k.removeprefix("model.") for k in _stored(checkpoint) if k.startswith("model.")}
    adapters = {n for n in names if ".lora_" in n}
    assert len(adapters) == 2 * 2 * 7  # A and B, 2 layers, 7 projections
    assert names - adapters == {n for n in names if n.startswith("projector.")}
    assert not any(
        "base_layer" in n or n.startswith(("vision.", "language_model.embed")) for n in names
    )
    optimizer = {k for k in _stored(checkpoint) if k.startswith("optimizer.")}
    assert {k.split(".", 1)[1].rsplit(".", 1)[0] for k in optimizer} == names


def test_kill_then_resume_equals_the_uninterrupted_lora_run(
    uninterrupted, processor_batches, tmp_path, kill_paused
):
    recipe, reference = uninterrupted
    run_dir = tmp_path / "killed"
    _kill_after(kill_paused, recipe, processor_batches, run_dir, EVERY + 1)
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{EVERY:08d}"
    _run_to_the_end(recipe, processor_batches, run_dir)
    losses = [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]
    expected = [(r["step"], r["loss"]) for r in read_metrics(reference / "metrics.jsonl")]
    assert losses == expected
    assert len(set(loss for _, loss in losses)) == STEPS  # it trained
    final = f"checkpoints/step_{STEPS:08d}"
    resumed = adapter_model(run_dir / final, recipe)
    uninterrupted_model = adapter_model(reference / final, recipe)
    for (name, a), (_, b) in zip(
        resumed.state_dict().items(), uninterrupted_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_merged_export_gives_the_adapter_models_logits(uninterrupted, processor_batches, tmp_path):
    recipe, run_dir = uninterrupted
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    out = export_checkpoint(run_dir, tmp_path / "merged")
    merged = LlavaOV.from_pretrained(out).eval()
    adapted = adapter_model(checkpoint, checkpoint_recipe(checkpoint))
    base = LlavaOV.from_pretrained(recipe.model.path).eval()
    batch = processor_batches[0].batch
    expected = logits_of(adapted, batch)
    assert torch.allclose(logits_of(merged, batch), expected, rtol=0, atol=2e-5)
    assert not torch.allclose(logits_of(base, batch), expected, atol=1e-3)  # the adapters count
    assert (out / "tokenizer.json").is_file()
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_peft_adapter_folder_round_trips_through_peft(uninterrupted, processor_batches, tmp_path):
    from peft import PeftModel

    recipe, run_dir = uninterrupted
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        main, ["export", str(run_dir), "--out", str(out), "--format", "peft"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    base = LlavaOV.from_pretrained(recipe.model.path)
    loaded = PeftModel.from_pretrained(base, out).eval()
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    adapted = adapter_model(checkpoint, recipe)
    batch = processor_batches[1].batch
    inputs = model_inputs(batch, torch.device("cpu"))
    with torch.no_grad():
        got = loaded(**inputs).logits
    assert torch.equal(got, logits_of(adapted, batch))


def test_peft_format_of_a_full_fine_tuning_checkpoint_is_a_one_line_error(
    make_recipe, make_batches, tmp_path
):
    recipe = make_recipe("train.steps=1")
    Trainer(recipe, InMemoryLoader(make_batches(2, 2, 0), seed=0), tmp_path / "run").run()
    result = CliRunner().invoke(
        main, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--format", "peft"]
    )
    assert result.exit_code == 2
    assert "has no train.lora" in result.output
    assert "Traceback" not in result.output


def _umask() -> int:
    from rice_vit.safetensors_folder import process_umask

    return process_umask()


def test_a_preset_base_is_drawn_again_from_the_seed_for_export(make_recipe, make_batches, tmp_path):
    recipe = lora_recipe(make_recipe, "train.steps=2", "train.seed=5", "optim.lr=1e-2")
    result = Trainer(recipe, InMemoryLoader(make_batches(3, 2, 0), seed=0), tmp_path / "run").run()
    trained = adapter_model(result.last_checkpoint, recipe)
    out = export_checkpoint(tmp_path / "run", tmp_path / "hf")
    merged = LlavaOV.from_pretrained(out).eval()
    batch = make_batches(1, 2, 9)[0].batch
    assert torch.allclose(logits_of(merged, batch), logits_of(trained, batch), rtol=0, atol=2e-5)


def test_activation_checkpointing_trains_a_lora_run_the_same(make_recipe, make_batches, tmp_path):
    losses = {}
    for mode in ("none", "full"):
        recipe = lora_recipe(
            make_recipe,
            "train.steps=2",
            "optim.lr=1e-2",
            "train.lora.dropout=0.1",
            f"parallel.activation_checkpointing={mode}",
        )
        loader = InMemoryLoader(make_batches(3, 2, 0), seed=0)
        losses[mode] = Trainer(recipe, loader, tmp_path / mode).run().losses
    assert losses["full"] == losses["none"]


# ------------------------------------------------------------- the quickstart's colour question
COLOUR_STEPS, COLOUR_LR = 400, 3e-3


@pytest.mark.slow
def test_lora_learns_the_quickstart_colour_question(tmp_path):
    """The quickstart's data and criterion with LoRA as its Stage 2: a tiny model trained fully
    on the captions (the quickstart's Stage 1.5: it names colours but was never asked about
    them), then the colour questions with LoRA adapters on the LLM's seven projections, the
    ViT and projector trained fully; the merged export answers the held-out colour questions
    through ov_eval far above chance. (With the ViT frozen too, the tiny model stayed at
    chance in 300 steps: measured, whether or not the ViT had adapters.)"""
    import json

    from ov_model.tiny import create_tiny_model
    from ov_train.config_io import apply_overrides
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_config import LlavaSource, PrepareConfig
    from ov_train.quickstart import corpus
    from ov_train.quickstart.pipeline import evaluate_checkpoint
    from ov_train.recipes import RECIPES
    from ov_train.source import open_packed_shards
    from ov_train.train_loop import load_processor

    raw = corpus.write_training_corpus(tmp_path / "raw", count=200, seed=0)
    questions = json.loads(raw["questions"].read_text())
    colour = [row for row in questions if row["id"].endswith("-colour")]
    (tmp_path / "colour.json").write_text(json.dumps(colour))
    benchmark = corpus.write_eval_benchmarks(tmp_path / "eval", per_type=24, seed=1_000_003)
    benchmarks = {"colour": benchmark["colour"]}
    _, processor = create_tiny_model(
        tmp_path / "stage0", corpus.tokenizer_texts(), seed=0, max_pixels=112 * 112
    )

    def shards(source, name):
        config = PrepareConfig(
            inputs=(LlavaSource(source, image_root=raw["images"]),),
            out_dir=tmp_path / name,
            max_length=256,
            capacity=256,
            progress=False,
        )
        return prepare(config, processor).shards_dir

    def train(base, recipe_name, data, steps, lr, name, *extra):
        settings = [
            f"model.path={base}",
            f"data.path={data}",
            f"train.steps={steps}",
            "train.grad_accumulation=1",
            "train.micro_batch_tokens=2048",
            f"optim.lr={lr}",
            f"optim.lr_vision={lr}",
            f"checkpoint.every={steps}",
            "data.num_workers=0",
            "logging.progress_bar=false",
            "logging.plot=false",
            *extra,
        ]
        recipe = apply_overrides(RECIPES[recipe_name], settings)
        source = open_packed_shards(recipe, load_processor(recipe.model), SingleProcess())
        result = Trainer(recipe, source, tmp_path / name).run()
        return export_checkpoint(result.last_checkpoint, tmp_path / name / "hf"), result

    captions = shards(raw["captions"], "captions")
    base, _ = train(tmp_path / "stage0", "stage1_5-tiny", captions, 150, 1e-3, "stage1_5")
    before = evaluate_checkpoint(base, benchmarks, tmp_path / "eval_before")["colour"]
    colour_shards = shards(tmp_path / "colour.json", "colour")
    lora = ("train.lora.rank=16", "model.trainable=vision,projector,llm")
    merged, result = train(
        base, "stage2-tiny", colour_shards, COLOUR_STEPS, COLOUR_LR, "lora", *lora
    )
    after = evaluate_checkpoint(merged, benchmarks, tmp_path / "eval_after")["colour"]
    assert before <= 0.2  # chance 1/6
    assert after >= 0.6  # the quickstart's criterion
    assert result.losses[-1][1] < result.losses[0][1] / 3
