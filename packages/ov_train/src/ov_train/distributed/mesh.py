"""The data-parallel device mesh: ("dp_replicate", "dp_shard") from the recipe's degrees.

FSDP2 reads the layout from the mesh it is given: a 1-D mesh shards every parameter over its
ranks (FSDP, ZeRO-3); a 2-D mesh replicates over dim 0 and shards over dim 1 (HSDP: each replica
group all-gathers within a node-sized shard group and all-reduces gradients across groups).
Pure replication (DDP's layout) is the 2-D mesh with a shard dim of 1: every rank holds whole
parameters and gradients are all-reduced, through the same FSDP2 code path, so the three
layouts share their gradient-sum, mixed-precision and clipping code.

tp / pp / cp will add dims to the right of these two in the next version; the data-parallel
mesh stays the ("dp_replicate", "dp_shard") sub-mesh.
"""

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ov_train.config import ParallelConfig

MESH_DIMS = ("dp_replicate", "dp_shard")


def build_mesh(parallel: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh:
    """The (dp_replicate, dp_shard) mesh of all ranks; RecipeError when the degrees do not
    multiply to `world_size`."""
    return init_device_mesh(device_type, parallel.degrees(world_size), mesh_dim_names=MESH_DIMS)


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh `fully_shard` takes: 1-D ("dp_shard") without replication, else the 2-D mesh
    (HSDP, or pure replication when dp_shard is 1)."""
    if mesh["dp_replicate"].size() == 1:
        return mesh["dp_shard"]
    return mesh
