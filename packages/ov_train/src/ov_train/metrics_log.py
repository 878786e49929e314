"""Where a run reports each step: `metrics.jsonl`, a progress bar, optionally TensorBoard.

- `metrics.jsonl` (always): one JSON object per optimizer step, appended and flushed as the step
  ends: step, loss, grad_norm, lr (per parameter group), tokens, supervised_tokens,
  tokens_per_s, step_time_s, elapsed_s. It is the run's record: the loss curve is drawn from
  it. A resumed run first drops the lines of steps after the checkpoint it resumes from (they
  were computed by the killed process and are computed again), so the file of an interrupted
  and resumed run reads like one uninterrupted run.
- progress (`rice_vit.cli_conventions.progress_bar`: a bar on a terminal, a plain line per 10%
  or 30 s in logs): step / total, loss, lr (the highest of the groups), tokens/s, elapsed, ETA.
- TensorBoard scalars, only when `logging.tensorboard` asks for them and
  `torch.utils.tensorboard` (which needs the `tensorboard` package) imports; otherwise a notice
  on the `ov_train` logger, and the run goes on.

Only the main rank writes any of it.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from rice_vit.cli_conventions import progress_bar as make_progress

LOGGER = logging.getLogger("ov_train")
METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records of steps <= `last_step` (atomically: write, then rename)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def open_tensorboard(folder: Path) -> Any:
    """A TensorBoard SummaryWriter on `folder`, or None (with a notice) when unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        LOGGER.warning("TensorBoard logging skipped: %s (pip install tensorboard)", error)
        return None
    return SummaryWriter(log_dir=str(folder))


class RunLog:
    """The step records of one run: JSONL file, progress bar, optional TensorBoard."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        progress_bar: bool,
        tensorboard: bool,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self._file = None
        self._bar = None
        self._tensorboard = None
        if not enabled:
            return
        truncate_metrics(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._bar = make_progress(
            total=total_steps, initial=start_step, enabled=progress_bar, unit="step", desc="train"
        )
        if tensorboard:
            self._tensorboard = open_tensorboard(run_dir / "tensorboard")

    def log(self, record: dict[str, Any]) -> None:
        """Write one step's record to every sink."""
        if not self.enabled:
            return
        if self._file is None or self._bar is None:
            raise ValueError("RunLog.log after close()")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        peak_lr = max(record["lr"].values(), default=0.0)
        self._bar.set_postfix_str(
            f"loss={record['loss']:.4f}, lr={peak_lr:.2e}, tok/s={record['tokens_per_s']:.0f}",
            refresh=False,
        )
        self._bar.update(1)
        if self._tensorboard is not None:
            step = record["step"]
            for key in ("loss", "grad_norm", "tokens_per_s"):
                self._tensorboard.add_scalar(f"train/{key}", record[key], step)
            for group, lr in record["lr"].items():
                self._tensorboard.add_scalar(f"lr/{group}", lr, step)

    def close(self) -> None:
        """Flush and close every sink."""
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        self._file = self._bar = self._tensorboard = None
