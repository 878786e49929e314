"""The training loop on 2 gloo ranks (DDP over the encoder, class centres sharded) reaches the
weights one process reaches on the same global batches."""

import os
import socket
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from rice_vit.pretrain.batches import RegionBatches
from rice_vit.pretrain.checkpoint import read_checkpoint
from rice_vit.pretrain.config import PretrainConfig, apply_overrides
from rice_vit.pretrain.region_manifest import load_region_manifest
from rice_vit.pretrain.synthetic import SyntheticSpec, read_truth, write_synthetic_dataset
from rice_vit.pretrain.train import train

SETTINGS = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.region_layers=1",
    "data.batch_images=4",
    "data.regions_per_image=3",
    "loss.sample_rate=0.5",
    "train.steps=3",
    "train.checkpoint_every=3",
    "train.device=cpu",
]


def _batches_factory(folder: Path):
    manifest = load_region_manifest(folder / "manifest.jsonl")
    truth = read_truth(folder / "truth.jsonl")
    names = sorted({c for classes in truth.values() for c in classes})
    index = [(i.row, r.index) for i in manifest.images for r in i.regions if r.kind == "object"]
    labels = [
        names.index(truth[image.image][region.index])
        for image in manifest.images
        for region in image.regions
        if region.kind == "object"
    ]
    num_classes = len(names) + 256

    def make_batches(*, rank: int, world_size: int) -> RegionBatches:
        return RegionBatches(
            manifest,
            batch_images=4,
            regions_per_image=3,
            ocr_classes=lambda text: [len(names) + b for b in text.encode()],
            clusters=(np.asarray(index), np.asarray(labels)),
            num_classes=num_classes,
            rank=rank,
            world_size=world_size,
        )

    return make_batches, num_classes


def _run(data: Path, run_dir: Path) -> None:
    make_batches, num_classes = _batches_factory(data)
    config = apply_overrides(PretrainConfig(), SETTINGS)
    train(config, run_dir, make_batches=make_batches, num_classes=num_classes, progress=False)


def _child(rank: int, size: int, port: int, data: Path, run_dir: Path, errors: Path) -> None:
    code = 1
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size)
        )
        os.environ["LOCAL_RANK"] = str(rank)
        torch.set_num_threads(1)
        _run(data, run_dir)
        code = 0
    except BaseException:
        (errors / f"rank{rank}.error").write_text(traceback.format_exc())
    finally:
        os._exit(code)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.dist
def test_two_gloo_ranks_train_to_the_weights_of_one_process(tmp_path):
    data = tmp_path / "data"
    spec = SyntheticSpec(images=8, sizes=(56, 84), object_size=(16, 24), font_size=14, seed=2)
    write_synthetic_dataset(data, spec)
    context = mp.get_context("fork")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        errors = Path(folder)
        processes = [
            context.Process(target=_child, args=(r, 2, port, data, tmp_path / "two", errors))
            for r in range(2)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        failures = []
        for rank, process in enumerate(processes):
            if process.is_alive():
                process.kill()
                failures.append(f"rank {rank}: still running after 120 s")
            elif process.exitcode != 0:
                error = errors / f"rank{rank}.error"
                failures.append(error.read_text() if error.is_file() else f"rank {rank} died")
        assert not failures, "\n".join(failures)
    os.environ.pop("WORLD_SIZE", None)
    _run(data, tmp_path / "one")
    one = read_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000003")
    ranks = [
        read_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000003", rank=r, world_size=2)
        for r in range(2)
    ]
    for name, tensor in one.model_state.items():
        torch.testing.assert_close(ranks[0].model_state[name], tensor, rtol=1e-4, atol=1e-5)
    centres = torch.cat([r.centres_state["weight"] for r in ranks])
    assert centres.shape == one.centres_state["weight"].shape
    torch.testing.assert_close(centres, one.centres_state["weight"], rtol=1e-4, atol=1e-5)
    assert ranks[0].state["loss"] == pytest.approx(one.state["loss"], rel=1e-5)
