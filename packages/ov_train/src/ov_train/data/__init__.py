"""ov_train's data side: raw corpora -> packed shards (`prepare`), packed shards -> micro-batches
(`PackedDataLoader`).

One file per job:

- `raw_sample`: the common `RawSample` / `BadSample` form, the `Reason`s a sample is rejected
  for;
- `conversations`, `input_paths`: shared reading rules (turns, captions, ids; files of an input;
  image paths kept inside their folder);
- `ingest_llava`, `ingest_webdataset`, `ingest_parquet`: one ingester per raw format, each
  cutting its files into independently readable slices (`input_slices`);
- `images`: image headers, optional full decode, real-format extensions;
- `measure`: exact token and patch counts through `OVProcessor.measure`;
- `selection`: the hook between measuring and packing (ov_concepts balancing, id lists);
- `work_tars`, `sample_record`: normalised source tars and the per-sample JSON the shards carry;
- `manifest`, `report`: the per-sample manifest and the run report;
- `prepare_config`, `prepare`, `prepare_cli`: the pipeline, its settings and `ov-train prepare`;
  the pipeline's steps: `measure_inputs` (ingest + measure + work tars, as resumable work units
  on a local or Ray engine: `measure_units`), `pack_selected`
  (selection copies + packing plan), `prepare_summary` (final manifest + report contents);
  `prepare_output` (the output folder's layout, finding the shards in it), `run_fit` (the
  packed data against a run of a recipe: capacity vs micro-batch budget, epochs per run);
- `bin_table`, `bin_order`, `loader`: random access to packed bins (the bin table written with
  the shards), the global micro-batch stream and each rank's share of it, and the resumable
  micro-batch loader.

Names are imported lazily (PEP 562) so that importing the package, or the command line, does not
import torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BadSample": "ov_train.data.raw_sample",
    "RawSample": "ov_train.data.raw_sample",
    "Reason": "ov_train.data.raw_sample",
    "LlavaSource": "ov_train.data.ingest_llava",
    "WebDatasetSource": "ov_train.data.ingest_webdataset",
    "ParquetSource": "ov_train.data.ingest_parquet",
    "CAPTION_PROMPT": "ov_train.data.conversations",
    "PrepareConfig": "ov_train.data.prepare_config",
    "PrepareResult": "ov_train.data.prepare_output",
    "resolve_shards_dir": "ov_train.data.prepare_output",
    "RunFit": "ov_train.data.run_fit",
    "prepare": "ov_train.data.prepare",
    "Selection": "ov_train.data.selection",
    "SelectFn": "ov_train.data.selection",
    "ids_file_selector": "ov_train.data.selection",
    "balanced_dir_selector": "ov_train.data.selection",
    "concept_balance_selector": "ov_train.data.selection",
    "ManifestRow": "ov_train.data.manifest",
    "read_manifest": "ov_train.data.manifest",
    "PrepareReport": "ov_train.data.report",
    "load_report": "ov_train.data.report",
    "MicroBatch": "ov_train.data.loader",
    "PackedDataLoader": "ov_train.data.loader",
    "DataError": "ov_train.data.errors",
    "InputConfigError": "ov_train.data.errors",
    "LoaderError": "ov_train.data.errors",
    "PrepareError": "ov_train.data.errors",
    "SourceFileError": "ov_train.data.errors",
    "UnsafePathError": "ov_train.data.errors",
}
__all__ = [
    "CAPTION_PROMPT",
    "BadSample",
    "DataError",
    "InputConfigError",
    "LlavaSource",
    "LoaderError",
    "ManifestRow",
    "MicroBatch",
    "PackedDataLoader",
    "ParquetSource",
    "PrepareConfig",
    "PrepareError",
    "PrepareReport",
    "PrepareResult",
    "RawSample",
    "Reason",
    "RunFit",
    "SelectFn",
    "Selection",
    "SourceFileError",
    "UnsafePathError",
    "WebDatasetSource",
    "balanced_dir_selector",
    "concept_balance_selector",
    "ids_file_selector",
    "load_report",
    "prepare",
    "read_manifest",
    "resolve_shards_dir",
]

if TYPE_CHECKING:
    from ov_train.data.conversations import CAPTION_PROMPT
    from ov_train.data.errors import (
        DataError,
        InputConfigError,
        LoaderError,
        PrepareError,
        SourceFileError,
        UnsafePathError,
    )
    from ov_train.data.ingest_llava import LlavaSource
    from ov_train.data.ingest_parquet import ParquetSource
    from ov_train.data.ingest_webdataset import WebDatasetSource
    from ov_train.data.loader import MicroBatch, PackedDataLoader
    from ov_train.data.manifest import ManifestRow, read_manifest
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_config import PrepareConfig
    from ov_train.data.prepare_output import PrepareResult, resolve_shards_dir
    from ov_train.data.raw_sample import BadSample, RawSample, Reason
    from ov_train.data.report import PrepareReport, load_report
    from ov_train.data.run_fit import RunFit
    from ov_train.data.selection import (
        SelectFn,
        Selection,
        balanced_dir_selector,
        concept_balance_selector,
        ids_file_selector,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ov_train.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
