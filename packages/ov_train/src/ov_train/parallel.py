"""The one place where distributed training plugs in: the process world and `parallelize`.

The model stays plain single-device ov_model code. Everything a multi-process run changes goes
through two seams, defined in `ov_train.distributed` and imported from here by the rest of
ov_train:

- `World` (`init_world` builds it from torchrun's environment): this process's rank among how
  many, its device, a sum across ranks (token counts for the loss normaliser, throughput) and a
  barrier (checkpoint commit). `SingleProcess` is the world of one process, where each is
  trivial; `DistributedWorld` is a torch.distributed process group with its device mesh.
- `parallelize(model, recipe, world)`: the wrappers in torchtitan's order (tensor + sequence
  parallel -> context parallel -> activation checkpointing -> FSDP2).
  In one process it returns the model untouched. It runs after freezing and before the
  optimizer is built, where FSDP2 must run; parameter names are unchanged by these wrappers,
  so the optimizer's per-module groups and the checkpoint's keys stay as they are.
  `forward_autocast` says whether the forward still needs `torch.autocast` (not when FSDP2
  casts the parameters to bf16 itself), `clip_gradients` clips sharded gradients and
  `sync_replicas` defers HSDP's cross-replica all-reduce to a step's last micro-batch.
"""

from ov_train.distributed.clipping import clip_gradients
from ov_train.distributed.fsdp import sync_replicas
from ov_train.distributed.parallelize import forward_autocast, parallelize
from ov_train.distributed.world import (
    DistributedWorld,
    SingleProcess,
    World,
    init_world,
    is_main,
)

__all__ = [
    "DistributedWorld",
    "SingleProcess",
    "World",
    "clip_gradients",
    "forward_autocast",
    "init_world",
    "is_main",
    "parallelize",
    "sync_replicas",
]
