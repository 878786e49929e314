"""The processes of a run: one process, or a torch.distributed world started by torchrun.

The trainer sees a `World`: this process's rank among how many, the device it computes on, a
sum across ranks (the step's supervised-token count that normalises the loss, throughput) and a
barrier (checkpoint commit). `SingleProcess` is the world of one process, where each is trivial
and nothing of torch.distributed is initialised. `DistributedWorld` is a process group plus the
device mesh (pp, dp_replicate, dp_shard, cp, tp) of `mesh.py`.

`init_world` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
- no WORLD_SIZE, or WORLD_SIZE = 1: `SingleProcess` on the recipe's device, exactly today's
  single-process run (no process group, no wrappers);
- otherwise a process group, NCCL when the run computes on CUDA (each process takes
  `cuda:LOCAL_RANK`), gloo on CPU, with the recipe's `parallel.timeout_s`: a rank that waits
  that long on a collective (a peer died) fails with an error instead of hanging for gloo's
  default 30 minutes.

`train.device = "cuda:N"` names one GPU for every process and is refused under torchrun.
"""

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from ov_train.config import ParallelConfig
from ov_train.distributed.mesh import MESH_DIMS, build_mesh, data_parallel_mesh
from ov_train.errors import TrainingError
from ov_train.precision import resolve_device


@runtime_checkable
class World(Protocol):
    """The processes of a run, as the trainer sees them."""

    @property
    def rank(self) -> int:
        """This process's index, 0 .. size - 1."""
        ...

    @property
    def size(self) -> int:
        """Number of processes."""
        ...

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        ...

    @property
    def data_rank(self) -> int:
        """Index of this process's data-parallel rank: which share of the micro-batches it
        reads (the tp, cp and pp ranks of one data-parallel rank read the same ones)."""
        ...

    @property
    def data_size(self) -> int:
        """Number of data-parallel ranks (dp_replicate x dp_shard)."""
        ...

    def coordinate(self, dim: str) -> int:
        """This process's index along mesh dim `dim` (pp, dp_replicate, dp_shard, cp, tp)."""
        ...

    def degree(self, dim: str) -> int:
        """The size of mesh dim `dim`."""
        ...

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `value` over all processes (every process gets it)."""
        ...

    def barrier(self) -> None:
        """Return when every process has reached this call."""
        ...

    def close(self) -> None:
        """Release what the world holds (the process group); the end of a run."""
        ...


@dataclass(frozen=True)
class SingleProcess:
    """The world of one process: sums are the value itself, barriers return at once."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    data_rank: int = 0
    data_size: int = 1

    def coordinate(self, dim: str) -> int:
        """0 along every dim."""
        _check_dim(dim)
        return 0

    def degree(self, dim: str) -> int:
        """1 along every dim."""
        _check_dim(dim)
        return 1

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` itself: there is no other process."""
        return value

    def barrier(self) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class DistributedWorld:
    """A torch.distributed process group and its data-parallel device mesh."""

    rank: int
    size: int
    local_rank: int
    """This process's index on its node (torchrun's LOCAL_RANK): its GPU."""
    device: torch.device
    mesh: DeviceMesh
    """The (pp, dp_replicate, dp_shard, cp, tp) mesh of all ranks (`mesh.build_mesh`)."""
    fsdp_mesh: DeviceMesh
    """The mesh FSDP2 shards over (`mesh.data_parallel_mesh`: dp_shard x cp, replicas)."""

    def coordinate(self, dim: str) -> int:
        """This rank's index along mesh dim `dim`."""
        _check_dim(dim)
        return self.mesh[dim].get_local_rank()

    def degree(self, dim: str) -> int:
        """The size of mesh dim `dim`."""
        _check_dim(dim)
        return self.mesh[dim].size()

    @property
    def data_rank(self) -> int:
        """dp_replicate index x dp_shard size + dp_shard index."""
        return self.coordinate("dp_replicate") * self.degree("dp_shard") + self.coordinate(
            "dp_shard"
        )

    @property
    def data_size(self) -> int:
        """dp_replicate x dp_shard."""
        return self.degree("dp_replicate") * self.degree("dp_shard")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `value` over all ranks, a new tensor on `value`'s device
        (`value` is unchanged; it travels through this world's device, as NCCL needs)."""
        total = value.detach().to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(value.device)

    def barrier(self) -> None:
        """Return when every rank has reached this call (or raise after the PG timeout)."""
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        """Destroy the default process group (idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_dim(dim: str) -> None:
    if dim not in MESH_DIMS:
        raise TrainingError(f"unknown mesh dim {dim!r}; the mesh has {list(MESH_DIMS)}")


def is_main(world: World) -> bool:
    """Whether this process writes the run's shared files (rank 0)."""
    return world.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE of torchrun's environment (1 when not launched by it)."""
    return _env_int("WORLD_SIZE", 1)


def init_world(parallel: ParallelConfig, device_spec: str) -> World:
    """The world this process runs in (see the module docstring).

    Validates `parallel` against the world size (RecipeError when the degrees do not multiply
    to it). Reuses the default process group when one is already initialised with that size.
    """
    size = launched_world_size()
    parallel.degrees(size)  # a RecipeError before any process group is started
    if size == 1:
        return SingleProcess(device=resolve_device(device_spec))
    rank = _env_int("RANK", None)
    local_rank = _env_int("LOCAL_RANK", None)
    if not 0 <= rank < size:
        raise TrainingError(f"RANK={rank} is outside 0..{size - 1} (WORLD_SIZE={size})")
    device = _rank_device(device_spec, local_rank)
    if dist.is_initialized():
        if dist.get_world_size() != size or dist.get_rank() != rank:
            raise TrainingError(
                f"a process group of {dist.get_world_size()} ranks (this one {dist.get_rank()}) "
                f"is initialised, but the environment says WORLD_SIZE={size}, RANK={rank}"
            )
    else:
        backend = "nccl" if device.type == "cuda" else "gloo"
        options = {"device_id": device} if device.type == "cuda" else {}
        timeout = timedelta(seconds=parallel.timeout_s)
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, size, timeout),
            rank=rank,
            world_size=size,
            timeout=timeout,
            **options,
        )
    mesh = build_mesh(parallel, size, device.type)
    return DistributedWorld(rank, size, local_rank, device, mesh, data_parallel_mesh(mesh))


def _attempt_store(rank: int, size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store of this launch attempt: torchrun's (its agent serves it on
    MASTER_ADDR:MASTER_PORT and keeps it across `--max-restarts` restarts), else one rank 0
    serves, under the prefix `attempt_<TORCHELASTIC_RESTART_COUNT>`. Without the prefix a
    restarted group reads the keys the device mesh's sub-groups left in the agent's store and
    every rank hangs in the gloo/NCCL handshake until the timeout (torch 2.15, measured)."""
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    address = os.environ.get("MASTER_ADDR")
    if address is None:
        raise TrainingError("MASTER_ADDR is not set although WORLD_SIZE is: start with torchrun")
    store = dist.TCPStore(
        address,
        _env_int("MASTER_PORT", None),
        size,
        is_master=rank == 0 and not agent_serves,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"attempt_{attempt}", store)


def _rank_device(spec: str, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK when the run computes on CUDA, else cpu."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec not in ("auto", "cuda"):
        raise TrainingError(
            f"train.device is {spec!r}, one GPU for every process; under torchrun use 'cuda' or "
            "'auto' (each process takes cuda:LOCAL_RANK) or 'cpu'"
        )
    if not torch.cuda.is_available():
        raise TrainingError(f"train.device is {spec!r} but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise TrainingError(
            f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
            "start at most one process per GPU (torchrun --nproc-per-node)"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def _env_int(name: str, default: int | None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise TrainingError(
                f"{name} is not set although WORLD_SIZE is: start the run with torchrun"
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from None
