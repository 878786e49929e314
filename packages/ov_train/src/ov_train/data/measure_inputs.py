"""Steps 1-2 of `prepare`: every input row ingested, measured and written down, as work units.

Rows are read in the order the inputs were given (`ingest_llava`, `ingest_webdataset`,
`ingest_parquet`), cut into slices that are measured as independent, resumable work units
(`measure_units`) on the configured engine: `engine="local"` with `workers` processes (all cores
by default; 1 runs in this process) or `engine="ray"` (actors on `ray_address`, `RAY_ADDRESS` or
a local Ray). Each unit writes its accepted samples into a normalised source tar of `work/measure/`
(`work_tars`) and its rows' outcomes next to it; then one pass over those outcomes, in input
order, writes every row's provisional manifest line to `work/rows.jsonl`, rejects repeated ids
(`duplicate_id`) and keeps a few counters per accepted sample (`AcceptedSamples`), so memory holds
counts, never images. Selection and packing decide the final status later (`prepare_summary`).

A damaged input file (`SourceFileError`) or an image path that leaves its folder
(`UnsafePathError`) in a unit stops the job with that error; the units already finished are kept
for the next run.
"""

from pathlib import Path

from ov_packing.work_units import (
    Engine,
    UnitFailed,
    UnitReport,
    WorkUnitError,
    make_engine,
    run_units,
)
from ov_train.data.errors import DataError, PrepareError
from ov_train.data.measure_units import (
    PROCESSOR_DIR,
    AcceptedSamples,
    MeasureTask,
    collect_units,
    plan_units,
)
from ov_train.data.prepare_config import PrepareConfig

__all__ = ["AcceptedSamples", "engine_of", "measure_inputs"]


def engine_of(config: PrepareConfig) -> Engine:
    """The engine `config.engine`, `workers` and `ray_address` name."""
    return make_engine(config.engine, config.workers, config.ray_address)


def measure_inputs(
    config: PrepareConfig, work: Path, job_digest: str, engine: Engine | None = None
) -> tuple[AcceptedSamples, UnitReport]:
    """Every row of `config.inputs` measured as units in `work` (resumed where a run left
    them); rows to `work/rows.jsonl`. Returns the accepted samples' counters and what the
    units did. `work/processor/` must hold the processor."""
    units = plan_units(config)
    task = MeasureTask.of(config, work / PROCESSOR_DIR)
    try:
        report = run_units(
            task,
            units,
            work,
            engine=engine_of(config) if engine is None else engine,
            job_digest=job_digest,
            progress=config.progress,
            description="measuring",
        )
    except UnitFailed as failure:
        if isinstance(failure.error, DataError):  # a bad input: its message names the place
            raise failure.error from None
        raise
    except WorkUnitError as error:  # another run holds the folder, no Ray installed, ...
        raise PrepareError(str(error)) from error
    return collect_units(units, work), report
