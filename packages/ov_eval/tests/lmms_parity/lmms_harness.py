"""lmms-eval 0.7.3's own task objects, built offline, and its scoring pipeline, run step by step.

A parity test compares an ov_eval task with the lmms-eval task it follows. To compare with what
lmms-eval really does (not with a re-reading of its code), this harness builds lmms-eval's
`ConfigurableTask` from the task's own YAML (lmms-eval's loader, `!function` tags and `include`s
resolved), with the documents handed in instead of the Hugging Face download, and for the model
name lmms-eval sees with `--model onevision` (so `lmms_eval_specific_kwargs` resolve to the
YAML's `default`). A model output is then scored as lmms-eval's evaluator scores it:

1. the task's filter pipelines (`filter_list`, else `take_first`) on the Instance's responses;
2. the CLI's default reasoning-tag stripping (`--reasoning_tags`, `<think>`/`<analysis>` blocks,
   then whitespace trimmed: `lmms_eval.api.reasoning.strip_reasoning_tags`);
3. `Task.process_results` (which trims generate_until outputs before the task's own
   `process_results`, or runs the YAML's metrics).

Loaded by path from conftest.py (the test modules are imported without a package path).
"""

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import lmms_eval
from lmms_eval.__main__ import parse_eval_args
from lmms_eval.api.instance import Instance
from lmms_eval.api.reasoning import parse_reasoning_tags_config, strip_reasoning_tags
from lmms_eval.api.task import ConfigurableTask
from lmms_eval.utils import load_yaml_config

TASKS_DIR = Path(lmms_eval.__file__).parent / "tasks"
MODEL_NAME = "onevision"


def cli_default(option: str):
    """The default of one of lmms-eval's command-line options (read from its own parser)."""
    saved, sys.argv = sys.argv, ["lmms_eval"]
    try:
        parser, _ = parse_eval_args()
    finally:
        sys.argv = saved
    return parser.get_default(option)


# What `lmms-eval --model ... --tasks ...` strips from outputs when no tags are given.
CLI_REASONING_TAGS = parse_reasoning_tags_config(cli_value=cli_default("reasoning_tags"))


class _Docs(list):
    """The documents as lmms-eval's task sees its split: indexable, with `features`."""

    @property
    def features(self) -> dict:
        return dict.fromkeys(self[0]) if self else {}


def load_task(yaml_path: str, docs: Sequence[dict], split: str | None = None) -> ConfigurableTask:
    """lmms-eval's task for `yaml_path` (relative to lmms_eval/tasks), over `docs`."""
    with warnings.catch_warnings():
        # Some task utils.py files hold invalid escapes ("\s" in docstrings): a warning when
        # compiled, which the test suite's filterwarnings=error would turn into an error.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        config = load_yaml_config(str(TASKS_DIR / yaml_path))
    split = split or config.get("test_split") or config.get("validation_split")
    documents = _Docs(docs)

    class OfflineTask(ConfigurableTask):
        def download(self, dataset_kwargs=None) -> None:
            self.dataset = {split: documents}
            self.dataset_no_image = self.dataset

    return OfflineTask(config=config, model_name=MODEL_NAME)


def prompt(task: ConfigurableTask, doc: dict) -> str:
    """`doc_to_text` with the task's resolved `lmms_eval_specific_kwargs`."""
    return task.doc_to_text(doc)


def visuals(task: ConfigurableTask, doc: dict) -> list:
    """`doc_to_visual`: the PIL images, in the order the model gets them."""
    return task.doc_to_visual(doc)


def generation_kwargs(task: ConfigurableTask) -> dict:
    """The generation kwargs the model receives (after TaskConfig's defaults)."""
    return dict(task.config.generation_kwargs)


def reference_results(task: ConfigurableTask, doc: dict, output: str) -> dict:
    """lmms-eval's per-sample result dict for one model `output` on `doc`."""
    instance = Instance(
        request_type=task.OUTPUT_TYPE,
        arguments=(),
        idx=0,
        metadata={"task": task.config.task, "doc_id": 0, "repeats": 1},
    )
    instance.resps = [output]
    instance.doc = doc
    results = {}
    for pipeline in task._filters:
        pipeline.apply([instance], task.task_docs)
        response = instance.filtered_resps[pipeline.name]
        if isinstance(response, str):
            response = strip_reasoning_tags(response, CLI_REASONING_TAGS)
        results[pipeline.name] = task.process_results(doc, [response])
    if len(results) != 1:
        raise AssertionError(f"expected one filter pipeline, got {sorted(results)}")
    return next(iter(results.values()))


def aggregate(task: ConfigurableTask, metric: str, values: list, output_dir: Path | None = None):
    """lmms-eval's aggregation of `metric` over the per-sample `values` (the metric's entry of
    each result dict); aggregations that write files write them under `output_dir`."""
    function = task.aggregation()[metric]
    try:
        return function(values)
    except TypeError:
        args = SimpleNamespace(output_path=str(output_dir) if output_dir else None)
        return function(values, args)


def dump(value) -> str:
    """A short printable form of a value, for assertion messages."""
    return json.dumps(value, default=str, ensure_ascii=False)[:300]
