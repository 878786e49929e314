"""`jsonl`: a custom benchmark written as one JSON object per line, scored with a named metric.

For data that is not a published benchmark: a team's own held-out set, a regression suite, a
tiny smoke test. The file is `samples.jsonl` inside the given directory (or the given `.jsonl`
file itself); image paths are relative to the file's directory and must stay inside it (a `..`
that climbs out, or an absolute path elsewhere, is an error naming the file and line: a task file
cannot make the runner read arbitrary files). The check is on the path as written, not on where
symbolic links inside the folder point: whoever can place a link there controls the data anyway.
A missing image file fails the load (the task file is wrong); an image whose content cannot be
decoded fails only its sample, at run time (recorded as an error, scored 0).
Each non-blank line is an object with:

- "question" (string, required): used verbatim as the prompt, or, with options, followed by
  the options as "A. text" lines and the letter instruction (as AI2D/MMMU prompts do);
- "answers" (non-empty list of strings, or one string, required);
- "metric" (required): "exact_match" (against any answer; surrounding whitespace, case and
  punctuation ignored), "anls" (against any answer), "relaxed_accuracy" (against the first
  answer), "vqa_accuracy" (needs >= 2 answers), or "choice" (needs options; the first answer is
  an option letter or an option's text; the output is read with `extract_choice`);
- "images" (list of paths) or "image" (one path), optional: images come before the text;
- "options" (list of at most 26 strings), optional: the option texts, labelled A, B, C...;
- "id" (string or integer), optional: defaults to the line number; must be unique.
Unknown keys are an error (a misspelt "answer" would otherwise go unnoticed). The package README
documents the format for users, with an example that the tests load.

A file with no samples is an error naming it.

Aggregation: `score`, the mean over all samples, plus `score/<metric>` for each metric used when
the file mixes several. Generation: up to 128 new tokens.
"""

import dataclasses
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import msgspec

from ov_eval.errors import DatasetError
from ov_eval.metrics import (
    anls,
    exact_match,
    extract_choice,
    option_letters,
    relaxed_accuracy,
    vqa_accuracy,
)
from ov_eval.rows import RowLocation, shown
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options, mean, require_scores

DEFAULT_FILE_NAME = "samples.jsonl"
METRICS = ("exact_match", "anls", "relaxed_accuracy", "vqa_accuracy", "choice")


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    answers: list[str] | str
    metric: str
    images: list[str] | None = None
    image: str | None = None
    options: list[str] | None = None
    id: str | int | None = None


_DECODER = msgspec.json.Decoder(_Line)
_LETTERS = option_letters(26)


class JsonlTask(Task):
    """A custom JSONL benchmark with a per-line metric."""

    name = "jsonl"
    version = 1
    summary = "Custom benchmark: samples.jsonl (question, answers, metric, images, options)"
    dataset = "a local samples.jsonl (see the jsonl task's documentation)"
    prompt_templates = MappingProxyType(
        {
            "prompt": "{question}",
            "choice_prompt": "{question}\n{options}\n"
            "Answer with the option's letter from the given choices directly.",
            "option": "{letter}. {text}",
        }
    )
    pinned_prompt_hash = "bc61e4d07414"
    metric = "score"
    reference = "ov-eval jsonl format (no external reference: the metric named per line)"

    def load(self, path: Path, *, limit: int | None = None) -> list[Sample]:
        """Read `path/samples.jsonl` (or the `.jsonl` file `path`), images included."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        path = Path(path)
        file = path / DEFAULT_FILE_NAME if path.is_dir() else path
        try:
            lines = file.read_bytes().splitlines()
        except OSError as error:
            raise DatasetError(f"{file}: cannot read ({error.strerror or error})") from error
        samples: list[Sample] = []
        seen: dict[str, RowLocation] = {}
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            if limit is not None and len(samples) >= limit:
                break
            where = RowLocation(file, number, unit="line")
            sample = self._parse_line(raw, where, file.parent)
            sample = dataclasses.replace(sample, source=str(where))
            if sample.id in seen:
                raise DatasetError(f"{where}: id {sample.id!r} already used at {seen[sample.id]}")
            seen[sample.id] = where
            samples.append(sample)
        if not samples:
            raise DatasetError(f"{file}: no samples (the file has no non-blank line)")
        return samples

    def _parse_line(self, raw: bytes, where: RowLocation, base: Path) -> Sample:
        try:
            line = _DECODER.decode(raw)
        except msgspec.DecodeError as error:
            raise DatasetError(f"{where}: {error}") from error
        answers = [line.answers] if isinstance(line.answers, str) else line.answers
        if not answers:
            raise DatasetError(f"{where}: 'answers' is empty")
        if line.metric not in METRICS:
            raise DatasetError(
                f"{where}: unknown metric {shown(line.metric)}; choose one of {', '.join(METRICS)}"
            )
        if line.images is not None and line.image is not None:
            raise DatasetError(f"{where}: give either 'image' or 'images', not both")
        options = tuple(line.options or ())
        if len(options) > len(_LETTERS):
            raise DatasetError(
                f"{where}: {len(options)} options; at most {len(_LETTERS)} can be labelled A-Z"
            )
        if line.metric == "choice":
            answers = [_as_letter(answers[0], options, where)]
        if line.metric == "vqa_accuracy" and len(answers) < 2:
            raise DatasetError(
                f"{where}: vqa_accuracy needs at least 2 answers, got {len(answers)}"
            )
        paths = line.images if line.images is not None else ([line.image] if line.image else [])
        return Sample(
            id=str(line.id) if line.id is not None else str(where.row),
            question=line.question,
            images=tuple(_read_image(base, written, where) for written in paths),
            answers=tuple(answers),
            options=options,
            metadata={"metric": line.metric},
        )

    def build_prompt(self, sample: Sample) -> str:
        """The question verbatim; with options, the lettered options and the letter instruction."""
        templates = self.prompt_templates
        if not sample.options:
            return templates["prompt"].format(question=sample.question)
        options = format_options(sample.options, templates["option"])
        return templates["choice_prompt"].format(question=sample.question, options=options)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Score with the sample's own metric."""
        metric = sample.metadata["metric"]
        if metric == "choice":
            letter = extract_choice(prediction, sample.options)
            return SampleScore(1.0 if letter == sample.answers[0] else 0.0, letter)
        if metric == "anls":
            return SampleScore(anls(prediction, sample.answers), prediction)
        if metric == "relaxed_accuracy":
            return SampleScore(relaxed_accuracy(prediction, sample.answers[0]), prediction)
        if metric == "vqa_accuracy":
            return SampleScore(vqa_accuracy(prediction, sample.answers), prediction)
        best = max(exact_match(prediction.strip(), answer.strip()) for answer in sample.answers)
        return SampleScore(best, prediction.strip())

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """`score` over all samples, and `score/<metric>` per metric when several are used."""
        require_scores(self.name, scored)
        by_metric: dict[str, list[float]] = defaultdict(list)
        for sample, result in scored:
            by_metric[sample.metadata["metric"]].append(result.score)
        numbers = {self.metric: mean(result.score for _, result in scored)}
        if len(by_metric) > 1:
            for metric in sorted(by_metric):
                numbers[f"{self.metric}/{metric}"] = mean(by_metric[metric])
        return numbers


def _as_letter(answer: str, options: tuple[str, ...], where: RowLocation) -> str:
    if not options:
        raise DatasetError(f"{where}: metric 'choice' needs 'options'")
    letters = option_letters(len(options))
    if answer in letters:
        return answer
    if answer in options:
        return letters[options.index(answer)]
    raise DatasetError(
        f"{where}: answer {shown(answer)} is neither an option letter ({', '.join(letters)}) "
        "nor one of the options"
    )


def _read_image(base: Path, written: str, where: RowLocation) -> bytes:
    """The bytes of the image `written` in the line, relative to `base`, which it may not leave.
    Not decoded here: an undecodable image fails its sample when the runner opens it."""
    inside = os.path.normpath(base.absolute())
    path = os.path.normpath(os.path.join(inside, written))
    try:
        escapes = os.path.commonpath([inside, path]) != inside
    except ValueError:  # Windows: another drive
        escapes = True
    if escapes:
        raise DatasetError(
            f"{where}: image {shown(written)} is outside the task's folder {inside} "
            "(image paths must stay inside the folder of the .jsonl file)"
        )
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{where}: image {path}: {error.strerror or error}") from error
    if not data:
        raise DatasetError(f"{where}: image {path}: empty file")
    return data
