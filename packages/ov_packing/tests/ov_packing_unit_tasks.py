"""Work-unit tasks for the tests of `ov_packing.work_units` (imported by name in spawned workers
and in a subprocess that is SIGKILLed; not a test module itself)."""

import hashlib
import os
import time
from pathlib import Path

import msgspec

from ov_packing.work_units import LocalEngine, WorkUnit, run_units


class ChainTask:
    """Each output is a SHA-256 chain of the unit's seed (`size` bytes); `slow_s` sleeps half-way
    through each output, so a kill lands mid-unit; `fail_key` raises in that unit."""

    def __init__(self, slow_s: float = 0.0, fail_key: str | None = None) -> None:
        self.slow_s = slow_s
        self.fail_key = fail_key
        self.pid: int | None = None

    def setup(self) -> None:
        self.pid = os.getpid()

    def run(self, unit: WorkUnit, staging: Path) -> None:
        assert self.pid == os.getpid(), "setup() did not run in this worker"
        if unit.key == self.fail_key:
            raise ValueError(f"cannot make {unit.key}: seed rejected")
        seed, size = msgspec.msgpack.decode(unit.params)
        for number, name in enumerate(unit.outputs):
            data = _chain(f"{seed}/{number}".encode(), size)
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data[: size // 2])
                handle.flush()
                time.sleep(self.slow_s)
                handle.write(data[size // 2 :])


def _chain(seed: bytes, size: int) -> bytes:
    out = bytearray()
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def chain_units(count: int, size: int = 3000) -> list[WorkUnit]:
    return [
        WorkUnit(
            key=f"u-{number:04d}",
            outputs=(f"part-{number:04d}.bin", f"meta/part-{number:04d}.txt"),
            params=msgspec.msgpack.encode([number * 7 + 1, size + number]),
        )
        for number in range(count)
    ]


def main(out_dir: str, workers: int, slow_s: float) -> None:
    """The job the kill test interrupts (run in a subprocess)."""
    run_units(
        ChainTask(slow_s=slow_s),
        chain_units(12),
        out_dir,
        engine=LocalEngine(workers),
        job_digest="chain-job",
        progress=False,
    )
