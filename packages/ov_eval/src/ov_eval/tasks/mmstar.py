"""MMStar (`mmstar`): vision-indispensable multiple choice in 6 categories x 3 sub-categories.

Data: `Lin-Chen/MMStar`, split `val` (1,500 questions), file `mmstar.parquet` at the root of the
dataset repository; columns index, question (the options are written inside it: "Options: A: ...,
B: ..."), image, answer (a letter), category, l2_category.

Prompt (lmms-eval `mmstar`, default model kwargs): the question with surrounding whitespace
trimmed and any " Please answer yes or no." removed, then a newline and "Answer with the option's
letter from the given choices directly" (no final period in lmms-eval's template, kept as is).
Generation: lmms-eval's default budget, 128 new tokens.

Score (MMStar's own rule, as in lmms-eval): the output, lower-cased and trimmed with newlines
turned into spaces, is right when its first character is the answer letter, or it starts with
"(" + letter, "option " + letter or "the answer is " + letter. Aggregation as in lmms-eval: the
mean score of each of the 18 sub-categories (l2_category), then `average` = the mean of those 18
means (the headline), and one number per category = the mean of its sub-categories' means.
"""

from collections import defaultdict
from collections.abc import Sequence
from types import MappingProxyType

from ov_eval.rows import RowLocation, get_image, get_int, get_str
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, mean, require_scores

_PREFIXES = ("(", "option ", "the answer is ")


class MMStar(Task):
    """MMStar val split, MMStar's letter rule, macro-averaged over sub-categories."""

    name = "mmstar"
    version = 1
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
        """MMStar's rule: the letter first, or after "(", "option " or "the answer is "."""
        answer = sample.answers[0].lower().replace("\n", " ").strip()
        predicted = prediction.lower().replace("\n", " ").strip()
        # Each rule reads one character: the first one, or the one after its prefix.
        read = [
            predicted[len(prefix)]
            for prefix in ("", *_PREFIXES)
            if predicted.startswith(prefix) and len(predicted) > len(prefix)
        ]
        if answer in read:
            return SampleScore(1.0, answer.upper())
        # Report the letter the most specific matching rule read (the longest prefix).
        return SampleScore(0.0, read[-1].upper() if read else None)

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
