"""MMBench-EN dev (`mmbench_dev`, lmms-eval's `mmbench_en_dev`): multiple choice, CircularEval.

Data: `lmms-lab/MMBench`, config `en`, split `dev` (4,329 rows), files `en/dev-*.parquet`;
columns index, question, hint (may be empty), A, B, C, D (missing options are empty), answer (a
letter), category, L2-category, image. The dev split holds every question several times with its
options rotated ("circular" copies); a copy's index is the original's plus a multiple of 1e6.

Prompt (lmms-eval `mmbench_en_dev`, default model kwargs): "<hint> " when there is a hint, the
question, a space, "There are several options:", then each option on its own line as "A. text",
then a blank line and "Answer with the option's letter from the given choices directly.".
Generation: up to 1,024 new tokens, cut at "ASSISTANT:".

Score: MMBench's own option matching (VLMEvalKit `can_infer`, as in lmms-eval), on the trimmed
output, without its GPT fallback:
1. split the output into words; if exactly one of the words is a bare letter A-E, that letter
   (unless the word "A" appears in an output of more than three words: "A" may be an article);
2. else, for each of the forms "X.", "X,", "X:", "X)", "X).", "(X)", "(X).", ":X", ":X,", ":X.",
   ":X)", ":X)." in turn, if exactly one letter appears as a whole word in that form, that letter;
3. else, if exactly one option's text occurs in the lower-cased output, that option.
Where none of these finds a letter, lmms-eval asks GPT to match and picks at random when that
fails; this task counts the item wrong. Aggregation: `circular_accuracy` (the headline, as
MMBench reports dev) counts a question right only if it and all its rotated copies are right;
`accuracy` is the plain mean over rows.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import option_letters
from ov_eval.rows import RowLocation, get_image, get_int, get_str, is_missing, shown
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options, mean, require_scores

CIRCULAR_STRIDE = 1_000_000
_OPTION_COLUMNS = ("A", "B", "C", "D", "E")
_LETTERS_TRIED = "ABCDE"
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
    """MMBench English dev split, MMBench's option matching, CircularEval."""

    name = "mmbench_dev"
    version = 1
    summary = "MMBench-EN dev: multiple choice, MMBench's rule matching, CircularEval"
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
    reference = "lmms-eval 0.7.3, task mmbench_en_dev"

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
        """MMBench's letter-then-text matching on the trimmed output."""
        options = dict(zip(option_letters(len(sample.options)), sample.options, strict=True))
        letter = infer_option(prediction.strip(), options)
        return SampleScore(1.0 if letter == sample.answers[0] else 0.0, letter)

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """`circular_accuracy` over questions (all copies right) and `accuracy` over rows."""
        require_scores(self.name, scored)
        by_question: dict[int, list[float]] = defaultdict(list)
        for sample, result in scored:
            by_question[sample.metadata["index"] % CIRCULAR_STRIDE].append(result.score)
        return {
            self.metric: mean(float(all(scores)) for scores in by_question.values()),
            "accuracy": mean(result.score for _, result in scored),
        }


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
