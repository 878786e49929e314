"""MMBench-EN dev (`mmbench_dev`, lmms-eval's `mmbench_en_dev`): multiple choice, CircularEval.

Data: `lmms-lab/MMBench`, config `en`, split `dev` (4,329 rows), files `en/dev-*.parquet`;
columns index, question, hint (may be empty), A, B, C, D (missing options are empty), answer (a
letter), category, L2-category, image. The dev split holds every question several times with its
options rotated ("circular" copies); a copy's index is the original's plus a multiple of 1e6.

Prompt (lmms-eval `mmbench_en_dev`, default model kwargs): "<hint> " when there is a hint, the
question, a space, "There are several options:", then each option on its own line as "A. text",
then a blank line and "Answer with the option's letter from the given choices directly.".
Generation: up to 1,024 new tokens, cut at "ASSISTANT:". lmms-eval 0.7.3 reads the split from
`lmms-lab-encoder/MMBench`.

Score: lmms-eval's offline path, `mmbench_en_dev_static` (the same task with
`MMBench_Evaluator.eval_result(..., eval_method="static")`), on the output as lmms-eval's
`mmbench_process_results` stores it (`<think>`/`<analysis>` blocks removed and whitespace
trimmed, see `ov_eval.tasks.lmms_output`). Its choices are the cells A-D that are not null/NaN
(lmms-eval's `build_choices`; a cell holding the string "nan" or "" counts, a missing column is
the string "nan", as in lmms-eval):
1. MMBench's `can_infer` (VLMEvalKit): split the output into words; if exactly one word is a
   bare letter A-E, that letter (unless the word "A" appears in an output of more than three
   words: "A" may be an article); else, for each of the forms "X.", "X,", "X:", "X)", "X).",
   "(X)", "(X).", ":X", ":X,", ":X.", ":X)", ":X)." in turn, if exactly one letter A-E appears as
   a whole word in that form, that letter (no letter is read from an output containing
   "Failed to obtain answer via API"); else, if exactly one choice's text occurs in the
   lower-cased output, that choice;
2. else lmms-eval's `extract_mcq_answer` over the choice letters
   (`ov_eval.metrics.choice.extract_mcq_answer`).
A row is right when the letter read is its answer. `mmbench_en_dev` itself asks GPT where step 1
finds nothing and picks a seeded random letter when GPT fails; ov_eval follows the static
variant instead, so no network and no randomness (the one deliberate difference from
`mmbench_en_dev`; none from `mmbench_en_dev_static`).

Aggregation (`eval_result`): CircularEval over the main rows (index < 1e6): a question is right
only if every row whose index is the main row's modulo 1e6 is right; `circular_accuracy` (the
headline; lmms-eval reports it times 100 as `gpt_eval_score`) is the fraction of main rows
right, `category/<name>` and `l2_category/<name>` the same per category of the main row.
Rows whose main row is absent (e.g. with `--limit`) are not counted, as in lmms-eval.
`accuracy` (ov_eval's own) is the plain mean over all rows.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import option_letters
from ov_eval.metrics.choice import extract_mcq_answer
from ov_eval.rows import RowLocation, get_image, get_int, get_str, is_missing, shown
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options, mean, require_scores
from ov_eval.tasks.lmms_output import lmms_eval_output

CIRCULAR_STRIDE = 1_000_000
_OPTION_COLUMNS = ("A", "B", "C", "D", "E")
_LETTERS_TRIED = "ABCDE"
# lmms-eval's `build_choices` reads these columns only; `process_results` fills a missing one
# with the string "nan".
_CHOICE_COLUMNS = ("A", "B", "C", "D")
_API_FAILURE = "Failed to obtain answer via API"
_LETTER_FORMS = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)


class MMBenchDev(Task):
    """MMBench English dev split, lmms-eval's offline option matching, CircularEval."""

    name = "mmbench_dev"
    version = 2
    summary = "MMBench-EN dev: multiple choice, lmms-eval's offline matching, CircularEval"
    dataset = "lmms-lab/MMBench (config en, split dev)"
    data_files = ("en/dev-*.parquet", "dev-*.parquet")
    columns = ("index", "question", "hint", "A", "B", "answer", "category", "image")
    optional_columns = ("C", "D", "E", "L2-category", "l2-category")
    prompt_templates = MappingProxyType(
        {
            "prompt": "{context}{question} There are several options:\n{options}\n\n"
            "Answer with the option's letter from the given choices directly.",
            "context": "{hint} ",
            "option": "{letter}. {text}",
        }
    )
    pinned_prompt_hash = "3e72910c7671"
    max_new_tokens = 1024
    stop_strings = ("ASSISTANT:",)
    metric = "circular_accuracy"
    reference = (
        "lmms-eval 0.7.3, task mmbench_en_dev scored as mmbench_en_dev_static (rules only: "
        "mmbench_en_dev asks GPT to match answers its rules cannot read)"
    )

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by MMBench's index; the hint and categories in metadata."""
        present = [column for column in _OPTION_COLUMNS if _has_option(row.get(column))]
        letters = option_letters(len(present))
        if present != letters:
            raise DatasetError(f"{where}: options {', '.join(present)} are not A, B, C... in order")
        for column in present:
            get_str(row, column, where)
        answer = get_str(row, "answer", where)
        if answer not in letters:
            raise DatasetError(
                f"{where}: column 'answer': {shown(answer)} is not one of the options {letters}"
            )
        index_value = get_int(row, "index", where)
        hint = row.get("hint")
        l2_category = row.get("L2-category", row.get("l2-category"))
        return Sample(
            id=str(index_value),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=(answer,),
            options=tuple(row[column] for column in present),
            metadata={
                "index": index_value,
                "hint": None if _no_hint(hint) else str(hint),
                "category": get_str(row, "category", where),
                "l2_category": l2_category,
                "choices": _scoring_choices(row),
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """Optional hint, question, option list, letter instruction."""
        templates = self.prompt_templates
        hint = sample.metadata["hint"]
        context = "" if hint is None else templates["context"].format(hint=hint)
        options = format_options(sample.options, templates["option"])
        return templates["prompt"].format(
            context=context, question=sample.question, options=options
        )

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """`can_infer`, then `extract_mcq_answer`, on the trimmed output (lmms-eval's static
        MMBench evaluation of one row)."""
        predicted = lmms_eval_output(prediction)
        choices = dict(sample.metadata["choices"])
        letter = infer_option(predicted, choices) or extract_mcq_answer(predicted, sorted(choices))
        return SampleScore(1.0 if letter == sample.answers[0] else 0.0, letter or None)

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """CircularEval over the main rows (overall, per category, per L2 category), and the
        plain `accuracy` over all rows."""
        require_scores(self.name, scored)
        by_question: dict[int, list[float]] = defaultdict(list)
        main_rows: dict[int, Sample] = {}
        for sample, result in scored:
            index = sample.metadata["index"]
            by_question[index % CIRCULAR_STRIDE].append(result.score)
            if index < CIRCULAR_STRIDE:
                main_rows[index] = sample
        if not main_rows:
            raise ValueError(f"task {self.name}: no main rows (index < {CIRCULAR_STRIDE})")
        hits = {index: float(all(by_question[index])) for index in main_rows}
        numbers = {
            self.metric: mean(hits.values()),
            "accuracy": mean(result.score for _, result in scored),
        }
        for key, field in (("category", "category"), ("l2_category", "l2_category")):
            groups: dict[str, list[float]] = defaultdict(list)
            for index, sample in main_rows.items():
                if sample.metadata[field] is not None:
                    groups[str(sample.metadata[field])].append(hits[index])
            for name in sorted(groups):
                numbers[f"{key}/{name}"] = mean(groups[name])
        return numbers


def _scoring_choices(row: dict) -> tuple[tuple[str, str], ...]:
    # lmms-eval's `build_choices`: the cells A-D that are not null/NaN, as text.
    cells = ((column, row.get(column, "nan")) for column in _CHOICE_COLUMNS)
    return tuple((column, str(value)) for column, value in cells if not is_missing(value))


def _has_option(value) -> bool:
    # lmms-eval keeps a cell that is truthy, not NaN and not the string "nan".
    return not is_missing(value) and bool(value) and value != "nan"


def _no_hint(hint) -> bool:
    # lmms-eval drops a hint that is NaN/None or the string "nan" (an empty string is kept).
    return is_missing(hint) or hint == "nan"


def infer_option(answer: str, options: Mapping[str, str]) -> str | None:
    """MMBench's `can_infer`: the letter `answer` names, else the one option whose text it
    contains, else None."""
    return _infer_letter(answer) or _infer_text(answer, options)


def _infer_letter(answer: str) -> str | None:
    if _API_FAILURE in answer:
        return None
    words = [word.strip() for word in answer.split()]

    def count(prefix: str, suffix: str) -> int:
        return sum(f"{prefix}{letter}{suffix}" in words for letter in _LETTERS_TRIED)

    if count("", "") == 1 and not ("A" in words and len(words) > 3):
        return next(letter for letter in _LETTERS_TRIED if letter in words)
    for prefix, suffix in _LETTER_FORMS:
        if count(prefix, suffix) == 1:
            return next(letter for letter in _LETTERS_TRIED if f"{prefix}{letter}{suffix}" in words)
    return None


def _infer_text(answer: str, options: Mapping[str, str]) -> str | None:
    lowered = answer.lower()
    found = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None
