"""Steps 3-4a of `prepare`: how many copies of each accepted sample to pack, and the plan.

Selection (optional): a `SelectFn` (`selection.py`; e.g. ov_concepts' balancing) reads the
accepted rows and names the ids to pack, an id as many times as it wants copies; ids it names
that were not accepted are counted in the summary, never packed. Without a selection every
accepted sample is packed once.

Packing: one item per selected copy, in manifest order (a copy's id is `copy_key` of its
sample's key), packed by `ov_packing.pack` on LLM tokens and ViT patches. All copies of a sample
have the same sizes, so they share the packer's verdict; `packed_copies` reads back how many of
each sample's copies landed in a bin, and why the others did not.
"""

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ov_packing import PackPlan, RejectReason, pack
from ov_train.data.manifest import read_manifest
from ov_train.data.measure_units import AcceptedSamples
from ov_train.data.prepare_config import PrepareConfig
from ov_train.data.prepare_output import ROWS_NAME
from ov_train.data.selection import SelectFn
from ov_train.data.work_tars import copy_key


def apply_selection(
    select: SelectFn, work: Path, accepted: AcceptedSamples
) -> tuple[np.ndarray, dict[str, Any]]:
    """Copies per accepted sample (int64, manifest order), and the summary for the report."""
    rows = [row for row in read_manifest(work / ROWS_NAME) if row.key is not None]
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


def items_of(copies: np.ndarray) -> np.ndarray:
    """The accepted sample of each packing item: one item per selected copy, in manifest order."""
    return np.repeat(np.arange(len(copies)), copies)


def pack_items(
    config: PrepareConfig, accepted: AcceptedSamples, copies: np.ndarray, item_of: np.ndarray
) -> PackPlan:
    """The packing plan of one item per selected copy (ids: the work-tar keys)."""
    copy_number = np.arange(len(item_of)) - np.repeat(np.cumsum(copies) - copies, copies)
    ids = [
        accepted.key(i) if c == 0 else copy_key(accepted.key(i), c)
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


def packed_copies(
    accepted: AcceptedSamples, copies: np.ndarray, plan: PackPlan
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
