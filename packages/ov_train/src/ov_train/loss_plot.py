"""The loss-curve PNG of a run (or of several runs, e.g. the three stages, on one axis).

Drawn with matplotlib's object API on the Agg canvas (`matplotlib.figure.Figure`), never through
pyplot: no global backend is selected, no window opens, nothing leaks between calls, and it
works on machines without a display. Each series shows the per-step loss faintly and, when there
are enough steps to need it, an exponential moving average on top, its memory scaled to the run.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ov_train.metrics_log import read_metrics

SMOOTH_FROM = 20
"""Series of at least this many steps also get a smoothed line."""


def exponential_average(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    averaged, running = [], 0.0
    for index, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        averaged.append(running / (1 - weight**index))
    return averaged


def smoothing_weight(steps: int) -> float:
    """EMA weight for a series of `steps` points: about 1/20 of the run in memory (0.6-0.98),
    so short runs are not drawn lagging far behind their loss."""
    return min(0.98, max(0.6, 1 - 20 / steps))


def plot_loss_curves(
    series: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, *, title: str = "loss"
) -> Path:
    """Draw each named series of (step, loss) into a PNG at `path`; returns the path."""
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(series.items()):
        if not points:
            continue
        steps = [s for s, _ in points]
        losses = [loss for _, loss in points]
        color = f"C{index}"
        smooth = len(points) >= SMOOTH_FROM
        axes.plot(steps, losses, color=color, alpha=0.35 if smooth else 1.0, label=name)
        if smooth:
            weight = smoothing_weight(len(losses))
            axes.plot(
                steps, exponential_average(losses, weight), color=color, label=f"{name} (EMA)"
            )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (cross entropy per supervised token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if series:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_run_loss(metrics_path: str | Path, path: str | Path, *, name: str = "train") -> Path:
    """The loss curve of one run's metrics.jsonl."""
    records = read_metrics(metrics_path)
    return plot_loss_curves({name: [(r["step"], r["loss"]) for r in records]}, path, title=name)
