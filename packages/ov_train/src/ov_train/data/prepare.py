"""`prepare`: raw corpora -> measured manifest -> (selection) -> packing plan -> packed shards.

The steps, in one streaming pass plus a packing step, one file each:

1. **Ingest** and 2. **measure** (`measure_inputs`, `measure_units`): the inputs cut into
   slices, each measured as a resumable work unit (`ov_packing.work_units`) on the configured
   engine (local processes, all cores by default, or Ray): one `RawSample` or `BadSample` per
   row, measured with the real processor (`measure.measure_sample`): image headers read (and,
   with `verify_images`, every image decoded once), exact `llm_tokens`, `vit_patches`, text and
   supervised tokens; over `max_length` is `too_long` unless `truncate` (then cut, and listed in
   the report). A unit writes its accepted samples straight away into a normalised source tar
   in `out/work/measure/` (`work_tars`); one pass over the units' rows in input order then
   rejects repeated ids (`duplicate_id`) and keeps counts, never images.
3. **Select** (optional) and 4. **pack** (`pack_selected`): a `SelectFn` (`selection.py`; e.g.
   ov_concepts' balancing) says which accepted samples to pack and how many times; then
   `ov_packing.pack` (capacity `max_length` unless given, optional ViT patch capacity and
   samples-per-bin cap), and `ov_packing.shards.write_shards` writes the shards from the
   normalised tars (as work units on the same engine), with their bin table; its column
   `supervised_targets` (per sample, summed per bin) is what lets the loader announce a step's
   supervised targets before building it.
5. **Report** (`prepare_summary`): the final `manifest.jsonl` (every row's status),
   `report.json`, `report.md`; with a recipe, how the data fits a run of it (`run_fit`).

The output folder (`prepare_output` has its layout) must be empty or absent, or hold an
unfinished run of the same inputs and measuring settings: that run is resumed (its finished
measuring units, verified by size and SHA-256, are kept; packing, shards, manifest and report are
redone). `report.json` is written last: a folder without it is an unfinished run. Determinism:
inputs are read in a fixed order (directories and globs sorted), every unit is a pure function of
its slice, every writer is byte-deterministic and no file records a time or the output path, so
the same inputs and settings give byte-identical outputs, whatever the engine, the number of
workers, or how many times the run was killed and resumed. Bad samples never stop the job;
configuration problems (a missing input, a parquet file without the text column, a non-empty
output folder) stop it before anything is written; a damaged input file or an image path that
leaves its folder stops it when its unit reads it.

Cost: one sequential read of every input and one write of the accepted samples (twice: work tars,
then shards); memory per sample is a few counters plus its id (for the duplicate check).
"""

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ov_model.processor import OVProcessor
from ov_packing.shards import ShardIndex, write_shards
from ov_packing.work_units import STAGING_DIR, UNITS_DIR
from ov_train.data.bin_table import SUPERVISED_TARGETS, load_bin_table
from ov_train.data.errors import PrepareError
from ov_train.data.measure_inputs import engine_of, measure_inputs
from ov_train.data.measure_units import JOB_NAME, MEASURE_DIR, PROCESSOR_DIR, measuring_job
from ov_train.data.pack_selected import apply_selection, items_of, pack_items
from ov_train.data.prepare_config import PrepareConfig
from ov_train.data.prepare_output import (
    PLAN_NAME,
    SHARDS_NAME,
    WORK_NAME,
    PrepareResult,
    check_out_dir,
)
from ov_train.data.prepare_summary import write_manifest_and_summarise
from ov_train.data.report import REPORT_JSON, PrepareReport, write_report
from ov_train.data.run_fit import run_fit
from ov_train.data.selection import SelectFn
from ov_train.data.work_tars import WorkTarWriter, write_copies

if TYPE_CHECKING:
    from ov_train.config import Recipe

__all__ = ["PLAN_NAME", "SHARDS_NAME", "WORK_NAME", "PrepareResult", "prepare"]


def prepare(
    config: PrepareConfig,
    processor: OVProcessor,
    *,
    select: SelectFn | None = None,
    recipe: "Recipe | None" = None,
) -> PrepareResult:
    """Run the whole preparation (see the module docstring); returns where it wrote what.

    With `recipe`, the report also says how the packed data fits a run of it (`run_fit`:
    epochs per run, warnings when the capacity does not divide `train.micro_batch_tokens`).
    PrepareError (before writing anything) on a non-empty output folder; InputConfigError on an
    unusable input; PrepareError after writing the manifest and report if no sample could be
    packed at all.
    """
    out_dir = config.out_dir
    for source in config.inputs:
        source.check()
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        job = measuring_job(config, Path(folder))
    resuming = check_out_dir(out_dir, job.digest, JOB_NAME)
    work = out_dir / WORK_NAME
    if resuming:
        _remove_all_but_measuring(out_dir)
    else:
        work.mkdir(parents=True)
        (work / JOB_NAME).write_bytes(msgspec.json.format(msgspec.json.encode(job)) + b"\n")
    if not (work / PROCESSOR_DIR).is_dir():
        processor.save_pretrained(work / PROCESSOR_DIR)
    engine = engine_of(config)
    accepted, measuring = measure_inputs(config, work, job.digest, engine)

    selection_summary = None
    copies = np.ones(len(accepted), dtype=np.int64)
    if select is not None:
        copies, selection_summary = apply_selection(select, work, accepted)
    repeats = {
        accepted.key(index): int(count) for index, count in enumerate(copies.tolist()) if count > 1
    }
    sources = list(accepted.tar_paths)
    if repeats:
        with WorkTarWriter(work / "repeats", prefix="repeat") as writer:
            write_copies(accepted.tar_paths, repeats, writer)
        sources += writer.paths

    item_of = items_of(copies)
    plan = pack_items(config, accepted, copies, item_of)
    shard_summary = None
    if plan.num_bins:
        plan.save(out_dir / PLAN_NAME)
        targets = np.asarray(accepted.supervised_targets, dtype=np.int64)[item_of]
        index = write_shards(
            plan,
            sources,
            out_dir / SHARDS_NAME,
            max_bins_per_shard=config.max_bins_per_shard,
            max_shard_bytes=config.max_shard_bytes,
            progress=config.progress,
            sample_columns={SUPERVISED_TARGETS: targets},
            engine=engine,
        )
        shard_summary = _shard_summary(index)

    report = write_manifest_and_summarise(
        config, processor, work, accepted, copies, plan, selection_summary, shard_summary
    )
    if recipe is not None and plan.num_bins:
        report = _with_run_fit(report, config, recipe, out_dir)
    write_report(report, out_dir)
    if not config.keep_work:
        shutil.rmtree(work)
    if not plan.num_bins:
        raise PrepareError(
            f"no sample could be packed ({report.counts.rows} rows, {report.counts.rejected} "
            f"rejected); see {out_dir / REPORT_JSON}"
        )
    return PrepareResult(out_dir, report, measuring)


def _remove_all_but_measuring(out_dir: Path) -> None:
    """Before a resumed run: everything an unfinished run wrote after (or besides) its
    measuring units, which the rest of the pipeline writes again."""
    work = out_dir / WORK_NAME
    keep = {JOB_NAME, PROCESSOR_DIR, MEASURE_DIR, UNITS_DIR, STAGING_DIR}
    for folder, kept in ((out_dir, {WORK_NAME}), (work, keep)):
        for entry in folder.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _with_run_fit(
    report: PrepareReport, config: PrepareConfig, recipe: "Recipe", out_dir: Path
) -> PrepareReport:
    """The report with `run_fit` filled in from the bin table just written."""
    table = load_bin_table(out_dir / SHARDS_NAME)
    train = recipe.train
    fit = run_fit(
        table.tokens,
        report.counts.packed_copies,
        capacity=config.bin_capacity,
        recipe_name=recipe.name,
        steps=train.steps,
        grad_accumulation=train.grad_accumulation,
        micro_batch_tokens=train.micro_batch_tokens,
        seed=train.seed,
    )
    return msgspec.structs.replace(report, run_fit=fit.to_builtins())


def _shard_summary(index: ShardIndex) -> dict[str, Any]:
    return {
        "num_shards": len(index.shards),
        "num_bins": index.num_bins,
        "num_samples": index.num_samples,
        "bytes": sum(shard.bytes for shard in index.shards),
    }
