"""`Task`: what every benchmark file defines, and the checks that keep its prompt pinned.

A task is a class with a few descriptive class attributes and four methods:

- `load(path, limit=None) -> list[Sample]`: read the benchmark from its local directory (by
  default: the parquet files matched by `data_files`, each row turned into a Sample by
  `parse_row`);
- `build_prompt(sample) -> str`: the text the model sees after the images;
- `score(sample, prediction) -> SampleScore`: read the answer out of the model's output and
  score it;
- `aggregate(scored) -> dict[str, float]`: the benchmark's numbers from the per-sample scores
  (by default the mean score, under the name `metric`).

Prompts drift between lmms-eval versions and move scores by points, so every literal string a
task's prompt is made of lives in its `prompt_templates` mapping, and the task pins the hash of
that mapping in `pinned_prompt_hash`. `check_task_class` (run when the registry is built) refuses
a task whose templates no longer match its pin: changing a prompt is then a deliberate two-line
change (template and pin, plus a `version` bump) that shows up in review, and every results file
records the hash of the prompt its numbers were measured with.
"""

import abc
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ov_eval.errors import DatasetError
from ov_eval.metrics import option_letters
from ov_eval.parquet import find_split_files, iter_parquet_rows
from ov_eval.rows import RowLocation
from ov_eval.sample import Sample

PROMPT_HASH_LENGTH = 12
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass(frozen=True, slots=True)
class SampleScore:
    """How one prediction scored: `score` in [0, 1] and the answer the scorer read out of the
    prediction (`extracted`; None when nothing could be read, e.g. no option letter found)."""

    score: float
    extracted: str | None


def prompt_hash(templates: Mapping[str, str]) -> str:
    """A short, stable hash of a task's prompt templates (SHA-256 of their canonical JSON)."""
    canonical = json.dumps(dict(templates), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:PROMPT_HASH_LENGTH]


def format_options(options: Sequence[str], template: str) -> str:
    """The options, one per line, each rendered with `template` ({letter}, {text})."""
    letters = option_letters(len(options))
    return "\n".join(
        template.format(letter=letter, text=text)
        for letter, text in zip(letters, options, strict=True)
    )


class Task(abc.ABC):
    """One benchmark. Subclasses set the class attributes below and implement the methods."""

    name: ClassVar[str]
    """Registry name, as on the command line (lmms-eval's task name where there is one)."""
    version: ClassVar[int]
    """Bumped whenever the prompt, the answer extraction or the scoring changes."""
    summary: ClassVar[str]
    """One line for `ov-eval list`."""
    dataset: ClassVar[str]
    """Where the data comes from, e.g. "lmms-lab/DocVQA (config DocVQA, split validation)"."""
    data_files: ClassVar[tuple[str, ...]] = ()
    """Glob patterns of the split's parquet files, relative to the dataset directory; the first
    pattern that matches wins."""
    columns: ClassVar[tuple[str, ...]] = ()
    """Parquet columns every row must have."""
    optional_columns: ClassVar[tuple[str, ...]] = ()
    """Parquet columns read when present."""
    prompt_templates: ClassVar[Mapping[str, str]]
    """Every literal string the prompt is built from (hashed and pinned)."""
    pinned_prompt_hash: ClassVar[str]
    """`prompt_hash(prompt_templates)` as reviewed; checked by `check_task_class`."""
    max_new_tokens: ClassVar[int] = DEFAULT_MAX_NEW_TOKENS
    """Generation budget, as in the lmms-eval task (128 where the task does not set one)."""
    stop_strings: ClassVar[tuple[str, ...]] = ()
    """Strings at which the output is cut (lmms-eval's `until`), besides end of sequence."""
    metric: ClassVar[str]
    """Name of the headline number in `aggregate`'s result."""
    reference: ClassVar[str]
    """The scorer whose numbers this task reproduces, with its version, e.g. "lmms-eval 0.7.3,
    task scienceqa_img"; recorded with every result."""

    @property
    def prompt_hash(self) -> str:
        """The hash of this task's prompt templates."""
        return prompt_hash(self.prompt_templates)

    def load(self, path: Path, *, limit: int | None = None) -> list[Sample]:
        """Read the benchmark from the dataset directory `path` (the first `limit` samples only,
        when given), each sample's `source` set to its file and row. Raises DatasetError naming
        the file and row of anything malformed, or the files when they hold no rows."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        files = find_split_files(Path(path), self.data_files)
        samples: list[Sample] = []
        seen: dict[str, RowLocation] = {}
        for index, (row, where) in enumerate(
            iter_parquet_rows(files, self.columns, self.optional_columns)
        ):
            if limit is not None and index >= limit:
                break
            sample = dataclasses.replace(self.parse_row(row, where, index), source=str(where))
            if sample.id in seen:
                raise DatasetError(
                    f"{where}: sample id {sample.id!r} already used at {seen[sample.id]}"
                )
            seen[sample.id] = where
            samples.append(sample)
        if not samples:
            raise DatasetError(f"{', '.join(map(str, files))}: no rows (an empty split)")
        return samples

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """Turn one dataset row (the `index`-th of the split) into a Sample. Every task that
        uses the parquet `load` above overrides this; a task with its own `load` need not."""
        raise TypeError(f"task {self.name} reads its data with its own load(), not parse_row()")

    @abc.abstractmethod
    def build_prompt(self, sample: Sample) -> str:
        """The text prompt for `sample` (the images come before it)."""

    @abc.abstractmethod
    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Extract the answer from `prediction` and score it against `sample`."""

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """The benchmark's numbers: by default the mean score, named `metric`."""
        require_scores(self.name, scored)
        return {self.metric: mean(result.score for _, result in scored)}


def mean(values) -> float:
    """The arithmetic mean of a non-empty iterable of numbers."""
    values = list(values)
    return sum(values) / len(values)


def require_scores(task: str, scored: Sequence[tuple[Sample, SampleScore]]) -> None:
    """Raise ValueError when there is nothing to aggregate."""
    if len(scored) == 0:
        raise ValueError(f"task {task}: no scored samples to aggregate")


_REQUIRED_ATTRIBUTES = ("name", "version", "summary", "dataset", "prompt_templates")
_REQUIRED_ATTRIBUTES += ("pinned_prompt_hash", "metric", "reference")


def check_task_class(cls: type[Task]) -> type[Task]:
    """Return `cls` if it is a complete task whose prompt matches its pin, else raise TypeError."""
    missing = [attribute for attribute in _REQUIRED_ATTRIBUTES if not hasattr(cls, attribute)]
    if missing:
        raise TypeError(f"task class {cls.__qualname__} does not set {', '.join(missing)}")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise TypeError(f"task {cls.name}: version must be a positive integer")
    if cls.max_new_tokens < 1:
        raise TypeError(f"task {cls.name}: max_new_tokens must be positive")
    actual = prompt_hash(cls.prompt_templates)
    if actual != cls.pinned_prompt_hash:
        raise TypeError(
            f"task {cls.name}: its prompt templates hash to {actual} but the task pins "
            f"{cls.pinned_prompt_hash}; if the prompt change is intended, update "
            "pinned_prompt_hash and bump version"
        )
    return cls
