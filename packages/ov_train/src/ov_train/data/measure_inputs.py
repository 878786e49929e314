"""Steps 1-2 of `prepare`: every input row ingested, measured and written down, in one pass.

Rows are read in the order the inputs were given (`ingest_llava`, `ingest_webdataset`,
`ingest_parquet`); a repeated id is a `duplicate_id` (the first occurrence is kept). Each row is
measured with the real processor (`measure_stream`, in worker processes with `workers > 1`,
results in input order). A rejected row becomes a manifest row with its reason; an accepted one
is written at once into the normalised source tars of `work/` (`work_tars`) and leaves only a few
counters in `AcceptedSamples`, so memory holds counts, never images. Every row's provisional
manifest line goes to `work/rows.jsonl`; selection and packing decide the final status later
(`prepare_summary`).
"""

import array
from collections.abc import Iterator
from pathlib import Path

from ov_model.processor import OVProcessor
from ov_train.data.manifest import ManifestRow, encode_row
from ov_train.data.measure import MeasuredSample
from ov_train.data.measure_stream import measure_stream
from ov_train.data.prepare_config import PrepareConfig
from ov_train.data.prepare_output import ROWS_NAME
from ov_train.data.raw_sample import BadSample, IngestResult, RawSample, Reason
from ov_train.data.sample_record import SampleRecord, image_ext
from ov_train.data.work_tars import WorkTarWriter, record_files, sample_key
from rice_vit.cli_conventions import progress_bar


class AcceptedSamples:
    """Counters of the accepted samples, in manifest order (compact arrays, no objects), and
    the work tars that hold them."""

    def __init__(self) -> None:
        self.rows = array.array("q")
        self.llm_tokens = array.array("q")
        self.text_tokens = array.array("q")
        self.vit_patches = array.array("q")
        self.supervised_tokens = array.array("q")
        self.supervised_targets = array.array("q")
        self.tar_paths: list[Path] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: int, measured: MeasuredSample) -> None:
        """Count the accepted sample of manifest row `row`."""
        self.rows.append(row)
        self.llm_tokens.append(measured.length.llm_tokens)
        self.text_tokens.append(measured.length.text_tokens)
        self.vit_patches.append(measured.length.vit_patches)
        self.supervised_tokens.append(measured.length.supervised_tokens)
        self.supervised_targets.append(measured.supervised_targets)


def measure_inputs(config: PrepareConfig, processor: OVProcessor, work: Path) -> AcceptedSamples:
    """Every row of `config.inputs` measured; rows to `work/rows.jsonl`, accepted samples to the
    tars of `work/sources`. Returns the accepted samples' counters."""
    accepted = AcceptedSamples()
    max_length = config.max_length if config.truncate else None
    with (
        (work / ROWS_NAME).open("wb") as rows_file,
        WorkTarWriter(work / "sources") as writer,
        progress_bar(desc="measuring", unit="sample", enabled=config.progress) as bar,
    ):
        outcomes = measure_stream(
            ingest(config),
            processor,
            max_length=config.max_length,
            truncate=config.truncate,
            verify_images=config.verify_images,
            workers=config.workers,
        )
        for row, outcome in enumerate(outcomes):
            if isinstance(outcome, BadSample):
                manifest_row = ManifestRow(
                    id=outcome.id,
                    source=outcome.source,
                    status="rejected",
                    reason=outcome.reason.value,
                    detail=outcome.detail,
                )
            else:
                key = sample_key(row)
                images = [
                    (image_ext(index, image.ext), image.data)
                    for index, image in enumerate(outcome.images)
                ]
                record = SampleRecord(
                    id=outcome.sample.id,
                    source=outcome.sample.source,
                    conversation=list(outcome.sample.conversation),
                    images=[ext for ext, _ in images],
                    max_length=max_length,
                )
                writer.add(key, record_files(record.encode(), images))
                accepted.add(row, outcome)
                manifest_row = accepted_row(outcome, key)
            rows_file.write(encode_row(manifest_row))
            bar.update()
    accepted.tar_paths = list(writer.paths)
    return accepted


def ingest(config: PrepareConfig) -> Iterator[IngestResult]:
    """Every row of every input, in order; a repeated id becomes a `duplicate_id` BadSample."""
    seen: set[str] = set()
    for source in config.inputs:
        for result in source.iter_samples(caption_prompt=config.caption_prompt):
            if isinstance(result, RawSample):
                if result.id in seen:
                    result = BadSample(
                        result.id,
                        result.source,
                        Reason.DUPLICATE_ID,
                        "id already used by an earlier sample of the inputs",
                    )
                else:
                    seen.add(result.id)
            yield result


def accepted_row(measured: MeasuredSample, key: str) -> ManifestRow:
    """The provisional manifest row of an accepted sample stored under `key`."""
    length = measured.length
    return ManifestRow(
        id=measured.sample.id,
        source=measured.sample.source,
        status="packed",
        key=key,
        copies=1,
        image_sizes=[(image.height, image.width) for image in measured.images],
        text_tokens=length.text_tokens,
        llm_tokens=length.llm_tokens,
        vit_patches=length.vit_patches,
        supervised_tokens=length.supervised_tokens,
        truncated_from=measured.truncated_from,
    )
