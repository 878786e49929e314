"""`prepare`: raw corpora -> measured manifest -> (selection) -> packing plan -> packed shards.

The steps, in one streaming pass plus a packing step:

1. **Ingest** every input in the order given (`ingest_llava`, `ingest_webdataset`,
   `ingest_parquet`): one `RawSample` or `BadSample` per row; a repeated id is a `duplicate_id`
   (the first occurrence is kept).
2. **Measure** each sample with the real processor (`measure.measure_sample`): image headers read
   (and, with `verify_images`, every image decoded once), exact `llm_tokens`, `vit_patches`,
   text and supervised tokens; over `max_length` is `too_long` unless `truncate`. With
   `workers > 1` this runs in forked processes, results in input order (`measure_stream`).
   Accepted samples are written straight away into normalised source tars in `out/work/`
   (`work_tars`), so memory holds counts, never images.
3. **Select** (optional): a `SelectFn` (`selection.py`; e.g. ov_concepts' balancing) says which
   accepted samples to pack and how many times.
4. **Pack** with `ov_packing.pack` (capacity `max_length` unless given, optional ViT patch
   capacity and samples-per-bin cap) and write the shards with `ov_packing.shards.write_shards`
   from the normalised tars, with their bin table; its column `supervised_targets` (per sample,
   summed per bin) is what lets the loader announce a step's supervised targets before building
   it.
5. **Report**: the final `manifest.jsonl` (every row's status), `report.json`, `report.md`.

Output folder (must be empty or absent):

    manifest.jsonl      one row per input sample (`manifest.py`)
    plan.ovp            the ov_packing plan (ids are the work-tar keys, `s<row>`)
    shards/             ov_packing packed shards + index.json + bin table (bins.npy, samples.npy);
                        sub-samples are `SampleRecord`s
    report.json/.md     counts per reason, every rejected sample, packing statistics
    work/               normalised source tars + intermediate rows (removed unless keep_work)

`report.json` is written last: a folder without it is an unfinished run. Determinism: inputs are
read in a fixed order (directories and globs sorted), every writer is byte-deterministic and no
file records a time or the output path, so the same inputs and settings give byte-identical
outputs. Bad samples never stop the job; configuration problems (a missing input, a parquet file
without the text column, a non-empty output folder) stop it before anything is written.

Cost: one sequential read of every input and one write of the accepted samples (twice: work tars,
then shards); memory per sample is a few counters plus its id (for the duplicate check).
"""

import array
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

from ov_model.processor import OVProcessor
from ov_packing import PackPlan, RejectReason, compute_stats, pack
from ov_packing.shards import ShardIndex, write_shards
from ov_train.data.bin_table import SUPERVISED_TARGETS
from ov_train.data.errors import PrepareError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_webdataset import WebDatasetSource
from ov_train.data.manifest import MANIFEST_NAME, ManifestRow, encode_row, read_manifest
from ov_train.data.measure import MeasuredSample
from ov_train.data.measure_stream import measure_stream
from ov_train.data.prepare_config import InputSource, PrepareConfig
from ov_train.data.raw_sample import BadSample, IngestResult, RawSample, Reason
from ov_train.data.report import (
    REPORT_JSON,
    PrepareReport,
    RejectedSample,
    SampleCounts,
    TokenTotals,
    reason_counts,
    write_report,
)
from ov_train.data.sample_record import SampleRecord, image_ext
from ov_train.data.selection import SelectFn
from ov_train.data.work_tars import (
    WorkTarWriter,
    copy_key,
    record_files,
    sample_key,
    write_copies,
)

PLAN_NAME = "plan.ovp"
SHARDS_NAME = "shards"
WORK_NAME = "work"
_ROWS_NAME = "rows.jsonl"


@dataclass(frozen=True)
class PrepareResult:
    """Where `prepare` wrote its outputs, and the report it wrote."""

    out_dir: Path
    report: PrepareReport

    @property
    def manifest_path(self) -> Path:
        """`manifest.jsonl`."""
        return self.out_dir / MANIFEST_NAME

    @property
    def plan_path(self) -> Path:
        """`plan.ovp`."""
        return self.out_dir / PLAN_NAME

    @property
    def shards_dir(self) -> Path:
        """The packed shards folder (what `PackedDataLoader` reads)."""
        return self.out_dir / SHARDS_NAME


def prepare(
    config: PrepareConfig, processor: OVProcessor, *, select: SelectFn | None = None
) -> PrepareResult:
    """Run the whole preparation (see the module docstring); returns where it wrote what.

    PrepareError (before writing anything) on a non-empty output folder; InputConfigError on an
    unusable input; PrepareError after writing the manifest and report if no sample could be
    packed at all.
    """
    out_dir = config.out_dir
    _check_out_dir(out_dir)
    for source in config.inputs:
        source.check()
    work = out_dir / WORK_NAME
    work.mkdir(parents=True)
    accepted = _measure_all(config, processor, work)

    selection_summary = None
    copies = np.ones(len(accepted), dtype=np.int64)
    if select is not None:
        copies, selection_summary = _apply_selection(select, work, accepted)
    repeats = {
        sample_key(int(row)): int(count)
        for row, count in zip(accepted.rows, copies, strict=True)
        if count > 1
    }
    if repeats:
        with WorkTarWriter(work / "sources", prefix="repeat") as writer:
            write_copies(accepted.tar_paths, repeats, writer)

    item_of = _items(copies)
    plan = _pack(config, accepted, copies, item_of)
    shard_summary = None
    if plan.num_bins:
        plan.save(out_dir / PLAN_NAME)
        targets = np.asarray(accepted.supervised_targets, dtype=np.int64)[item_of]
        index = write_shards(
            plan,
            [work / "sources"],
            out_dir / SHARDS_NAME,
            max_bins_per_shard=config.max_bins_per_shard,
            max_shard_bytes=config.max_shard_bytes,
            progress=config.progress,
            sample_columns={SUPERVISED_TARGETS: targets},
        )
        shard_summary = _shard_summary(index)

    report = _finish(
        config, processor, work, accepted, copies, plan, selection_summary, shard_summary
    )
    if not config.keep_work:
        shutil.rmtree(work)
    if not plan.num_bins:
        raise PrepareError(
            f"no sample could be packed ({report.counts.rows} rows, {report.counts.rejected} "
            f"rejected); see {out_dir / REPORT_JSON}"
        )
    return PrepareResult(out_dir, report)


class _Accepted:
    """Counters of the accepted samples, in manifest order (compact arrays, no objects)."""

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
        self.rows.append(row)
        self.llm_tokens.append(measured.length.llm_tokens)
        self.text_tokens.append(measured.length.text_tokens)
        self.vit_patches.append(measured.length.vit_patches)
        self.supervised_tokens.append(measured.length.supervised_tokens)
        self.supervised_targets.append(measured.supervised_targets)


def _measure_all(config: PrepareConfig, processor: OVProcessor, work: Path) -> _Accepted:
    """Steps 1-2: every row measured; rows to `work/rows.jsonl`, accepted samples to tars."""
    accepted = _Accepted()
    max_length = config.max_length if config.truncate else None
    with (
        (work / _ROWS_NAME).open("wb") as rows_file,
        WorkTarWriter(work / "sources") as writer,
        tqdm(desc="measuring", unit="sample", disable=not config.progress) as bar,
    ):
        outcomes = measure_stream(
            _ingest(config),
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
                manifest_row = _accepted_row(outcome, key)
            rows_file.write(encode_row(manifest_row))
            bar.update()
    accepted.tar_paths = list(writer.paths)
    return accepted


def _ingest(config: PrepareConfig) -> Iterator[IngestResult]:
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


def _accepted_row(measured: MeasuredSample, key: str) -> ManifestRow:
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
    )


def _apply_selection(
    select: SelectFn, work: Path, accepted: _Accepted
) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 3: copies per accepted sample, and the summary for the report."""
    rows = [row for row in read_manifest(work / _ROWS_NAME) if row.key is not None]
    selection = select(rows)
    wanted = Counter(selection.ids)
    copies = np.array([wanted.get(row.id, 0) for row in rows], dtype=np.int64)
    known = {row.id for row in rows}
    unknown = sorted(sample_id for sample_id in wanted if sample_id not in known)
    summary = {
        **selection.summary,
        "ids_given": len(selection.ids),
        "distinct_ids_given": len(wanted),
        "samples_selected": int(np.count_nonzero(copies)),
        "copies_selected": int(copies.sum()),
        "ids_not_accepted": len(unknown),
        "ids_not_accepted_first": unknown[:10],
    }
    assert len(copies) == len(accepted)
    return copies, summary


def _items(copies: np.ndarray) -> np.ndarray:
    """The accepted sample of each packing item: one item per selected copy, in manifest order."""
    return np.repeat(np.arange(len(copies)), copies)


def _pack(
    config: PrepareConfig, accepted: _Accepted, copies: np.ndarray, item_of: np.ndarray
) -> PackPlan:
    """Step 4a: one item per selected copy, in manifest order."""
    copy_number = np.arange(len(item_of)) - np.repeat(np.cumsum(copies) - copies, copies)
    ids = [
        sample_key(accepted.rows[i]) if c == 0 else copy_key(sample_key(accepted.rows[i]), c)
        for i, c in zip(item_of.tolist(), copy_number.tolist(), strict=True)
    ]
    tokens = np.asarray(accepted.llm_tokens, dtype=np.int64)[item_of]
    patches = np.asarray(accepted.vit_patches, dtype=np.int64)[item_of]
    return pack(
        tokens.astype(np.int32),
        patches=patches.astype(np.int32),
        ids=ids,
        capacity=config.bin_capacity,
        patch_capacity=config.patch_capacity,
        max_per_bin=config.max_per_bin,
        seed=config.seed,
    )


def _shard_summary(index: ShardIndex) -> dict[str, Any]:
    return {
        "num_shards": len(index.shards),
        "num_bins": index.num_bins,
        "num_samples": index.num_samples,
        "bytes": sum(shard.bytes for shard in index.shards),
    }


def _finish(
    config: PrepareConfig,
    processor: OVProcessor,
    work: Path,
    accepted: _Accepted,
    copies: np.ndarray,
    plan: PackPlan,
    selection: dict[str, Any] | None,
    shards: dict[str, Any] | None,
) -> PrepareReport:
    """Step 5: the final manifest (every row's status) and the report."""
    packed, packer_reason = _packed_copies(accepted, copies, plan)
    rejected: list[RejectedSample] = []
    counts = Counter[str]()
    next_accepted = 0
    with (work.parent / MANIFEST_NAME).open("wb") as manifest:
        for row in read_manifest(work / _ROWS_NAME):
            if row.key is not None:
                index = next_accepted
                next_accepted += 1
                row = _final_accepted_row(
                    row, int(copies[index]), int(packed[index]), packer_reason.get(index)
                )
            if row.status == "rejected":
                rejected.append(
                    RejectedSample(row.id, row.source, row.reason or "", row.detail or "")
                )
            counts[row.status] += 1
            manifest.write(encode_row(row))
    report = PrepareReport(
        inputs=[_describe(source) for source in config.inputs],
        settings=_settings(config, processor),
        counts=SampleCounts(
            rows=sum(counts.values()),
            accepted=len(accepted),
            packed=counts["packed"],
            packed_copies=int(packed.sum()),
            not_selected=counts["not_selected"],
            rejected=counts["rejected"],
            rejected_by_reason=reason_counts(rejected),
        ),
        tokens=_token_totals(accepted, packed),
        selection=selection,
        packing=msgspec.to_builtins(compute_stats(plan)) if plan.num_bins else None,
        shards=shards,
        rejected_samples=rejected,
    )
    write_report(report, work.parent)
    return report


def _packed_copies(
    accepted: _Accepted, copies: np.ndarray, plan: PackPlan
) -> tuple[np.ndarray, dict[int, str]]:
    """Copies of each accepted sample that made it into a bin, and the packer's reason for the
    samples it rejected (all copies of a sample have the same sizes, so share the verdict)."""
    item_of = np.repeat(np.arange(len(accepted)), copies)
    rejected_items = plan.rejected.astype(np.int64)
    packed = copies.copy()
    np.subtract.at(packed, item_of[rejected_items], 1)
    reasons = {
        int(item_of[item]): RejectReason(int(reason)).label
        for item, reason in zip(
            rejected_items.tolist(), plan.rejected_reasons.tolist(), strict=True
        )
    }
    return packed, reasons


def _token_totals(accepted: _Accepted, packed: np.ndarray) -> TokenTotals:
    def total(values: array.array) -> int:
        return int(np.dot(packed, np.asarray(values, dtype=np.int64)))

    llm_tokens, text_tokens = total(accepted.llm_tokens), total(accepted.text_tokens)
    return TokenTotals(
        llm_tokens=llm_tokens,
        text_tokens=text_tokens,
        image_tokens=llm_tokens - text_tokens,
        vit_patches=total(accepted.vit_patches),
        supervised_tokens=total(accepted.supervised_tokens),
    )


def _final_accepted_row(
    row: ManifestRow, copies: int, packed: int, packer_reason: str | None
) -> ManifestRow:
    if copies == 0:
        return msgspec.structs.replace(row, status="not_selected", copies=0)
    if packed == 0:
        detail = f"{row.llm_tokens} tokens, {row.vit_patches} ViT patches do not fit a bin"
        return msgspec.structs.replace(
            row, status="rejected", reason=packer_reason, detail=detail, copies=0
        )
    return msgspec.structs.replace(row, copies=packed)


def _settings(config: PrepareConfig, processor: OVProcessor) -> dict[str, Any]:
    images = processor.image_processor
    return {
        "max_length": config.max_length,
        "truncate": config.truncate,
        "capacity": config.bin_capacity,
        "patch_capacity": config.patch_capacity,
        "max_per_bin": config.max_per_bin,
        "seed": config.seed,
        "caption_prompt": config.caption_prompt,
        "verify_images": config.verify_images,
        "max_bins_per_shard": config.max_bins_per_shard,
        "max_shard_bytes": config.max_shard_bytes,
        "min_pixels": images.min_pixels,
        "max_pixels": images.max_pixels,
        "patch_size": images.patch_size,
        "merge_size": images.merge_size,
        "vocab_size": processor.tokenizer.vocab_size,
    }


def _describe(source: InputSource) -> str:
    if isinstance(source, LlavaSource):
        return f"llava:{source.path} (images: {source.root})"
    if isinstance(source, WebDatasetSource):
        return f"webdataset:{source.path}"
    return (
        f"parquet:{source.path} (columns: image={source.image_column}, "
        f"conversations={source.conversations_column}, caption={source.caption_column}, "
        f"id={source.id_column})"
    )


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PrepareError(f"{out_dir}: output path exists and is not a directory")
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if entries:
        what = "a finished preparation" if REPORT_JSON in entries else "not empty"
        raise PrepareError(
            f"{out_dir}: output directory is {what} (holds {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); prepare into an empty directory"
        )
