"""OCRBench (`ocrbench`): 1,000 OCR items in ten categories, scored by answer containment.

Data: `echo840/OCRBench`, split `test`, files `data/test-*.parquet`; columns dataset (the source
dataset, e.g. "IIIT5K", "HME100k"), question, question_type (one of the ten categories), answer
(list of acceptable answers), image. Rows have no id column; a sample's id is its 0-based
position in the split.

Prompt (lmms-eval 0.7.3 `ocrbench`, `ocrbench_doc_to_text` with the yaml's default model
kwargs, empty pre and post prompts): the question with surrounding whitespace trimmed, nothing
added; the image before it. Generation: up to 128 new tokens, no stop string (the yaml's default
`until` is a blank line, which lmms-eval's `llava_onevision1_5` model drops).

Score: as lmms-eval's `ocrbench_process_results` (`ov_eval.metrics.ocrbench_match`): right when an
answer occurs in the trimmed output, case-insensitively after folding fullwidth ASCII; for
handwritten formulas (HME100k) case-sensitively and ignoring spaces and newlines.

Aggregation: `ocrbench_accuracy` = right items / items, `correct` = the count of right items
(OCRBench's "final score" out of 1000), and the accuracy of each category. lmms-eval's
`ocrbench_aggregate_accuracy` returns right items / 1000 whatever the number of items: equal on
the full test split (1000 items, e.g. 829 right -> 0.829), but on a `--limit` subset it would
report e.g. 80 right out of 100 as 0.08. Dividing by the number of items is the one deliberate
difference (lmms-eval also keeps its category counts in a module-level dict that grows with every
call in one process; here each call starts from zero).
"""

from collections import defaultdict
from collections.abc import Sequence
from types import MappingProxyType

from ov_eval.metrics import ocrbench_match
from ov_eval.rows import RowLocation, get_image, get_str, get_str_list
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, mean, require_scores


class OCRBench(Task):
    """OCRBench test split, answer containment."""

    name = "ocrbench"
    version = 2
    summary = "OCRBench: text recognition, scene/document VQA, KIE, formulas; answer containment"
    dataset = "echo840/OCRBench (split test)"
    data_files = ("data/test-*.parquet", "test-*.parquet")
    columns = ("dataset", "question", "question_type", "answer", "image")
    prompt_templates = MappingProxyType({"prompt": "{question}"})
    pinned_prompt_hash = "d89c86909c80"
    max_new_tokens = 128
    metric = "ocrbench_accuracy"
    reference = "lmms-eval 0.7.3, task ocrbench"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by position; source dataset and category in metadata."""
        return Sample(
            id=str(index),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=get_str_list(row, "answer", where),
            metadata={
                "dataset": get_str(row, "dataset", where),
                "question_type": get_str(row, "question_type", where),
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """The trimmed question."""
        return self.prompt_templates["prompt"].format(question=sample.question.strip())

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """1 when an answer occurs in the trimmed output under OCRBench's normalisation."""
        answer = prediction.strip()
        matched = ocrbench_match(answer, sample.answers, sample.metadata["dataset"])
        return SampleScore(matched, answer)

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """Accuracy, count of right items, and accuracy per category."""
        require_scores(self.name, scored)
        by_category: dict[str, list[float]] = defaultdict(list)
        for sample, result in scored:
            by_category[sample.metadata["question_type"]].append(result.score)
        numbers = {
            self.metric: mean(result.score for _, result in scored),
            "correct": float(sum(result.score for _, result in scored)),
        }
        for category in sorted(by_category):
            numbers[category] = mean(by_category[category])
        return numbers
