"""`report.json` and `report.md`: what `prepare` did, every sample it could not use, and why.

`report.json` holds the settings, counts (rows, accepted, packed, truncated, not selected,
rejected per reason: every `Reason` listed, zeros included, so the schema does not depend on the
data), every rejected sample (id, source, reason, detail), every packed sample that was cut to
`max_length` (id, source, tokens before and after), the selection summary, token totals,
ov_packing's packing statistics (`compute_stats`: bins, lower bound, fill, padding compression)
and, when `prepare` was given a recipe, how the data fits a run of it (`run_fit.py`).
`report.md` renders the same for a person, listing at most `MAX_LISTED_PER_REASON` samples per
reason (the JSON and the manifest have them all).

Neither file holds a time, a host or the output folder, so reruns on the same inputs give the
same bytes.
"""

from pathlib import Path
from typing import Any

import msgspec

from ov_train.data.raw_sample import Reason

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_FORMAT = "ov-train-prepare-report"
REPORT_VERSION = 1
MAX_LISTED_PER_REASON = 20


class RejectedSample(msgspec.Struct, frozen=True):
    """One sample (or unreadable input) that is not in the shards."""

    id: str
    source: str
    reason: str
    detail: str


class SampleCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How the manifest rows split."""

    rows: int
    accepted: int
    packed: int
    packed_copies: int
    not_selected: int
    rejected: int
    rejected_by_reason: dict[str, int]
    truncated: int = 0
    """Packed samples cut to max_length (`truncate`); listed in `truncated_samples`."""


class TruncatedSample(msgspec.Struct, frozen=True):
    """A packed sample cut to `max_length`: training sees only its first `tokens_after` tokens."""

    id: str
    source: str
    tokens_before: int
    tokens_after: int


class TokenTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Totals over the packed copies."""

    llm_tokens: int
    text_tokens: int
    image_tokens: int
    vit_patches: int
    supervised_tokens: int


class PrepareReport(msgspec.Struct, frozen=True, kw_only=True):
    """The contents of report.json (see the module docstring)."""

    format: str = REPORT_FORMAT
    version: int = REPORT_VERSION
    inputs: list[str]
    settings: dict[str, Any]
    counts: SampleCounts
    tokens: TokenTotals
    selection: dict[str, Any] | None
    packing: dict[str, Any] | None
    shards: dict[str, Any] | None
    rejected_samples: list[RejectedSample]
    truncated_samples: list[TruncatedSample] = msgspec.field(default_factory=list)
    run_fit: dict[str, Any] | None = None
    """How the packed data fits a run of a recipe (`run_fit.RunFit`), when one was given."""


def reason_counts(rejected: list[RejectedSample]) -> dict[str, int]:
    """Rejections per reason, every reason present (zeros included), in `Reason` order."""
    counts = dict.fromkeys((reason.value for reason in Reason), 0)
    for sample in rejected:
        counts[sample.reason] += 1
    return counts


def write_report(report: PrepareReport, out_dir: Path) -> None:
    """Write report.json and report.md into `out_dir`."""
    data = msgspec.json.format(msgspec.json.encode(report, order="sorted"), indent=2) + b"\n"
    (out_dir / REPORT_JSON).write_bytes(data)
    (out_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")


def load_report(out_dir: str | Path) -> PrepareReport:
    """Read a report.json written by `prepare`."""
    path = Path(out_dir) / REPORT_JSON
    return msgspec.json.decode(path.read_bytes(), type=PrepareReport)


def render_markdown(report: PrepareReport) -> str:
    """The report as Markdown."""
    counts = report.counts
    lines = [
        "# Data preparation report",
        "",
        "## Inputs",
        "",
        *(f"- `{name}`" for name in report.inputs),
        "",
        "## Samples",
        "",
        "| | samples |",
        "|---|---:|",
        f"| manifest rows | {counts.rows:,} |",
        f"| accepted (measured, usable) | {counts.accepted:,} |",
        f"| packed | {counts.packed:,} ({counts.packed_copies:,} copies) |",
        f"| truncated (packed, cut to max_length) | {counts.truncated:,} |",
        f"| not selected | {counts.not_selected:,} |",
        f"| rejected | {counts.rejected:,} |",
        "",
        "| reason | rejected |",
        "|---|---:|",
        *(f"| `{reason}` | {count:,} |" for reason, count in counts.rejected_by_reason.items()),
        "",
        "## Tokens packed",
        "",
        "| | total |",
        "|---|---:|",
        *(
            f"| {name} | {value:,} |"
            for name, value in msgspec.structs.asdict(report.tokens).items()
        ),
        "",
    ]
    if report.packing is not None:
        lines += ["## Packing", "", "| | value |", "|---|---:|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in report.packing.items()]
        lines.append("")
    if report.selection is not None:
        lines += ["## Selection", "", "| | value |", "|---|---|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in report.selection.items()]
        lines.append("")
    if report.run_fit is not None:
        lines += ["## Fit to the recipe", "", "| | value |", "|---|---|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in report.run_fit.items()]
        lines.append("")
    lines += ["## Settings", "", "| | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in report.settings.items()]
    lines.append("")
    lines += _rejected_section(report)
    lines += _truncated_section(report)
    return "\n".join(lines)


def _truncated_section(report: PrepareReport) -> list[str]:
    samples = report.truncated_samples
    if not samples:
        return []
    lines = [
        f"## Truncated samples ({len(samples):,})",
        "",
        "| id | source | tokens before | tokens after |",
        "|---|---|---:|---:|",
    ]
    for sample in samples[:MAX_LISTED_PER_REASON]:
        lines.append(
            f"| {_escape(sample.id)} | {_escape(sample.source)} | {sample.tokens_before:,} | "
            f"{sample.tokens_after:,} |"
        )
    if len(samples) > MAX_LISTED_PER_REASON:
        lines.append(
            f"| ... | {len(samples) - MAX_LISTED_PER_REASON:,} more in report.json and the "
            "manifest | | |"
        )
    lines.append("")
    return lines


def _rejected_section(report: PrepareReport) -> list[str]:
    lines = ["## Rejected samples", ""]
    if not report.rejected_samples:
        return [*lines, "None.", ""]
    by_reason: dict[str, list[RejectedSample]] = {}
    for sample in report.rejected_samples:
        by_reason.setdefault(sample.reason, []).append(sample)
    for reason, samples in by_reason.items():
        lines += [
            f"### `{reason}` ({len(samples):,})",
            "",
            "| id | source | detail |",
            "|---|---|---|",
        ]
        for sample in samples[:MAX_LISTED_PER_REASON]:
            lines.append(
                f"| {_escape(sample.id)} | {_escape(sample.source)} | {_escape(sample.detail)} |"
            )
        if len(samples) > MAX_LISTED_PER_REASON:
            lines.append(
                f"| ... | | {len(samples) - MAX_LISTED_PER_REASON:,} more in report.json and the "
                "manifest |"
            )
        lines.append("")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return _escape(", ".join(f"{key}: {item}" for key, item in value.items()))
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
