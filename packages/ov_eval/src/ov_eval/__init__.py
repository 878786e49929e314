"""ov_eval: Offline benchmark evaluation of LLaVA-OneVision-class checkpoints with the official
metrics.

- `ov_eval.metrics`: the metrics, as pure functions (ANLS, relaxed accuracy, VQA accuracy,
  option extraction, exact match, OCRBench's rule).
- `ov_eval.tasks`: one module per benchmark on the `Task` base, and the registry `TASKS`.
- `ov_eval.sample`: `Sample`, the shape every task hands to the runner.
- `ov_eval.results`: the results JSON and predictions JSONL formats; `ov_eval.report` renders them.
"""

from importlib.metadata import version

__version__ = version("ov-eval")
__all__ = ["__version__"]
