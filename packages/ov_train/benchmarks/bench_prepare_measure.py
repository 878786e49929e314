"""`ov-train prepare`'s measuring: samples/s with 1 worker against 2 (the ratio), as work units.

Run: `uv run --no-sync pytest packages/ov_train/benchmarks/bench_prepare_measure.py -s`
(`OV_BENCH_PREPARE_SAMPLES`, default 6000, sets the corpus size; with `--benchmark-disable`,
as CI runs it, 256 samples and nothing is printed).

The corpus is LLaVA JSONL (one question-answer turn of varied length per row) over 64 JPEG files
of 320 x 240 pixels on disk, measured exactly as `prepare` measures it (`measure_units`: the
file read, the header parsed, every image decoded once to verify it, the conversation rendered
and tokenized by the tiny model's processor, accepted samples written to the unit's tar). The
same units run on `LocalEngine(1)` (in this process) and `LocalEngine(2)` (two spawned
processes, each importing torch and loading the processor once); their outputs are checked
byte-identical. Printed: samples/s of each over the whole run and the ratio; and, to leave out
the fixed cost of starting workers (a spawned worker imports torch with the processor), the
rate from the first finished unit to the last (the samples of the other units over that time)
and that ratio.
"""

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ov_model.tiny import create_tiny_model
from ov_packing.work_units import LocalEngine, run_units
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.measure_units import MEASURE_DIR, MeasureTask, plan_units
from ov_train.data.prepare_config import PrepareConfig

UNIT_ROWS = 256
TEXTS = [
    "What is shown in the image? A red square and a blue circle on a white background.",
    "Describe the picture in one sentence. Two green triangles next to a yellow star.",
    "How many shapes are there? There are three shapes of different colours.",
] * 4


def _jpeg(seed: int) -> bytes:
    image = Image.new("RGB", (320, 240), (255 - 5 * seed % 256, 250, 245))
    draw = ImageDraw.Draw(image)
    for index in range(12):
        x, y = (37 * (seed + index)) % 280, (53 * (seed + 2 * index)) % 200
        draw.ellipse((x, y, x + 40, y + 30), fill=(30 * index % 256, 90 * seed % 256, 150))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _corpus(folder: Path, samples: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for seed in range(64):
        (images / f"{seed}.jpg").write_bytes(_jpeg(seed))
    path = folder / "data.jsonl"
    with path.open("w") as file:
        for row in range(samples):
            question = f"{TEXTS[row % len(TEXTS)]} Look at part {row}."
            answer = " ".join(TEXTS[(row + k) % len(TEXTS)] for k in range(1 + row % 4))
            turns = [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ]
            record = {"id": f"r{row}", "image": f"{row % 64}.jpg", "conversations": turns}
            file.write(json.dumps(record) + "\n")
    return path


def _measure(
    config: PrepareConfig, processor_dir: Path, work: Path, workers: int
) -> tuple[float, float, float]:
    """(wall seconds, seconds until the first unit finished, the units' share of the samples
    after the first)."""
    units = plan_units(config)
    task = MeasureTask.of(config, processor_dir)
    finished: list[float] = []
    started = time.perf_counter()
    report = run_units(
        task,
        units,
        work,
        engine=LocalEngine(workers),
        job_digest="bench",
        progress=lambda done, total: finished.append(time.perf_counter()) if done else None,
    )
    wall = time.perf_counter() - started
    assert len(report.done) == len(units) == len(finished)
    return wall, finished[0] - started, (len(units) - 1) / len(units)


def _outputs(work: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((work / MEASURE_DIR).iterdir())}


def test_measuring_samples_per_second_1_against_2_workers(benchmark, tmp_path):
    samples = 256 if benchmark.disabled else int(os.environ.get("OV_BENCH_PREPARE_SAMPLES", 6000))
    model = tmp_path / "model"
    create_tiny_model(model, TEXTS, bpe_vocab_size=320, min_pixels=56 * 56, max_pixels=448 * 448)
    data = _corpus(tmp_path / "raw", samples)

    def config(name: str) -> PrepareConfig:
        return PrepareConfig(
            inputs=(LlavaSource(data),),
            out_dir=tmp_path / name,
            max_length=4096,
            unit_rows=UNIT_ROWS,
            progress=False,
        )

    def run() -> dict[int, tuple[float, float, float]]:
        timings = {}
        for workers in (1, 2):
            work = tmp_path / f"work-{workers}"
            timings[workers] = _measure(config("out"), model, work, workers)
        assert _outputs(tmp_path / "work-1") == _outputs(tmp_path / "work-2")
        return timings

    timings = benchmark.pedantic(run, rounds=1)
    if benchmark.disabled:
        return
    rates, steady = {}, {}
    for workers, (wall, first, rest) in timings.items():
        rates[workers] = samples / wall
        steady[workers] = samples * rest / (wall - first)
    print(
        f"\nmeasuring {samples:,} samples ({-(-samples // UNIT_ROWS)} units of {UNIT_ROWS}, "
        f"320x240 JPEG, verified; cpu_count {os.cpu_count()}):"
    )
    for workers, (wall, first, _) in timings.items():
        print(
            f"  {workers} worker{'s' if workers > 1 else ' '}: {wall:6.2f} s "
            f"{rates[workers]:8,.0f} samples/s; first unit done after {first:5.2f} s, then "
            f"{steady[workers]:8,.0f} samples/s"
        )
    print(
        f"  ratio 2/1: {rates[2] / rates[1]:.2f} over the whole run, "
        f"{steady[2] / steady[1]:.2f} after the first unit"
    )
    benchmark.extra_info.update(
        samples=samples,
        samples_per_s_1=rates[1],
        samples_per_s_2=rates[2],
        ratio=rates[2] / rates[1],
        ratio_after_first_unit=steady[2] / steady[1],
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-s"]))
