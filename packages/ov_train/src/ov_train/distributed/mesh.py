"""The device mesh (pp, dp_replicate, dp_shard, cp, tp) from the recipe's degrees, and its views.

Dims, outermost first (torchtitan's order, so the innermost, chattiest dims, tp then cp, fall
on neighbouring ranks: the GPUs of one node): pipeline stages, replica groups, shard ranks,
context ranks, tensor ranks. Every dim is built, size-1 dims included, so code can always ask
for `mesh["tp"]`; a size-1 dim costs nothing.

Views:
- FSDP2 shards over dp_shard x cp (flattened into one "dp_shard_cp" dim): context-parallel
  ranks hold the same parameters and compute partial gradients of them (each over its share
  of the tokens), so the sum FSDP2's reduce-scatter takes over those ranks is the whole
  gradient, and their optimizer states are sharded too. `data_parallel_mesh` is that mesh:
  1-D without replication, else 2-D with "dp_replicate" outside (HSDP, or pure replication
  when dp_shard x cp is 1).
- The tp, cp and pp dims are `mesh["tp"]` etc.

`check_layout` validates the degrees against the model before anything is built.
"""

import warnings

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ov_model.config import LlavaOVConfig
from ov_train.config import ParallelConfig
from ov_train.errors import RecipeError

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
DATA_DIMS = ("dp_replicate", "dp_shard")
"""The dims whose ranks read different micro-batches."""


def build_mesh(parallel: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh:
    """The 5-D mesh of all ranks; RecipeError when the degrees do not multiply to
    `world_size`."""
    shape = parallel.degrees(world_size)
    return init_device_mesh(device_type, tuple(shape), mesh_dim_names=MESH_DIMS)


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh `fully_shard` takes, built once per world (`DistributedWorld.fsdp_mesh`): 1-D
    over dp_shard x cp without replication, else 2-D with "dp_replicate" outside (HSDP, or
    pure replication when dp_shard x cp is 1).

    Without context parallelism these are plain slices of `mesh` ("dp_shard"). With it, the
    dp_shard and cp dims are flattened into one "dp_shard_cp" dim (`DeviceMesh._flatten`, what
    torchtitan does); torch asks callers to keep the flattened mesh rather than slice it from
    the root again, which only HSDP with context parallelism needs: that slice is taken with
    torch's deprecation notice silenced."""
    replicate = mesh["dp_replicate"].size() > 1
    if mesh["cp"].size() == 1:
        return mesh[("dp_replicate", "dp_shard")] if replicate else mesh["dp_shard"]
    flat = mesh[("dp_shard", "cp")]._flatten("dp_shard_cp")
    if not replicate:
        return flat
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Slicing a flattened dim", UserWarning)
        return mesh[("dp_replicate", "dp_shard_cp")]


def check_layout(parallel: ParallelConfig, config: LlavaOVConfig, world_size: int) -> None:
    """RecipeError naming what does not fit: degrees vs the world size, attention heads, KV
    heads, the MLP width or the vocabulary vs tp, decoder layers vs the pipeline's stages."""
    parallel.degrees(world_size)
    text = config.text
    tp = parallel.tp
    for name, value in (
        ("attention heads", text.num_attention_heads),
        ("KV heads", text.num_key_value_heads),
        ("MLP width (intermediate_size)", text.intermediate_size),
        ("vocabulary entries", text.vocab_size),
    ):
        if value % tp:
            raise RecipeError(
                f"parallel.tp = {tp}: the model's {value} {name} are not divisible by it"
            )
    stages = parallel.pipeline_stages
    layers = text.num_hidden_layers
    if parallel.pp_layers:
        if sum(parallel.pp_layers) != layers:
            raise RecipeError(
                f"parallel.pp_layers {list(parallel.pp_layers)} sum to {sum(parallel.pp_layers)} "
                f"decoder layers, but the model has {layers}"
            )
    elif parallel.pp > 1 and layers < stages:
        raise RecipeError(
            f"parallel: {stages} pipeline stages (pp {parallel.pp} x pp_stages_per_rank "
            f"{parallel.pp_stages_per_rank}) for a model of {layers} decoder layers"
        )
