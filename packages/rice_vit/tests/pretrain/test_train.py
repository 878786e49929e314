"""The training loop on a tiny encoder: exact resume, loss log and plot, pieces vs references."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rice_vit.pretrain.batches import RegionBatches
from rice_vit.pretrain.checkpoint import read_checkpoint
from rice_vit.pretrain.config import PretrainConfig, apply_overrides
from rice_vit.pretrain.plot import read_loss_log
from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.pretrain.synthetic import SyntheticSpec, read_truth, write_synthetic_dataset
from rice_vit.pretrain.train import (
    build_encoder,
    clip_gradients,
    learning_rate,
    parameter_groups,
    train,
)

SETTINGS = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.region_layers=1",
    "data.batch_images=4",
    "data.regions_per_image=3",
    "optim.warmup_fraction=0.25",
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small synthetic set labelled with its ground truth (clusters = object classes, OCR
    classes = UTF-8 bytes after them): the loop's inputs without the k-means step."""
    folder = tmp_path_factory.mktemp("data")
    spec = SyntheticSpec(images=8, sizes=(56, 84), object_size=(16, 24), font_size=14, seed=1)
    dataset = write_synthetic_dataset(folder, spec)
    manifest = load_region_manifest(dataset.manifest)
    truth = read_truth(dataset.truth)
    names = sorted({c for classes in truth.values() for c in classes})
    index, labels = [], []
    for image in manifest.images:
        for region in image.regions:
            if region.kind == "object":
                index.append((image.row, region.index))
                labels.append(names.index(truth[image.image][region.index]))
    clusters = (np.asarray(index), np.asarray(labels))
    num_classes = len(names) + 256

    def make_batches(*, rank: int, world_size: int) -> RegionBatches:
        return RegionBatches(
            manifest,
            batch_images=4,
            regions_per_image=3,
            ocr_classes=lambda text: [len(names) + b for b in text.encode()],
            clusters=clusters,
            num_classes=num_classes,
            rank=rank,
            world_size=world_size,
        )

    return make_batches, num_classes


class Killed(Exception):
    """Stands for the process dying between two checkpoints."""


def test_a_killed_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, tiny_data):
    make_batches, num_classes = tiny_data
    config = apply_overrides(PretrainConfig(), SETTINGS)
    whole = train(
        config,
        tmp_path / "whole",
        make_batches=make_batches,
        num_classes=num_classes,
        progress=False,
    )

    def die_after_step_3(step: int, loss: float) -> None:
        if step == 3:  # step 2 is checkpointed, step 3 is done but lost
            raise Killed

    with pytest.raises(Killed):
        train(
            config,
            tmp_path / "split",
            make_batches=make_batches,
            num_classes=num_classes,
            progress=False,
            on_step=die_after_step_3,
        )
    assert [r["step"] for r in read_loss_log(tmp_path / "split" / "loss.jsonl")] == [1, 2, 3]
    resumed = train(
        config,
        tmp_path / "split",
        make_batches=make_batches,
        num_classes=num_classes,
        progress=False,
    )
    assert (resumed.start_step, whole.start_step) == (2, 0)
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert a.step == b.step == 4
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    assert torch.equal(a.centres_state["weight"], b.centres_state["weight"])
    for key, state in a.optimizer_state["state"].items():
        assert torch.equal(state["exp_avg"], b.optimizer_state["state"][key]["exp_avg"])
    # the weights moved, and the log has each step once, equal to the uninterrupted run's
    initial = build_encoder(config).state_dict()
    assert not torch.equal(
        initial["blocks.1.mlp.fc1.weight"], a.model_state["blocks.1.mlp.fc1.weight"]
    )
    whole_log = read_loss_log(tmp_path / "whole" / "loss.jsonl")
    split_log = read_loss_log(tmp_path / "split" / "loss.jsonl")
    assert [(r["step"], r["loss"]) for r in split_log] == [
        (r["step"], r["loss"]) for r in whole_log
    ]
    assert (tmp_path / "split" / "loss.png").stat().st_size > 1000
    saved = load_file(whole.checkpoint / "model.safetensors")
    assert saved.keys() == initial.keys()


def test_a_resume_with_another_config_is_refused(tmp_path, tiny_data):
    make_batches, num_classes = tiny_data
    config = apply_overrides(PretrainConfig(), [*SETTINGS, "train.steps=2"])
    train(config, tmp_path, make_batches=make_batches, num_classes=num_classes, progress=False)
    other = apply_overrides(config, ["optim.lr=5e-4"])
    with pytest.raises(Exception, match=r"optim.lr: 0.001 -> 0.0005"):
        train(other, tmp_path, make_batches=make_batches, num_classes=num_classes, progress=False)


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    values = [learning_rate(s, peak=1.0, min_lr=0.1, warmup=4, total=14) for s in range(14)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0
    assert values[-1] == pytest.approx(0.1)
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))


def test_no_decay_on_norms_biases_and_class_embeddings():
    config = apply_overrides(PretrainConfig(), SETTINGS)
    model = build_encoder(config)
    centres = torch.nn.Parameter(torch.zeros(3, 32))
    decay, no_decay = parameter_groups(model, centres, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.2
    assert no_decay["weight_decay"] == 0.0
    decayed = {names.get(id(p), "centres") for p in decay["params"]}
    assert "centres" in decayed
    assert "blocks.0.attn.qkv.weight" in decayed
    assert "patch_embed.proj.weight" in decayed
    plain = {names[id(p)] for p in no_decay["params"]}
    assert {"class_embedding", "class_pos_emb", "pre_layernorm.weight"} <= plain
    assert "blocks.0.attn.qkv.bias" in plain
    assert len(decayed) + len(plain) == len(names) + 1


def test_clipping_equals_torchs_clip_grad_norm_on_one_process():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    reference = [p.grad.clone() for p in params]
    expected = torch.nn.utils.clip_grad_norm_(
        [torch.nn.Parameter(torch.zeros(1))], 1.0
    )  # (a call on nothing returns 0: warm-up of the API only)
    assert float(expected) == 0.0
    norm = clip_gradients(params[:2], params[2:], max_norm=2.0)
    assert norm == pytest.approx(float(torch.cat([g.flatten() for g in reference]).norm()))
    clipped = torch.cat([p.grad.flatten() for p in params])
    assert float(clipped.norm()) == pytest.approx(2.0, rel=1e-5)
    assert torch.allclose(
        clipped, torch.cat([g.flatten() for g in reference]) * 2.0 / norm, rtol=1e-5
    )
