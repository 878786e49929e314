"""MMMU validation (`mmmu_val`): college-level questions across 30 subjects, MMMU's own parser.

Data: `lmms-lab/MMMU`, split `validation` (900 questions), files `data/validation-*.parquet`;
columns id ("validation_<Subject>_<n>"), question, options (a Python list *written as a string*),
answer, question_type ("multiple-choice" / "open"), image_1 ... image_7, subfield and others.

Prompt (lmms-eval `mmmu_val`, "format" prompt type, images not interleaved):
- multiple choice: the question, a newline, the options one per line as "A. text", a blank line,
  then "Answer with the option's letter from the given choices directly.";
- open: the question, a blank line, then "Answer the question using a single word or phrase.".
The "<image 1>" markers stay in the text, as in lmms-eval; the images they name (image_1 for
"<image 1>", each once, in name order) are the sample's images. Generation: up to 128 new tokens
(the `max_new_tokens` of lmms-eval's MMMU template), no stop string (lmms-eval's default "\n\n"
is dropped by its `llava_onevision1_5` model). lmms-eval 0.7.3 reads the split from
`lmms-lab-encoder/MMMU`.

Score (lmms-eval's `mmmu_process_results` and `mmmu_aggregate_results`, the official MMMU parser),
on the output as lmms-eval hands it to `mmmu_process_results` (`<think>`/`<analysis>` blocks
removed and whitespace trimmed, see `ov_eval.tasks.lmms_output`):
- multiple choice: `extract_choice` (lmms-eval's `parse_mmmu_multi_choice_response` without its
  random guess: brackets, bare letters, "B.", then option text for long answers) must give the
  answer's letter; where nothing is found lmms-eval picks `random.choice` of the letters (right
  1/n of the time, depending on the global random state) and this task counts the item wrong:
  the one deliberate difference;
- open: the response is lower-cased and split into lines; from each line the shortest tail after
  "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result " (and "=" on
  the last line) is kept, or the whole response when no line has one; numbers are pulled out of
  those tails; number-like candidates are compared with the answer as floats rounded to 2
  decimals, text candidates must contain the lower-cased answer (a one-letter answer must appear
  with a space on one side).
`mmmu_acc` is the accuracy over all questions (MMMU's "instance-level" average), rounded to 5
decimals as lmms-eval reports it.
"""

import ast
import re
from collections import defaultdict
from collections.abc import Sequence
from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import extract_choice
from ov_eval.rows import RowLocation, get_id, get_image, get_str, is_missing, shown
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options, mean, require_scores
from ov_eval.tasks.lmms_output import lmms_eval_output

MULTIPLE_CHOICE = "multiple-choice"
_IMAGE_MARKER = re.compile(r"<image (\d+)>")
_IMAGE_COLUMNS = tuple(f"image_{number}" for number in range(1, 8))
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_LAST_LINE_INDICATORS = ("=",)
_TRIVIAL_TAILS = frozenset({":", ",", ".", "!", "?", ";", "'"})
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_PLAIN = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_REPORTED_DECIMALS = 5


class MMMUVal(Task):
    """MMMU validation split, MMMU's rule-based answer parsing."""

    name = "mmmu_val"
    version = 2
    summary = "MMMU validation: multi-discipline college questions, MMMU's rule-based parser"
    dataset = "lmms-lab/MMMU (split validation)"
    data_files = ("data/validation-*.parquet", "validation-*.parquet")
    columns = ("id", "question", "options", "answer", "question_type", "image_1")
    optional_columns = (*_IMAGE_COLUMNS[1:], "subfield")
    prompt_templates = MappingProxyType(
        {
            "multiple-choice": "{question}\n{options}\n\n"
            "Answer with the option's letter from the given choices directly.",
            "open": "{question}\n\nAnswer the question using a single word or phrase.",
            "option": "{letter}. {text}",
        }
    )
    pinned_prompt_hash = "9c2c8d153898"
    max_new_tokens = 128
    metric = "mmmu_acc"
    reference = (
        "lmms-eval 0.7.3, task mmmu_val (an unparseable multiple-choice answer is wrong, "
        "not a random letter)"
    )

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample with the parsed options and the images its text refers to."""
        sample_id = get_id(row, "id", where)
        question = get_str(row, "question", where)
        question_type = get_str(row, "question_type", where)
        options = _parse_options(get_str(row, "options", where), where)
        marked_text = "\n".join((question, *options))
        numbers = sorted({int(number) for number in _IMAGE_MARKER.findall(marked_text)})
        images = []
        for number in numbers:
            column = f"image_{number}"
            if column not in _IMAGE_COLUMNS or is_missing(row.get(column)):
                raise DatasetError(
                    f"{where}: the text refers to <image {number}> but {column} is empty"
                )
            images.append(get_image(row, column, where))
        return Sample(
            id=sample_id,
            question=question,
            images=tuple(images),
            answers=(get_str(row, "answer", where),),
            options=options if question_type == MULTIPLE_CHOICE else (),
            metadata={
                "question_type": question_type,
                "subject": _subject(sample_id),
                "subfield": row.get("subfield"),
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """Multiple choice: question, lettered options, letter instruction; open: question and
        short-answer instruction."""
        templates = self.prompt_templates
        if sample.metadata["question_type"] == MULTIPLE_CHOICE:
            options = format_options(sample.options, templates["option"])
            return templates[MULTIPLE_CHOICE].format(question=sample.question, options=options)
        return templates["open"].format(question=sample.question)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Option letter for multiple choice, MMMU's open-answer match otherwise."""
        answer = sample.answers[0]
        predicted = lmms_eval_output(prediction)
        if sample.metadata["question_type"] == MULTIPLE_CHOICE:
            letter = extract_choice(predicted, sample.options)
            return SampleScore(1.0 if letter == answer else 0.0, letter)
        candidates = parse_open_response(predicted)
        shown_candidates = " | ".join(sorted(str(candidate) for candidate in candidates))
        return SampleScore(
            1.0 if open_answer_matches(answer, candidates) else 0.0, shown_candidates
        )

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """`mmmu_acc`: the instance-level accuracy, computed as lmms-eval computes it (per-subject
        accuracies weighted by their sizes) and rounded to 5 decimals as it reports it."""
        require_scores(self.name, scored)
        by_subject: dict[str, list[float]] = defaultdict(list)
        for sample, result in scored:
            by_subject[sample.metadata["subject"]].append(result.score)
        weighted = sum(mean(scores) * len(scores) for scores in by_subject.values())
        accuracy = weighted / sum(len(scores) for scores in by_subject.values())
        return {self.metric: round(accuracy, _REPORTED_DECIMALS)}


def _parse_options(text: str, where: RowLocation) -> tuple[str, ...]:
    try:
        options = ast.literal_eval(text) if text.strip() else []
    except (ValueError, SyntaxError) as error:
        raise DatasetError(
            f"{where}: column 'options': not a Python list literal: {shown(text)}"
        ) from error
    if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
        raise DatasetError(
            f"{where}: column 'options': expected a list of strings, got {shown(text)}"
        )
    return tuple(options)


def _subject(sample_id: str) -> str:
    # "validation_Art_Theory_12" -> "Art_Theory"
    parts = sample_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 else sample_id


def _normalise(text: str) -> list[str | float]:
    """MMMU's normalisation: numbers become floats rounded to 2 decimals, text is lower-cased,
    and a one-character text becomes two patterns padded with a space (to avoid trivial hits)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        pass
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _extract_numbers(text: str) -> list[str]:
    return (
        _NUMBER_WITH_COMMAS.findall(text)
        + _NUMBER_SCIENTIFIC.findall(text)
        + _NUMBER_PLAIN.findall(text)
    )


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official splitter also splits at ". " before a capital letter, but it runs on the
    # lower-cased response, so in effect only line breaks split.
    lines = response.split("\n")
    keys = []
    for position, line in enumerate(lines):
        indicators = _KEY_INDICATORS
        if position == len(lines) - 1:
            indicators += _LAST_LINE_INDICATORS
        shortest: str | None = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> set[str | float]:
    """The candidate answers MMMU reads out of a free-form response (normalised)."""
    keys = _key_responses(response)
    pieces = list(keys)
    for key in keys:
        pieces.extend(_extract_numbers(key))
    return {candidate for piece in pieces for candidate in _normalise(piece)}


def open_answer_matches(answer: str, candidates: set[str | float]) -> bool:
    """MMMU's open-question rule: a float candidate equal to the (numeric) answer, or a text
    candidate containing the (text) answer."""
    references = _normalise(answer)
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(ref, str) and ref in candidate for ref in references):
                return True
        elif candidate in references:
            return True
    return False
