"""LoRA under data parallelism: 2 gloo processes (FSDP2 over LoRA layers) train like 1.

A LoRA layer's FSDP2 unit holds frozen base weights and trainable adapters together; FSDP2
all-gathers both and reduce-scatters only the adapters' gradients. Checked through real
`ov-train run`s: the 2-rank loss trace equals the 1-rank one, the checkpoint holds only the
trainable tensors, and it exports merged with the 1-rank run's weights.
"""

import pytest
import torch

from ov_model import LlavaOV
from ov_train.checkpointing import SafeFileSystemReader, latest_checkpoint
from ov_train.export import export_checkpoint

pytest.importorskip("peft")

pytestmark = pytest.mark.dist

STEPS = 3
LORA = ("train.lora.rank=4", "train.lora.dropout=0.0", "model.trainable=projector,llm")


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def runs(request, dist, packed_shards, tiny_model_dir, tmp_path_factory):
    """The 1-rank and 2-rank runs of the same LoRA recipe, with the base stored in fp32 or in
    bf16 (a unit then holds bf16 base weights and fp32 adapters)."""
    root = tmp_path_factory.mktemp("lora_dp")
    one, two = root / "one", root / "two"
    sets = [*LORA, f"train.lora.base_dtype={request.param}", "optim.lr=1e-2"]
    sets.append("checkpoint.every=100")
    dist.run_cli(0, dist.run_args(packed_shards, one, tiny_model_dir, *sets, steps=STEPS))
    args = dist.run_args(packed_shards, two, tiny_model_dir, *sets, steps=STEPS)
    dist.run_workers(dist.run_cli, 2, args, timeout_s=180)
    return one, two


def test_two_ranks_train_a_lora_run_like_one(dist, runs):
    one, two = runs
    dist.assert_same_loss_trace(two, one, steps=STEPS, rel=1e-5)
    losses = [loss for _, loss in dist.loss_trace(two)]
    assert losses[-1] < losses[0]


def test_the_two_rank_checkpoint_holds_the_trainable_tensors_and_exports_the_same_model(
    runs, tmp_path
):
    one, two = runs
    stored = SafeFileSystemReader(latest_checkpoint(two / "checkpoints") / "model_optim")
    names = [k for k in stored.read_metadata().state_dict_metadata if k.startswith("model.")]
    assert names
    assert all(".lora_" in n or n.startswith("model.projector.") for n in names)
    merged_one = LlavaOV.from_pretrained(export_checkpoint(one, tmp_path / "one"))
    merged_two = LlavaOV.from_pretrained(export_checkpoint(two, tmp_path / "two"))
    for (name, a), (_, b) in zip(
        merged_one.state_dict().items(), merged_two.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name
