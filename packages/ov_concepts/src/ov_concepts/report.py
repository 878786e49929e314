"""`ov-concepts report`: the before/after effect of a balance run, as a plot and a Markdown page.

The plot is the rank-frequency curve on log-log axes: concepts sorted by frequency, each one's share
of all concept assignments. A Zipf-like corpus is a straight falling line; balancing should lower
and flatten the head (left) and lift the tail (right). Shares, not raw counts, are plotted so that a
selection smaller than the corpus is comparable with it. Concepts with no image are left off (a log
axis has no zero); coverage in the table says how many there are.

matplotlib is driven through its object API with the Agg canvas explicitly (no pyplot, no global
backend switch), so reporting works headless and never touches the caller's matplotlib state.
"""

from pathlib import Path

import numpy as np

from ov_concepts.balance import (
    COUNTS_AFTER_NAME,
    COUNTS_BEFORE_NAME,
    STATS_NAME,
    BalanceStats,
    load_stats,
)
from ov_concepts.errors import BalanceError
from ov_concepts.statistics import ConceptStats
from ov_concepts.vocabulary import Vocabulary

PLOT_NAME = "rank_frequency.png"
REPORT_NAME = "report.md"
_HEAD_ROWS = 10
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("covered", "concepts with >= 1 image", "{:,}"),
    ("coverage", "coverage", "{:.1%}"),
    ("entropy", "entropy (nats)", "{:.3f}"),
    ("effective_concepts", "effective number of concepts (exp entropy)", "{:,.1f}"),
    ("gini", "Gini coefficient", "{:.3f}"),
    ("top1_share", "share of the top 1% concepts", "{:.1%}"),
    ("bottom50_share", "share of the bottom 50% concepts", "{:.1%}"),
    ("max_count", "images of the most frequent concept", "{:,}"),
    ("assignments", "concept assignments", "{:,}"),
)


def plot_rank_frequency(before: np.ndarray, after: np.ndarray, path: Path, title: str) -> None:
    """Write a log-log rank-frequency PNG overlaying the before and after count vectors."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for counts, label, style in ((before, "before", "-"), (after, "after", "--")):
        ordered = np.sort(counts[counts > 0])[::-1].astype(np.float64)
        if len(ordered):
            ranks = np.arange(1, len(ordered) + 1)
            axes.loglog(ranks, ordered / ordered.sum(), style, label=f"{label} ({len(ordered):,})")
    axes.set_xlabel("concept rank")
    axes.set_ylabel("share of concept assignments")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(title="concepts covered")
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})


def _change(before: float, after: float) -> str:
    if before == 0:
        return "-"
    return f"{after / before:.2f}x"


def stats_table(before: ConceptStats, after: ConceptStats) -> str:
    """The Markdown before/after table."""
    lines = ["| statistic | before | after | after / before |", "|---|---:|---:|---:|"]
    for field, label, fmt in _ROWS:
        old, new = getattr(before, field), getattr(after, field)
        lines.append(f"| {label} | {fmt.format(old)} | {fmt.format(new)} | {_change(old, new)} |")
    return "\n".join(lines)


def _head_table(before: np.ndarray, after: np.ndarray, vocabulary: Vocabulary | None) -> str:
    order = np.lexsort((np.arange(len(before)), -before))[:_HEAD_ROWS]
    total_before, total_after = max(int(before.sum()), 1), max(int(after.sum()), 1)
    lines = [
        "| id | concept | images before | share before | share after |",
        "|---:|---|---:|---:|---:|",
    ]
    for concept in order:
        name = vocabulary.concepts[concept] if vocabulary is not None else ""
        name = name.replace("|", "\\|")
        lines.append(
            f"| {concept} | {name} | {int(before[concept]):,} | "
            f"{before[concept] / total_before:.2%} | {after[concept] / total_after:.2%} |"
        )
    return "\n".join(lines)


def render_markdown(
    stats: BalanceStats,
    before: np.ndarray,
    after: np.ndarray,
    vocabulary: Vocabulary | None,
    plot_name: str = PLOT_NAME,
) -> str:
    """The Markdown summary of a balance run."""
    settings = stats.settings
    rule = (
        settings.rule
        if settings.rule == "metaclip"
        else f"{settings.rule}, alpha {settings.alpha:g}"
    )
    if settings.threshold is not None:
        rule += f", t = {settings.threshold:.4g}"
    sampling = "with replacement" if settings.replace else "without replacement"
    lines = [
        "# Concept balance report",
        "",
        f"- assignments: `{stats.assignments}`",
        f"- rule: {rule}; {stats.selected:,} images drawn {sampling}, seed {settings.seed}",
        f"- images: {stats.images:,} ({stats.images_without_concepts:,} without any concept); "
        f"selected {stats.selected:,} ({stats.distinct_selected:,} distinct)",
    ]
    if stats.expected_metaclip_size is not None:
        lines.append(
            "- MetaCLIP's Bernoulli curation at this t would keep "
            f"{stats.expected_metaclip_size:,.0f} images on average"
        )
    lines += [
        "",
        "## Before and after",
        "",
        stats_table(stats.before, stats.after),
        "",
        f"![rank-frequency, log-log]({plot_name})",
        "",
        f"## The {_HEAD_ROWS} most frequent concepts before balancing",
        "",
        _head_table(before, after, vocabulary),
        "",
    ]
    return "\n".join(lines)


def write_report(
    balance_dir: Path, out_dir: Path | None = None, vocabulary: Vocabulary | None = None
) -> Path:
    """Write rank_frequency.png and report.md for a balance directory; returns the report path."""
    balance_dir = Path(balance_dir)
    out_dir = Path(out_dir) if out_dir is not None else balance_dir
    stats = load_stats(balance_dir / STATS_NAME)
    before, after = (
        _load_counts(balance_dir / name) for name in (COUNTS_BEFORE_NAME, COUNTS_AFTER_NAME)
    )
    if len(before) != len(after) or len(before) != stats.before.concepts:
        raise BalanceError(f"{balance_dir}: count files disagree with {STATS_NAME}")
    if vocabulary is not None and len(vocabulary) != len(before):
        raise BalanceError(
            f"the vocabulary has {len(vocabulary)} concepts but the assignments have {len(before)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_rank_frequency(before, after, out_dir / PLOT_NAME, f"{stats.settings.rule} rule")
    report = out_dir / REPORT_NAME
    report.write_text(render_markdown(stats, before, after, vocabulary), encoding="utf-8")
    return report


def _load_counts(path: Path) -> np.ndarray:
    try:
        counts = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BalanceError(f"{path}: no such file (run `ov-concepts balance` first)") from None
    except (OSError, ValueError) as error:
        raise BalanceError(f"{path}: unreadable ({error})") from None
    if counts.ndim != 1 or counts.dtype.kind not in "iu":
        raise BalanceError(f"{path}: expected a vector of integer counts")
    return counts
