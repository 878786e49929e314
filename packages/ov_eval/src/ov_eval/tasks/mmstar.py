"""MMStar (`mmstar`): vision-indispensable multiple choice in 6 categories x 3 sub-categories.

Data: `Lin-Chen/MMStar`, split `val` (1,500 questions), file `mmstar.parquet` at the root of the
dataset repository; columns index, question (the options are written inside it: "Options: A: ...,
B: ..."), image, answer (a letter), category, l2_category.

Prompt (lmms-eval `mmstar`, default model kwargs): the question with surrounding whitespace
trimmed and any " Please answer yes or no." removed, then a newline and "Answer with the option's
letter from the given choices directly" (no final period in lmms-eval's template, kept as is).
Generation: lmms-eval's default budget, 128 new tokens (the YAML sets none; 128 is the default
of lmms-eval's `llava_onevision1_5` model and of ov_eval's lmms-eval model), no stop string
(lmms-eval's default "\n\n" is dropped by `llava_onevision1_5`).

Score (lmms-eval's `mmstar_process_results`): the output as lmms-eval hands it to that function
(`<think>`/`<analysis>` blocks removed and whitespace trimmed, see `ov_eval.tasks.lmms_output`),
its letter read with lmms-eval's `extract_mcq_answer` over the letters A-D
(`ov_eval.metrics.choice.extract_mcq_answer`, which documents the rule), must equal the answer
(trimmed, upper-cased).

Aggregation as in lmms-eval (`mmstar_aggregate_results`): the mean score of each of the 18
sub-categories (l2_category), then `average` = the mean of those 18 means (the headline), and one
number per category = the mean of its sub-categories' means.
"""

from collections import defaultdict
from collections.abc import Sequence
from types import MappingProxyType

from ov_eval.metrics.choice import extract_mcq_answer
from ov_eval.rows import RowLocation, get_image, get_int, get_str
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, mean, require_scores
from ov_eval.tasks.lmms_output import lmms_eval_output

_LETTERS = ("A", "B", "C", "D")


class MMStar(Task):
    """MMStar val split, lmms-eval's letter extraction, macro-averaged over sub-categories."""

    name = "mmstar"
    version = 2
    summary = "MMStar: vision-indispensable multiple choice, letter rule, sub-category average"
    dataset = "Lin-Chen/MMStar (split val)"
    data_files = ("mmstar.parquet", "**/val-*.parquet", "val-*.parquet")
    columns = ("index", "question", "image", "answer", "category", "l2_category")
    prompt_templates = MappingProxyType(
        {
            "prompt": "{question}\nAnswer with the option's letter from the given choices directly",
            "removed": " Please answer yes or no.",
        }
    )
    pinned_prompt_hash = "3f0ec7fd3ab3"
    metric = "average"
    reference = "lmms-eval 0.7.3, task mmstar"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by MMStar's index, categories in metadata."""
        return Sample(
            id=str(get_int(row, "index", where)),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=(get_str(row, "answer", where, allow_empty=False),),
            metadata={
                "category": get_str(row, "category", where),
                "l2_category": get_str(row, "l2_category", where),
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """Trimmed question (yes/no instruction removed), then the letter instruction."""
        templates = self.prompt_templates
        question = sample.question.strip().replace(templates["removed"], "")
        return templates["prompt"].format(question=question)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """lmms-eval's `extract_mcq_answer` (letters A-D) against the answer letter."""
        letter = extract_mcq_answer(lmms_eval_output(prediction), _LETTERS)
        answer = sample.answers[0].strip().upper()
        return SampleScore(1.0 if letter == answer else 0.0, letter or None)

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """`average` over sub-category means, plus one number per category."""
        require_scores(self.name, scored)
        by_l2: dict[str, list[float]] = defaultdict(list)
        category_of: dict[str, str] = {}
        for sample, result in scored:
            l2 = sample.metadata["l2_category"]
            by_l2[l2].append(result.score)
            category_of[l2] = sample.metadata["category"]
        l2_means = {l2: mean(scores) for l2, scores in by_l2.items()}
        numbers = {self.metric: mean(l2_means.values())}
        by_category: dict[str, list[float]] = defaultdict(list)
        for l2, value in l2_means.items():
            by_category[category_of[l2]].append(value)
        for category in sorted(by_category):
            numbers[category] = mean(by_category[category])
        return numbers
