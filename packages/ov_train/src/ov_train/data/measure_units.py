"""Prepare's measuring as resumable work units (`ov_packing.work_units`).

Measuring is the slow part of `prepare` (reading and, with verification, decoding each image;
rendering and tokenizing each conversation): about 1,500 small-image samples per second on one
core. The inputs are cut into slices (`input_slices`: `unit_rows` lines of a JSONL file or
elements of a JSON list, whole parquet row groups, one tar each), and each slice is one unit,
`m<number>`, that writes two files into `work/measure/`:

    m000012.tar     the slice's accepted samples, keyed `s000012-<row in the slice>` (`work_tars`)
    m000012.rows    one `UnitRow` per row of the slice (msgpack): id, source, the reason it was
                    rejected or its sizes

A unit is a pure function of its slice, the processor and the measuring settings, so the units
run in any order on any engine (`LocalEngine`: this process, or `workers` spawned processes;
`RayEngine`: actors on a local Ray or a cluster) and give the same bytes. `run_units` writes each
unit atomically with a record of its outputs' sizes and SHA-256; a rerun after a kill skips the
finished units (verified) and measures the others. The job digest (`measuring_job`) pins the
inputs' configuration, the measuring settings and the processor's files; the unit digest pins the
slice and the file's size and modification time, so a file changed since is measured again.

After the units, `collect_units` reads the `.rows` files in unit order (cheap: a few counters
per row) and does what needs the whole input in order: manifest row numbers, the duplicate-id
check (the first occurrence of an id is kept; a later row with the same id is `duplicate_id`,
whatever its unit said), the counters of the accepted samples.

The processor is saved into `work/processor/` and each worker loads it from there in `setup()`
(the processor holds compiled templates and is not picklable; spawned workers are torch-safe).
On a cluster, the output folder must be on a filesystem every node mounts at the same path.
"""

import array
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ov_packing.work_units import WorkUnit
from ov_train.data.errors import SourceFileError
from ov_train.data.input_slices import Slice
from ov_train.data.manifest import ManifestRow, encode_row
from ov_train.data.prepare_config import InputSource, PrepareConfig, describe_input
from ov_train.data.prepare_output import ROWS_NAME
from ov_train.data.raw_sample import BadSample, Reason
from ov_train.data.sample_record import SampleRecord, image_ext
from ov_train.data.work_tars import add_sample, open_work_tar, record_files, sample_key

MEASURE_DIR = "measure"
PROCESSOR_DIR = "processor"
JOB_NAME = "job.json"
UNITS_FORMAT = 1
"""Version of the unit outputs' layout; part of the job digest."""


class UnitParams(msgspec.Struct, frozen=True, array_like=True):
    """What one measuring unit reads: a slice of input `input`, and the file's stamp."""

    number: int
    input: int
    path: str
    start: int
    stop: int
    first: int
    size: int
    mtime_ns: int


class UnitRow(msgspec.Struct, frozen=True, array_like=True):
    """One row as its unit saw it. `ingested`: the ingester read a sample (its id takes part
    in the duplicate check); `reason` None: accepted, stored under `sample_key(unit, row)`."""

    id: str
    source: str
    ingested: bool
    reason: str | None = None
    detail: str | None = None
    image_sizes: list[tuple[int, int]] | None = None
    text_tokens: int = 0
    llm_tokens: int = 0
    vit_patches: int = 0
    supervised_tokens: int = 0
    supervised_targets: int = 0
    truncated_from: int | None = None


class MeasuringJob(msgspec.Struct, frozen=True, kw_only=True):
    """`work/job.json`: what the measuring units depend on, and its digest."""

    format: str = "ov-train-prepare-measuring"
    version: int = UNITS_FORMAT
    digest: str
    inputs: list[str]
    settings: dict[str, Any]
    processor_sha256: dict[str, str]


def measuring_job(config: PrepareConfig, processor_dir: Path) -> MeasuringJob:
    """The job record of `config`'s measuring with the processor saved in `processor_dir`."""
    processor = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(processor_dir.iterdir())
        if path.is_file()
    }
    inputs = [describe_input(source) for source in config.inputs]
    settings = {
        "max_length": config.max_length,
        "truncate": config.truncate,
        "verify_images": config.verify_images,
        "caption_prompt": config.caption_prompt,
        "allow_absolute_paths": config.allow_absolute_paths,
        "unit_rows": config.unit_rows,
    }
    payload = msgspec.json.encode([UNITS_FORMAT, inputs, settings, processor], order="sorted")
    return MeasuringJob(
        digest=hashlib.sha256(payload).hexdigest(),
        inputs=inputs,
        settings=settings,
        processor_sha256=processor,
    )


def plan_units(config: PrepareConfig) -> list[WorkUnit]:
    """One unit per slice of the inputs, in input order."""
    units = []
    for index, source in enumerate(config.inputs):
        for piece in source.slices(unit_rows=config.unit_rows):
            stat = piece.path.stat()
            number = len(units)
            params = UnitParams(
                number=number,
                input=index,
                path=str(piece.path),
                start=piece.start,
                stop=piece.stop,
                first=piece.first,
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
            )
            key = unit_key(number)
            units.append(
                WorkUnit(
                    key=key,
                    outputs=(f"{MEASURE_DIR}/{key}.tar", f"{MEASURE_DIR}/{key}.rows"),
                    params=msgspec.msgpack.encode(params),
                )
            )
    return units


def unit_key(number: int) -> str:
    """The key of measuring unit `number`."""
    return f"m{number:06d}"


@dataclass
class MeasureTask:
    """The `UnitTask` that measures one slice (see the module docstring)."""

    inputs: tuple[InputSource, ...]
    processor_dir: str
    max_length: int
    truncate: bool
    verify_images: bool
    caption_prompt: str
    allow_absolute_paths: bool
    cwd: str = field(default_factory=os.getcwd)
    """The folder relative input paths are relative to (a Ray actor may start elsewhere)."""
    _processor: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, config: PrepareConfig, processor_dir: Path) -> "MeasureTask":
        """The task of `config`'s measuring, with the processor saved in `processor_dir`."""
        return cls(
            inputs=config.inputs,
            processor_dir=str(processor_dir.absolute()),
            max_length=config.max_length,
            truncate=config.truncate,
            verify_images=config.verify_images,
            caption_prompt=config.caption_prompt,
            allow_absolute_paths=config.allow_absolute_paths,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_processor"] = None  # loaded again by setup() where the task runs
        return state

    def setup(self) -> None:
        """Load the processor (once per worker), in the folder the job was started from."""
        from ov_model.processor import OVProcessor

        if os.getcwd() != self.cwd:  # a worker started elsewhere: relative inputs resolve here
            os.chdir(self.cwd)
        self._processor = OVProcessor.from_pretrained(self.processor_dir)

    def run(self, unit: WorkUnit, staging: Path) -> None:
        """Measure the unit's slice into `staging/measure/<key>.tar` and `.rows`."""
        from ov_train.data.measure import measure_sample

        assert self._processor is not None, "MeasureTask.setup() was not called"
        params = msgspec.msgpack.decode(unit.params, type=UnitParams)
        path = Path(params.path)
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (params.size, params.mtime_ns):
            raise SourceFileError(
                f"{path}: changed while the job ran ({params.size:,} bytes when planned, "
                f"{stat.st_size:,} now); run prepare again"
            )
        source = self.inputs[params.input]
        piece = Slice(path, params.start, params.stop, params.first)
        folder = staging / MEASURE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[UnitRow] = []
        max_length = self.max_length if self.truncate else None
        with open_work_tar(folder / f"{unit.key}.tar") as tar:
            results = source.read_slice(
                piece,
                caption_prompt=self.caption_prompt,
                allow_absolute_paths=self.allow_absolute_paths,
            )
            for row, result in enumerate(results):
                if isinstance(result, BadSample):
                    rows.append(_bad_row(result, ingested=False))
                    continue
                outcome = measure_sample(
                    result,
                    self._processor,
                    max_length=self.max_length,
                    truncate=self.truncate,
                    verify_images=self.verify_images,
                )
                if isinstance(outcome, BadSample):
                    rows.append(_bad_row(outcome, ingested=True))
                    continue
                images = [
                    (image_ext(index, image.ext), image.data)
                    for index, image in enumerate(outcome.images)
                ]
                record = SampleRecord(
                    id=result.id,
                    source=result.source,
                    conversation=list(result.conversation),
                    images=[ext for ext, _ in images],
                    max_length=max_length,
                )
                files = record_files(record.encode(), images)
                add_sample(tar, sample_key(params.number, row), files)
                length = outcome.length
                rows.append(
                    UnitRow(
                        id=result.id,
                        source=result.source,
                        ingested=True,
                        image_sizes=[(image.height, image.width) for image in outcome.images],
                        text_tokens=length.text_tokens,
                        llm_tokens=length.llm_tokens,
                        vit_patches=length.vit_patches,
                        supervised_tokens=length.supervised_tokens,
                        supervised_targets=outcome.supervised_targets,
                        truncated_from=outcome.truncated_from,
                    )
                )
        (folder / f"{unit.key}.rows").write_bytes(msgspec.msgpack.encode(rows))


def _bad_row(sample: BadSample, *, ingested: bool) -> UnitRow:
    return UnitRow(
        id=sample.id,
        source=sample.source,
        ingested=ingested,
        reason=sample.reason.value,
        detail=sample.detail,
    )


class AcceptedSamples:
    """Counters of the accepted samples, in manifest order (compact arrays, no objects), and
    the unit tars that hold them."""

    def __init__(self) -> None:
        self.units = array.array("q")
        self.unit_rows = array.array("q")
        self.llm_tokens = array.array("q")
        self.text_tokens = array.array("q")
        self.vit_patches = array.array("q")
        self.supervised_tokens = array.array("q")
        self.supervised_targets = array.array("q")
        self.tar_paths: list[Path] = []

    def __len__(self) -> int:
        return len(self.units)

    def key(self, index: int) -> str:
        """The work-tar key of accepted sample `index`."""
        return sample_key(self.units[index], self.unit_rows[index])

    def add(self, unit: int, row: int, measured: UnitRow) -> None:
        """Count the accepted sample of row `row` of unit `unit`."""
        self.units.append(unit)
        self.unit_rows.append(row)
        self.llm_tokens.append(measured.llm_tokens)
        self.text_tokens.append(measured.text_tokens)
        self.vit_patches.append(measured.vit_patches)
        self.supervised_tokens.append(measured.supervised_tokens)
        self.supervised_targets.append(measured.supervised_targets)


def collect_units(units: Sequence[WorkUnit], work: Path) -> AcceptedSamples:
    """Read every unit's rows in order: `work/rows.jsonl` (provisional manifest rows, duplicate
    ids rejected) and the accepted samples' counters."""
    accepted = AcceptedSamples()
    seen: set[str] = set()
    decoder = msgspec.msgpack.Decoder(list[UnitRow])
    with (work / ROWS_NAME).open("wb") as rows_file:
        for number, unit in enumerate(units):
            rows = decoder.decode((work / MEASURE_DIR / f"{unit.key}.rows").read_bytes())
            accepted_before = len(accepted)
            for row_number, row in enumerate(rows):
                if row.ingested:
                    if row.id in seen:
                        row = UnitRow(
                            id=row.id,
                            source=row.source,
                            ingested=True,
                            reason=Reason.DUPLICATE_ID.value,
                            detail="id already used by an earlier sample of the inputs",
                        )
                    else:
                        seen.add(row.id)
                if row.reason is None:
                    accepted.add(number, row_number, row)
                    manifest_row = _accepted_row(row, accepted.key(len(accepted) - 1))
                else:
                    manifest_row = ManifestRow(
                        id=row.id,
                        source=row.source,
                        status="rejected",
                        reason=row.reason,
                        detail=row.detail,
                    )
                rows_file.write(encode_row(manifest_row))
            if len(accepted) > accepted_before:
                accepted.tar_paths.append(work / MEASURE_DIR / f"{unit.key}.tar")
    return accepted


def _accepted_row(row: UnitRow, key: str) -> ManifestRow:
    return ManifestRow(
        id=row.id,
        source=row.source,
        status="packed",
        key=key,
        copies=1,
        image_sizes=row.image_sizes,
        text_tokens=row.text_tokens,
        llm_tokens=row.llm_tokens,
        vit_patches=row.vit_patches,
        supervised_tokens=row.supervised_tokens,
        truncated_from=row.truncated_from,
    )
