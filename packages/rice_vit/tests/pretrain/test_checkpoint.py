"""Checkpoints: atomic folders, exact round trip, pruning, and refusal of another world size."""

import json
import random

import numpy as np
import pytest
import torch

from rice_vit.errors import CheckpointError
from rice_vit.pretrain.checkpoint import (
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def _optimizer() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    layer(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    return layer, optimizer


def test_a_checkpoint_reads_back_bit_for_bit_with_the_random_state(tmp_path):
    layer, optimizer = _optimizer()
    centres = {"weight": torch.randn(6, 4)}
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    folder = write_checkpoint(
        tmp_path,
        5,
        model_state=layer.state_dict(),
        centres_state=centres,
        optimizer=optimizer,
        state={"data": {"epoch": 1, "position": 7}},
    )
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    loaded = read_checkpoint(folder)
    assert loaded.step == 5
    assert loaded.state["data"] == {"epoch": 1, "position": 7}
    for name, tensor in layer.state_dict().items():
        assert torch.equal(loaded.model_state[name], tensor)
    assert torch.equal(loaded.centres_state["weight"], centres["weight"])
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-2)
    fresh.load_state_dict(loaded.optimizer_state)
    for old, new in zip(optimizer.state.values(), fresh.state.values(), strict=True):
        assert torch.equal(old["exp_avg_sq"], new["exp_avg_sq"])
        assert old["step"] == new["step"]
    from rice_vit.rng_state import restore_rng_state

    restore_rng_state(loaded.state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_latest_points_at_the_newest_and_old_ones_are_pruned(tmp_path):
    layer, optimizer = _optimizer()
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 4, 6):
        write_checkpoint(
            tmp_path,
            step,
            model_state=layer.state_dict(),
            centres_state={"weight": torch.zeros(1)},
            optimizer=optimizer,
            state={},
            keep=2,
        )
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004", "step_00000006"]


def test_a_partial_folder_is_never_used_and_another_world_size_is_refused(tmp_path):
    layer, optimizer = _optimizer()
    folder = write_checkpoint(
        tmp_path,
        1,
        model_state=layer.state_dict(),
        centres_state={"weight": torch.zeros(1)},
        optimizer=optimizer,
        state={},
    )
    # a run killed while writing step 2 leaves a partial folder: latest still names step 1
    (tmp_path / "checkpoints" / ".partial-step_00000002").mkdir()
    assert latest_checkpoint(tmp_path) == folder
    with pytest.raises(CheckpointError, match="written by 1 ranks and is resumed by 2"):
        read_checkpoint(folder, world_size=2)
    (folder / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        latest_checkpoint(tmp_path)
    assert json.loads((folder / "state-rank00000.json").read_text())["step"] == 1
