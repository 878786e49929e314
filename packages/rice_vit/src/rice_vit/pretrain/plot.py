"""The loss log of a pretraining run (`loss.jsonl`) and its plot (`loss.png`).

The log is one JSON object per logged step: `step` (1-based optimizer steps taken), `loss`,
`lr`, `grad_norm` (before clipping), `regions` (in the global batch) and `seconds` (wall time
of the step). A resumed run first cuts the log back to its checkpoint's step, so steps a killed
run logged after its last checkpoint are not kept twice.

The plot is drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend,
no display needed): the per-step loss faintly and, from 20 steps on, a bias-corrected
exponential moving average on top.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOSS_LOG = "loss.jsonl"
LOSS_PLOT = "loss.png"
SMOOTH_FROM = 20


def append_loss_log(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record (a JSON line) to the log."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_loss_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a log (an absent file reads as none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def truncate_loss_log(path: str | Path, step: int) -> None:
    """Keep only the records of steps <= `step` (rewritten atomically)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [record for record in read_loss_log(path) if record["step"] <= step]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in kept), "utf-8")
    os.replace(partial, path)


def exponential_average(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected exponential moving average."""
    averaged, running = [], 0.0
    for index, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        averaged.append(running / (1 - weight**index))
    return averaged


def plot_loss(records: Sequence[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """Draw the loss of `records` (from `read_loss_log`) into a PNG at `path`."""
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [record["step"] for record in records]
    losses = [record["loss"] for record in records]
    smooth = len(losses) >= SMOOTH_FROM
    axes.plot(steps, losses, color="C0", alpha=0.35 if smooth else 1.0, label="loss")
    if smooth:
        weight = min(0.98, max(0.6, 1 - 20 / len(losses)))
        axes.plot(steps, exponential_average(losses, weight), color="C0", label="loss (EMA)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("region cluster discrimination loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92)
    path = Path(path)
    figure.savefig(path)
    return path
