"""The folder `prepare` writes: its file names, `PrepareResult`, the empty-folder check, and
finding the packed shards in it (what `ov-train run --data` accepts).

    manifest.jsonl      one row per input sample (`manifest.py`)
    plan.ovp            the ov_packing plan (ids are the work-tar keys, `s<unit>-<row>`)
    shards/             ov_packing packed shards + index.json + bin table (bins.npy, samples.npy)
    report.json/.md     counts per reason, every rejected and truncated sample, packing statistics
    work/               measuring units (normalised source tars + rows, their records), the
                        processor, intermediate rows (removed unless keep_work)

`report.json` is written last: a folder without it is an unfinished run. An unfinished run's
folder (`work/job.json` present) is resumed by a run with the same inputs and measuring settings
(`check_out_dir`): the measuring units it finished are kept, everything after them is redone.

`resolve_shards_dir` lets a run name either the preparation folder or its `shards/` folder (or
any packed shard folder, e.g. one `ov-pack` wrote): users type the folder they gave `--out`, and
the error for anything else says what was looked for.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ov_packing.shards import INDEX_NAME as SHARD_INDEX_NAME
from ov_train.data.errors import PrepareError
from ov_train.data.manifest import MANIFEST_NAME
from ov_train.data.report import REPORT_JSON

if TYPE_CHECKING:
    from ov_packing.work_units import UnitReport
    from ov_train.data.report import PrepareReport

PLAN_NAME = "plan.ovp"
SHARDS_NAME = "shards"
WORK_NAME = "work"
ROWS_NAME = "rows.jsonl"
"""Intermediate manifest rows in `work/`, before selection and packing decide their status."""


@dataclass(frozen=True)
class PrepareResult:
    """Where `prepare` wrote its outputs, and the report it wrote."""

    out_dir: Path
    report: "PrepareReport"
    measuring: "UnitReport | None" = None
    """What the measuring units did (how many ran, how many a resumed run found done)."""

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


def holds_unfinished_preparation(out_dir: Path, job_name: str) -> bool:
    """Whether `out_dir` holds an unfinished `prepare` run (its `work/<job_name>` without a
    `report.json`): the one folder content `ov-train prepare` continues instead of refusing."""
    return (out_dir / WORK_NAME / job_name).is_file() and not (out_dir / REPORT_JSON).exists()


def check_out_dir(out_dir: Path, job_digest: str, job_name: str) -> bool:
    """Whether `prepare` resumes in `out_dir`: False for an absent or empty folder, True for the
    unfinished preparation of the same measuring job (`work/<job_name>` holds `job_digest`).
    PrepareError for anything else (nothing is ever overwritten): a file, a finished
    preparation, an unfinished one of other inputs or settings, a folder holding other things."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise PrepareError(f"{out_dir}: output path exists and is not a directory")
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if not entries:
        return False
    job_file = out_dir / WORK_NAME / job_name
    if REPORT_JSON not in entries and job_file.is_file():
        import msgspec

        try:
            digest = msgspec.json.decode(job_file.read_bytes()).get("digest")
        except (msgspec.DecodeError, AttributeError):
            digest = None
        if digest == job_digest:
            return True
        raise PrepareError(
            f"{out_dir}: holds an unfinished preparation of other inputs or measuring settings "
            f"(see {job_file}); prepare into another folder, or start over with --overwrite"
        )
    what = "a finished preparation" if REPORT_JSON in entries else "not empty"
    raise PrepareError(
        f"{out_dir}: output directory is {what} (holds {', '.join(entries[:5])}"
        f"{', ...' if len(entries) > 5 else ''}); prepare into an empty directory"
    )


def resolve_shards_dir(path: str | Path) -> Path:
    """The packed shard folder `path` names: `path` itself when it holds `index.json` (a
    `shards/` folder), else `path/shards` when `path` is an `ov-train prepare` output folder.
    PrepareError saying which of the two was looked for when neither is there."""
    path = Path(path)
    if not path.exists():
        raise PrepareError(f"{path}: no such data folder")
    if not path.is_dir():
        raise PrepareError(
            f"{path}: is a file; give the folder `ov-train prepare --out` wrote (or its shards/)"
        )
    if (path / SHARD_INDEX_NAME).is_file():
        return path
    shards = path / SHARDS_NAME
    if (shards / SHARD_INDEX_NAME).is_file():
        return shards
    if (path / MANIFEST_NAME).is_file() and not (path / REPORT_JSON).is_file():
        raise PrepareError(
            f"{path}: an unfinished `ov-train prepare` (no {REPORT_JSON}); run the same "
            "`ov-train prepare` again to finish it"
        )
    if (path / REPORT_JSON).is_file():
        raise PrepareError(
            f"{path}: this preparation packed no sample (no {SHARDS_NAME}/); see {REPORT_JSON}"
        )
    raise PrepareError(
        f"{path}: not packed data: neither {SHARD_INDEX_NAME} (a packed shard folder) nor "
        f"{SHARDS_NAME}/{SHARD_INDEX_NAME} (an `ov-train prepare` output folder) is there"
    )
