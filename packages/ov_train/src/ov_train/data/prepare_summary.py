"""Step 5 of `prepare`: the final manifest (every row's status) and the report's contents.

The provisional rows of `work/rows.jsonl` get their final status here: an accepted sample the
selection did not draw is `not_selected`; one whose every copy the packer refused is `rejected`
with the packer's reason; the others are `packed` with the number of copies in the shards. The
report counts them, lists every rejected and every truncated packed sample, totals the tokens of
the packed copies and records the settings that decide the shards' bytes.
"""

import array
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ov_model.processor import OVProcessor
from ov_packing import PackPlan, compute_stats
from ov_train.data.manifest import MANIFEST_NAME, ManifestRow, encode_row, read_manifest
from ov_train.data.measure_units import AcceptedSamples
from ov_train.data.pack_selected import packed_copies
from ov_train.data.prepare_config import PrepareConfig, describe_input
from ov_train.data.prepare_output import ROWS_NAME
from ov_train.data.report import (
    PrepareReport,
    RejectedSample,
    SampleCounts,
    TokenTotals,
    TruncatedSample,
    reason_counts,
)


def write_manifest_and_summarise(
    config: PrepareConfig,
    processor: OVProcessor,
    work: Path,
    accepted: AcceptedSamples,
    copies: np.ndarray,
    plan: PackPlan,
    selection: dict[str, Any] | None,
    shards: dict[str, Any] | None,
) -> PrepareReport:
    """Write the final `manifest.jsonl` next to `work`; returns the report (for `prepare` to
    complete and write last)."""
    packed, packer_reason = packed_copies(accepted, copies, plan)
    rejected: list[RejectedSample] = []
    truncated: list[TruncatedSample] = []
    counts = Counter[str]()
    next_accepted = 0
    with (work.parent / MANIFEST_NAME).open("wb") as manifest:
        for row in read_manifest(work / ROWS_NAME):
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
            elif row.status == "packed" and row.truncated_from is not None:
                truncated.append(
                    TruncatedSample(row.id, row.source, row.truncated_from, row.llm_tokens or 0)
                )
            counts[row.status] += 1
            manifest.write(encode_row(row))
    report = PrepareReport(
        inputs=[describe_input(source) for source in config.inputs],
        settings=_settings(config, processor),
        counts=SampleCounts(
            rows=sum(counts.values()),
            accepted=len(accepted),
            packed=counts["packed"],
            packed_copies=int(packed.sum()),
            not_selected=counts["not_selected"],
            rejected=counts["rejected"],
            rejected_by_reason=reason_counts(rejected),
            truncated=len(truncated),
        ),
        tokens=_token_totals(accepted, packed),
        selection=selection,
        packing=msgspec.to_builtins(compute_stats(plan)) if plan.num_bins else None,
        shards=shards,
        rejected_samples=rejected,
        truncated_samples=truncated,
    )
    return report


def _token_totals(accepted: AcceptedSamples, packed: np.ndarray) -> TokenTotals:
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
        "unit_rows": config.unit_rows,
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
