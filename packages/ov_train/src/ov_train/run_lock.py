"""One run per run folder: an exclusive lock held by rank 0 for the run's life, and a run id.

Two runs writing one folder (a second `torchrun` started by mistake, a SLURM requeue while the
first job still runs) would interleave metrics, race on checkpoint renames and resume from each
other's half-written state. So rank 0 takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `RUN/.lock`
before anything is written and keeps the file open until the run ends. A second run fails at once
with an error naming the folder and the holder (pid, host, start time, run id), written into the
lock file by the holder. The kernel drops the lock when the holder's process dies, however it
dies (SIGKILL included), so a crashed run never leaves a stale lock behind; the file itself stays
and is harmless.

Every rank must learn the outcome, or ranks 1.. would wait forever on rank 0: rank 0 broadcasts
a random 62-bit run id (0: refused) through `World.sum`. Each rank then reads the lock file and
checks it holds that run id, which also catches a run folder that is not on a filesystem shared
by every node (checkpoints need one).

Caveat: flock over NFS works with NFSv4 (Linux maps it to byte-range locks); on filesystems
without working locks (some FUSE mounts) a second run is not detected.
"""

import datetime
import fcntl
import json
import os
import secrets
import socket
from pathlib import Path
from typing import IO, Any

import torch

from ov_train.errors import TrainingError
from ov_train.parallel import World, is_main

LOCK_FILE = ".lock"


class RunFolderInUseError(TrainingError):
    """Another run holds the run folder's lock."""


class RunLock:
    """The run folder's lock (held by rank 0) and the run id every rank agreed on."""

    def __init__(self, run_dir: Path, run_id: int, handle: IO[str] | None) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self._handle = handle

    def release(self) -> None:
        """Drop the lock (rank 0); a no-op on the other ranks and after the first call."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {info['pid']} on {info['host']}, started {info['started']}, "
            f"run id {info['run_id']:x}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


def _try_lock(run_dir: Path) -> tuple[IO[str] | None, int, str]:
    """Rank 0: (open locked handle, run id, "") or (None, 0, why)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the run's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None, 0, _holder(path)
    run_id = secrets.randbits(62) or 1
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(info) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
    return handle, run_id, ""


def acquire_run_lock(run_dir: str | Path, world: World, device: torch.device) -> RunLock:
    """Lock `run_dir` for this run (collective: every rank calls it); RunFolderInUseError on
    every rank when another run holds it."""
    run_dir = Path(run_dir)
    handle, run_id, holder = (None, 0, "")
    if is_main(world):
        handle, run_id, holder = _try_lock(run_dir)
    agreed = int(world.sum(torch.tensor([run_id], dtype=torch.int64, device=device)).item())
    if agreed == 0:
        where = f": held by {holder}" if holder else " (see rank 0's error)"
        raise RunFolderInUseError(
            f"{run_dir} is in use by another run{where}; wait for it to end, or give this run "
            "another folder (--out)"
        )
    if not is_main(world):
        _check_shared(run_dir / LOCK_FILE, agreed, world.rank)
    return RunLock(run_dir, agreed, handle)


def _check_shared(path: Path, run_id: int, rank: int) -> None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        found = None
    if found != run_id:
        raise TrainingError(
            f"rank {rank} on {socket.gethostname()}: {path} does not hold this run's id "
            f"({run_id:x}; found {found!r}): the run folder must be one folder on a filesystem "
            "shared by every node"
        )
