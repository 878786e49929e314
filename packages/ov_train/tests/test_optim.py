"""Freezing by recipe, per-module AdamW groups, the weight-decay rule, the LR schedule."""

import itertools

import pytest
import torch

from ov_train.errors import TrainingError
from ov_train.optim import build_optimizer, freeze, named_parameters_by_module, parameter_groups
from ov_train.schedule import build_scheduler, learning_rate


def test_stage1_freezes_everything_but_the_projector(tiny_model, make_recipe):
    recipe = make_recipe(base="stage1-tiny")
    freeze(tiny_model, recipe.model.trainable)
    for name, parameter in tiny_model.named_parameters():
        assert parameter.requires_grad == name.startswith("projector."), name
    optimizer = build_optimizer(tiny_model, recipe)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in tiny_model.projector.parameters()}


def test_every_parameter_belongs_to_exactly_one_module(tiny_model):
    found = named_parameters_by_module(tiny_model)
    names = [name for params in found.values() for name, _, _ in params]
    assert sorted(names) == sorted(name for name, _ in tiny_model.named_parameters())
    assert all(n.startswith(("language_model.", "lm_head.")) for n, _, _ in found["llm"])
    assert all(n.startswith("vision.") for n, _, _ in found["vision"])


def test_a_parameter_outside_the_three_modules_is_an_error(tiny_model):
    tiny_model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(TrainingError, match=r"outside vision/projector/llm: extra\.weight"):
        named_parameters_by_module(tiny_model)


def test_only_linear_and_conv_weights_decay(tiny_model):
    decaying = {
        name
        for params in named_parameters_by_module(tiny_model).values()
        for name, _, decays in params
        if decays
    }
    assert "language_model.layers.0.self_attn.q_proj.weight" in decaying
    assert "lm_head.weight" in decaying
    assert "projector.mlp.0.weight" in decaying
    assert "vision.patch_embed.proj.weight" in decaying  # a Conv
    for name in (
        "language_model.embed_tokens.weight",
        "language_model.norm.weight",
        "language_model.layers.0.self_attn.q_norm.weight",
        "projector.ln_q.weight",
        "projector.mlp.0.bias",
        "vision.class_embedding",
        "vision.class_pos_emb",
        "vision.blocks.0.attn.qkv.bias",
    ):
        assert name not in decaying, name
    for name, parameter in tiny_model.named_parameters():
        if name in decaying:
            assert parameter.dim() >= 2, name


def test_groups_carry_each_module_lr_and_decay_only_where_the_rule_says(tiny_model, make_recipe):
    recipe = make_recipe(
        "optim.lr=1e-3", "optim.lr_vision=2e-4", "optim.weight_decay=0.1", "schedule.min_lr=0"
    )
    groups = {g["name"]: g for g in parameter_groups(tiny_model, recipe)}
    assert set(groups) == {
        f"{m}.{d}" for m in ("vision", "projector", "llm") for d in ("decay", "no_decay")
    }
    assert groups["vision.decay"]["lr"] == 2e-4
    assert groups["projector.no_decay"]["lr"] == 1e-3
    assert groups["llm.decay"]["weight_decay"] == 0.1
    assert groups["llm.no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(tiny_model.parameters()))


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    peak, low, warmup, total = 1e-3, 1e-5, 4, 21

    def rate(step):
        return learning_rate(step, peak=peak, min_lr=low, warmup=warmup, total=total)

    rates = [rate(s) for s in range(total)]
    assert rates[:5] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak, peak])
    assert rates[12] == pytest.approx((peak + low) / 2)  # halfway through the 16 decay steps
    assert rates[-1] == pytest.approx(low)
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rate(total + 5) == low
    assert learning_rate(0, peak=peak, min_lr=low, warmup=0, total=1) == peak


def test_scheduler_drives_every_group_from_its_own_peak_to_the_shared_min_lr(
    tiny_model, make_recipe
):
    recipe = make_recipe(
        "train.steps=10",
        "schedule.warmup_fraction=0.2",
        "schedule.min_lr=1e-5",
        "optim.lr=1e-3",
        "optim.lr_vision=1e-4",
    )
    optimizer = build_optimizer(tiny_model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    seen = {g["name"]: [] for g in optimizer.param_groups}
    for _ in range(recipe.train.steps):
        for group in optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        optimizer.step()
        scheduler.step()
    for name, rates in seen.items():
        peak = 1e-4 if name.startswith("vision") else 1e-3
        expected = [learning_rate(s, peak=peak, min_lr=1e-5, warmup=2, total=10) for s in range(10)]
        assert rates == pytest.approx(expected, rel=1e-12), name
        assert rates[1] == pytest.approx(peak)
        assert rates[-1] == pytest.approx(1e-5)
