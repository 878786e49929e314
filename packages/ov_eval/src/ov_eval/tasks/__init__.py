"""The task registry: every benchmark ov_eval knows, by name.

The registry is a read-only mapping built once from the task modules listed here, not a
decorator-filled global: adding a benchmark means adding its file and one line below, and the
tasks a given ov_eval version can run are visible in one place. Each class is checked as the
mapping is built (`check_task_class`): complete attributes and a prompt that still matches its
pinned hash.
"""

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ov_eval.errors import UnknownTaskError
from ov_eval.tasks.ai2d import AI2D
from ov_eval.tasks.base import SampleScore, Task, check_task_class, prompt_hash
from ov_eval.tasks.chartqa import ChartQA
from ov_eval.tasks.docvqa_val import DocVQAVal
from ov_eval.tasks.infovqa_val import InfoVQAVal
from ov_eval.tasks.jsonl import JsonlTask
from ov_eval.tasks.mathvista_testmini import MathVistaTestmini
from ov_eval.tasks.mmbench_dev import MMBenchDev
from ov_eval.tasks.mmmu_val import MMMUVal
from ov_eval.tasks.mmstar import MMStar
from ov_eval.tasks.ocrbench import OCRBench
from ov_eval.tasks.realworldqa import RealWorldQA
from ov_eval.tasks.scienceqa_img import ScienceQAImg

__all__ = ["TASKS", "SampleScore", "Task", "get_task", "prompt_hash", "task_names"]


def _build_registry(classes: Iterable[type[Task]]) -> Mapping[str, type[Task]]:
    registry: dict[str, type[Task]] = {}
    for cls in classes:
        check_task_class(cls)
        if cls.name in registry:
            raise TypeError(f"two task classes are named {cls.name!r}")
        registry[cls.name] = cls
    return MappingProxyType(registry)


TASKS: Mapping[str, type[Task]] = _build_registry(
    (
        DocVQAVal,
        InfoVQAVal,
        ChartQA,
        AI2D,
        ScienceQAImg,
        MMMUVal,
        MMStar,
        OCRBench,
        RealWorldQA,
        MathVistaTestmini,
        MMBenchDev,
        JsonlTask,
    )
)


def task_names() -> list[str]:
    """The registered task names, in registry order."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """A fresh instance of the task called `name`; raises UnknownTaskError listing known names."""
    try:
        return TASKS[name]()
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
