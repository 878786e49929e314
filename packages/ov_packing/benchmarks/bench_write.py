"""Shard writing throughput (samples/s) with 1 and 2 local workers, and the source index's memory.

Run: `uv run pytest packages/ov_packing/benchmarks/bench_write.py -o python_files='bench_*.py' -s`
(CI size: 20,000 samples of ~4 KB in 8 source tars, 40 shards). Full size:
`OV_PACK_BENCH_WRITE_SAMPLES=1000000 uv run pytest ... -s` (also `OV_PACK_BENCH_WRITE_WORKERS=2,4,8`
for more worker counts). Standalone: `uv run python packages/ov_packing/benchmarks/bench_write.py`.

What is timed: `write_shards` end to end (index the sources, lay out the bins, write every shard as
a work unit, the bin table and index), each worker count into a fresh folder, the pool started
inside the timing (so the 2-worker figure pays its process start-up). The outputs of every worker
count are checked byte-identical. Printed: samples/s per worker count, the ratio to 1 worker, and
the indexing and writing phases apart. Memory: the growth of the peak RSS (Linux VmHWM, reset
after the imports) while `scan_sources` indexes, in a subprocess, per source sample (10x the
samples, at least
200,000, of two tiny members each, so the index and not the payload is measured).
"""

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from ov_packing import pack
from ov_packing.shards import write_shards
from ov_packing.work_units import LocalEngine

SAMPLES = int(os.environ.get("OV_PACK_BENCH_WRITE_SAMPLES", "20000"))
WORKERS = [int(n) for n in os.environ.get("OV_PACK_BENCH_WRITE_WORKERS", "1,2").split(",")]
TARS = 8
MEAN_BYTES = 4000


def make_sources(root: Path, samples: int = SAMPLES) -> list[Path]:
    """`TARS` webdataset tars of `samples` samples, each a jpg of ~`MEAN_BYTES` and a json."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(MEAN_BYTES // 4, MEAN_BYTES * 7 // 4, samples)
    payload = rng.bytes(int(sizes.max()))
    paths = []
    per_tar = -(-samples // TARS)
    for number in range(TARS):
        path = root / f"src-{number:04d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in range(number * per_tar, min(samples, (number + 1) * per_tar)):
                key = f"s{sample:09d}"
                for ext, data in (
                    ("jpg", payload[: int(sizes[sample])]),
                    ("json", b'{"caption": "a benchmark sample"}'),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def make_plan(samples: int = SAMPLES):
    rng = np.random.default_rng(1)
    tokens = rng.integers(50, 2000, samples).astype(np.int32)
    ids = [f"s{sample:09d}" for sample in range(samples)]
    return pack(tokens, capacity=8192, ids=ids, seed=0)


def measure_write(root: Path, workers_list: list[int] = WORKERS) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    sources = make_sources(root)
    plan = make_plan()
    bins_per_shard = max(1, plan.num_bins // 40)
    results: dict = {"samples": SAMPLES, "bins": plan.num_bins, "runs": {}}
    reference = None
    for workers in workers_list:
        out = root / f"out-{workers}"
        reports: list = []
        started = time.perf_counter()
        with LocalEngine(workers) as engine:
            index = write_shards(
                plan,
                sources,
                out,
                max_bins_per_shard=bins_per_shard,
                engine=engine,
                reports=reports,
            )
        seconds = time.perf_counter() - started
        tree = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        if reference is None:
            reference = tree
        assert tree == reference, f"{workers} workers wrote other bytes than 1"
        results["runs"][workers] = {
            "seconds": round(seconds, 3),
            "samples_per_s": round(SAMPLES / seconds, 1),
            "index_s": round(reports[0].wall_seconds, 3),
            "write_s": round(reports[1].wall_seconds, 3),
            "shards": len(index.shards),
        }
    base = results["runs"][workers_list[0]]["samples_per_s"]
    for run in results["runs"].values():
        run["ratio_to_first"] = round(run["samples_per_s"] / base, 3)
    return results


_INDEX_PEAK = """
import sys
from pathlib import Path
from ov_packing.source_tars import scan_sources

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as refs:  # the peak RSS starts again from here
    refs.write("5")
before = peak_kib()
index = scan_sources(sorted(Path(sys.argv[1]).glob("*.tar")))
print(len(index), peak_kib() - before)
"""


def measure_index_memory(root: Path) -> dict:
    """Peak RSS growth (Linux VmHWM, reset after the imports) while indexing the tars in `root`."""
    done = subprocess.run(
        [sys.executable, "-c", _INDEX_PEAK, str(root)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    count, kib = (int(value) for value in done.stdout.split())
    return {
        "samples": count,
        "peak_growth_bytes": kib * 1024,
        "bytes_per_sample": round(kib * 1024 / max(count, 1), 1),
    }


def test_write_samples_per_second_one_vs_two_workers(tmp_path):
    results = measure_write(tmp_path / "write")
    print(f"\nshard writing, {SAMPLES:,} samples, {results['bins']:,} bins:")
    for workers, run in results["runs"].items():
        print(f"  {workers} worker(s): {run}")
    assert all(run["shards"] >= 2 for run in results["runs"].values())


def make_tiny_sources(root: Path, samples: int) -> None:
    """`TARS` tars of `samples` samples of two 8-byte members (headers written directly)."""
    from ov_packing.shards import _tar_header

    per_tar = -(-samples // TARS)
    for number in range(TARS):
        with open(root / f"tiny-{number:04d}.tar", "wb") as tar:
            for sample in range(number * per_tar, min(samples, (number + 1) * per_tar)):
                for ext in ("jpg", "json"):
                    tar.write(_tar_header(f"s{sample:09d}.{ext}", 8) + b"12345678" + bytes(504))
            tar.write(bytes(10240))


def test_source_index_memory_per_sample(tmp_path):
    samples = max(SAMPLES * 10, 200_000)
    make_tiny_sources(tmp_path, samples)
    memory = measure_index_memory(tmp_path)
    print(f"\nsource index of {samples:,} samples: {memory}")
    assert memory["samples"] == samples


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(measure_write(Path(folder) / "write"))
        make_tiny_sources(Path(folder), 200_000)
        print(measure_index_memory(Path(folder)))
