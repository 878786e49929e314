"""MathVista testmini (`mathvista_testmini`): visual math, rule-based answer extraction.

Data: `AI4Math/MathVista`, split `testmini` (1,000 problems), files `data/testmini-*.parquet`;
columns pid, question, decoded_image, choices (list, or empty for free-form problems), unit,
precision (decimal places of float answers), answer, question_type ("multi_choice" /
"free_form"), answer_type ("text", "integer", "float", "list"), metadata.

Prompt: lmms-eval's MathVista "format-prompt" variant (task `mathvista_testmini_format`, one of
the three prompt variants lmms-eval's `mathvista_testmini` group runs; the only one that asks
for a bare answer, which is what a rule-based extractor can read reliably). Lines, joined by
newlines, empty ones left out, then trimmed:
  the question, followed by " (Unit: <unit>)" when there is a unit;
  the choices as "A. text" lines (multiple choice only);
  the instruction for the answer type:
    multiple choice: "Answer with the option's letter from the given choices directly."
    integer: "Answer the question using a single integer number."
    float, 1 place: "Answer the question using a single floating-point number with one
      decimal place." (one line)
    float, 2 places: the same with "two decimal places."
    list: "Answer the question using a Python list."
Generation: up to 16,384 new tokens (the yaml's `max_new_tokens`; a bare answer needs a
handful), no stop string (the yaml's default `until` is a blank line, which lmms-eval's
`llava_onevision1_5` model drops).

Score: lmms-eval 0.7.3's `mathvista_process_results` (MathVista's official pipeline: extract,
normalise, compare as strings) on the trimmed output, with two deliberate differences, both
checked by the parity test (tests/lmms_parity/test_mathvista_testmini.py):
1. extraction (`MathVistaEvaluator.extract_answer`, quick_extract off as in the yaml): an empty
   output gives ""; an output that is one of the choices, or (integer / float answers) that
   `int()` / `float()` accept as a whole, is taken as is. Every other output goes to a GPT judge
   in lmms-eval (gpt-4o-2024-11-20 unless MODEL_VERSION says otherwise); 0.7.3 has no offline
   path: without OPENAI_API_KEY the task module does not even import, and a failed judge call
   extracts "" (a multiple-choice "B" then becomes the shortest choice). Here those outputs are
   read by rules instead (`extract_by_rules`): lmms-eval's quick_extract pattern
   `The answer is "(.*)".` first, then multiple choice -> `extract_choice`'s letter (else the
   output), integer/float -> the last number in the output (thousands commas dropped), list ->
   the last "[...]" in the output (else the output). Deliberate difference 1: the judge is
   replaced by these rules.
2. normalisation (`normalize_extracted_answer`): multiple choice -> a letter (or "(x)") maps to its
   choice's text, anything else to the most similar choice by edit distance (the first on ties;
   so an empty output becomes the shortest choice); integer -> str(int(float(x))); float ->
   str(round(float(x), precision)); list -> str(x); failures become None. Deliberate difference
   2: the dataset stores `precision` as float64 (1.0, 2.0) and lmms-eval 0.7.3 passes it to
   round() as is, which raises TypeError, so every float answer normalises to None and scores 0
   there; here precision is an int, as in MathVista's official code.
3. the item is right when str(normalised).strip() == answer.strip() (`safe_equal`).
`accuracy` is the fraction of right items (lmms-eval's `mathvista_aggregate_results` reports the
same as a percentage rounded to 2 decimals).
"""

import re
from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import extract_choice, levenshtein_distance, option_letters
from ov_eval.rows import (
    RowLocation,
    get_id,
    get_image,
    get_optional_str,
    get_str,
    get_str_list,
    is_missing,
    shown,
)
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options

MULTI_CHOICE = "multi_choice"
_ANSWER_TYPES = ("text", "integer", "float", "list")
_BRACKETED_LETTER = re.compile(r"\(([a-zA-Z])\)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_PYTHON_LIST = re.compile(r"\[[^\[\]]*\]")
_QUICK_EXTRACT = re.compile(r'The answer is "(.*)"\.')


class MathVistaTestmini(Task):
    """MathVista testmini, bare-answer prompt, rule-based extraction."""

    name = "mathvista_testmini"
    version = 2
    summary = "MathVista testmini: visual math, bare-answer prompt, rule-based extraction"
    dataset = "AI4Math/MathVista (split testmini)"
    data_files = ("data/testmini-*.parquet", "testmini-*.parquet")
    columns = ("pid", "question", "decoded_image", "choices", "unit", "precision", "answer")
    columns += ("question_type", "answer_type")
    optional_columns = ("metadata",)
    prompt_templates = MappingProxyType(
        {
            "unit": " (Unit: {unit})",
            "option": "{letter}. {text}",
            "hint_multi_choice": "Answer with the option's letter from the given choices directly.",
            "hint_integer": "Answer the question using a single integer number.",
            "hint_float_1": "Answer the question using a single floating-point number with one "
            "decimal place.",
            "hint_float_2": "Answer the question using a single floating-point number with two "
            "decimal places.",
            "hint_list": "Answer the question using a Python list.",
        }
    )
    pinned_prompt_hash = "097b7e59f23b"
    max_new_tokens = 16384
    metric = "accuracy"
    reference = (
        "lmms-eval 0.7.3, task mathvista_testmini_format (of the mathvista_testmini group), "
        "with rules in place of its GPT answer extractor and integer precision for float answers"
    )

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by pid; problem type, answer type, precision and unit in metadata."""
        question_type = get_str(row, "question_type", where)
        answer_type = get_str(row, "answer_type", where)
        if answer_type not in _ANSWER_TYPES:
            raise DatasetError(f"{where}: column 'answer_type': unknown type {shown(answer_type)}")
        if (question_type == MULTI_CHOICE) != (answer_type == "text"):
            raise DatasetError(
                f"{where}: question_type {question_type!r} with answer_type {answer_type!r} "
                "(multiple choice has text answers, free form has integer/float/list answers)"
            )
        choices = () if is_missing(row.get("choices")) else get_str_list(row, "choices", where)
        if question_type == MULTI_CHOICE and not choices:
            raise DatasetError(f"{where}: a multiple-choice problem without choices")
        precision = None if is_missing(row.get("precision")) else row["precision"]
        if answer_type == "float":
            if precision not in (1, 2):
                raise DatasetError(
                    f"{where}: column 'precision': a float answer needs 1 or 2 decimal places, "
                    f"got {shown(precision)}"
                )
            precision = int(precision)
        metadata = row.get("metadata")
        return Sample(
            id=get_id(row, "pid", where),
            question=get_str(row, "question", where),
            images=(get_image(row, "decoded_image", where),),
            answers=(get_str(row, "answer", where),),
            options=choices,
            metadata={
                "question_type": question_type,
                "answer_type": answer_type,
                "precision": precision,
                "unit": get_optional_str(row, "unit", where) or "",
                "category": metadata.get("category") if isinstance(metadata, dict) else None,
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """Question (+ unit), lettered choices, answer-type instruction; newline-joined."""
        templates = self.prompt_templates
        question = sample.question
        if sample.metadata["unit"]:
            question += templates["unit"].format(unit=sample.metadata["unit"])
        choices = format_options(sample.options, templates["option"]) if sample.options else ""
        lines = [question, choices, templates[_hint_key(sample)]]
        return "\n".join(line for line in lines if line).strip()

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Extract, normalise and compare with the answer as MathVista does."""
        extraction = extract_answer(prediction, sample)
        normalised = normalise_answer(extraction, sample)
        right = str(normalised).strip() == sample.answers[0].strip()
        return SampleScore(1.0 if right else 0.0, normalised)


def _hint_key(sample: Sample) -> str:
    if sample.metadata["question_type"] == MULTI_CHOICE:
        return "hint_multi_choice"
    answer_type = sample.metadata["answer_type"]
    if answer_type == "float":
        return f"hint_float_{sample.metadata['precision']}"
    return f"hint_{answer_type}"


def _parses(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def extract_answer(prediction: str, sample: Sample) -> str:
    """The answer text read from `prediction`: lmms-eval's judge-free steps, else the rules."""
    response = prediction.strip()
    direct = extract_without_judge(response, sample)
    return extract_by_rules(response, sample) if direct is None else direct


def extract_without_judge(response: str, sample: Sample) -> str | None:
    """What lmms-eval's `extract_answer` returns before asking its judge, or None where it would
    ask (`response` is the trimmed output)."""
    if not response:
        return ""
    if sample.metadata["question_type"] == MULTI_CHOICE and response in sample.options:
        return response
    answer_type = sample.metadata["answer_type"]
    if answer_type == "integer" and _parses(response, int):
        return str(int(response))
    if answer_type == "float" and _parses(response, float):
        return str(float(response))
    return None


def extract_by_rules(response: str, sample: Sample) -> str:
    """The answer in `response` by rules: what this task uses where lmms-eval asks GPT."""
    quoted = _QUICK_EXTRACT.search(response)
    if quoted:
        return quoted.group(1)
    if sample.metadata["question_type"] == MULTI_CHOICE:
        return extract_choice(response, sample.options) or response
    if sample.metadata["answer_type"] in ("integer", "float"):
        numbers = _NUMBER.findall(response)
        return numbers[-1].replace(",", "") if numbers else response
    lists = _PYTHON_LIST.findall(response)
    return lists[-1] if lists else response


def normalise_answer(extraction: str, sample: Sample) -> str | None:
    """MathVista's normalisation of an extracted answer (None when it cannot be normalised)."""
    answer_type = sample.metadata["answer_type"]
    if sample.metadata["question_type"] == MULTI_CHOICE:
        choices = sample.options
        extraction = extraction.strip()
        bracketed = _BRACKETED_LETTER.findall(extraction)
        if bracketed:
            extraction = bracketed[0].upper()
        letters = option_letters(len(choices))
        if extraction in letters:
            return choices[letters.index(extraction)]
        distances = [levenshtein_distance(extraction, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), sample.metadata["precision"]))
    except (ValueError, OverflowError):
        return None
    return str(extraction)
