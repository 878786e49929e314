"""The registry: every benchmark of the issue is there, prompts match their pins, names resolve."""

from types import MappingProxyType

import pytest

from ov_eval.errors import UnknownTaskError
from ov_eval.tasks import TASKS, Task, get_task, prompt_hash, task_names
from ov_eval.tasks.base import check_task_class
from ov_eval.tasks.docvqa_val import DocVQAVal

REQUIRED = (
    "docvqa_val",
    "infovqa_val",
    "chartqa",
    "ai2d",
    "scienceqa_img",
    "mmmu_val",
    "mmstar",
    "ocrbench",
    "realworldqa",
    "mathvista_testmini",
    "mmbench_dev",
    "jsonl",
)


def test_every_required_task_is_registered():
    assert task_names() == list(REQUIRED)


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        TASKS["extra"] = DocVQAVal  # type: ignore[index]


@pytest.mark.parametrize("name", REQUIRED)
def test_pinned_prompt_hash_matches_the_templates(name):
    task = get_task(name)
    assert task.pinned_prompt_hash == prompt_hash(task.prompt_templates) == task.prompt_hash
    assert len(task.prompt_hash) == 12


def test_a_changed_prompt_without_a_new_pin_is_refused():
    class Tampered(DocVQAVal):
        prompt_templates = MappingProxyType({"prompt": "{question}\nAnswer briefly."})

    with pytest.raises(TypeError, match="pins e65ce3bc78ec"):
        check_task_class(Tampered)


def test_an_incomplete_task_class_is_refused():
    bare = type("Bare", (Task,), {"name": "bare"})
    with pytest.raises(TypeError, match="Bare does not set version, summary, dataset"):
        check_task_class(bare)


def test_prompt_hash_is_stable_and_order_independent():
    first = prompt_hash({"a": "x", "b": "y"})
    assert first == prompt_hash({"b": "y", "a": "x"})
    assert first != prompt_hash({"a": "x", "b": "y "})


def test_unknown_task_error_lists_the_known_names():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'docvqa'.*docvqa_val"):
        get_task("docvqa")
