"""ChartQA test (`chartqa`): questions about charts, scored with relaxed accuracy.

Data: `lmms-lab/ChartQA`, split `test` (2,500 questions: 1,250 human-written, 1,250 generated),
file `data/test-*.parquet`; columns type ("human_test" / "augmented_test"), question, answer,
image. Rows have no id column; a sample's id is its 0-based position in the split.

Prompt (lmms-eval 0.7.3 `chartqa`, `chartqa_doc_to_text` with the yaml's default model kwargs):
the question as given, a newline, then "Answer the question with a single word."; the image
before it. Generation: up to 16 new tokens, no stop string (the yaml's default `until` is a blank
line, which lmms-eval's `llava_onevision1_5` model drops).

Score: as lmms-eval's `chartqa_process_results`: relaxed accuracy (`relaxed_correctness`, here
`ov_eval.metrics.relaxed_accuracy`: numbers within 5 %, other answers case-insensitively equal)
of the trimmed output against the answer as given. Reported as lmms-eval does: `relaxed_overall`
(the headline), and the means over the human ("human_test") and the augmented (any other type)
halves.
"""

from collections.abc import Sequence
from types import MappingProxyType

from ov_eval.metrics import relaxed_accuracy
from ov_eval.rows import RowLocation, get_image, get_str
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, mean, require_scores

HUMAN_SPLIT = "human_test"


class ChartQA(Task):
    """ChartQA test split, relaxed accuracy."""

    name = "chartqa"
    version = 2
    summary = "ChartQA test: questions on charts, relaxed accuracy (5% numeric tolerance)"
    dataset = "lmms-lab/ChartQA (split test)"
    data_files = ("data/test-*.parquet", "test-*.parquet")
    columns = ("type", "question", "answer", "image")
    prompt_templates = MappingProxyType(
        {"prompt": "{question}\nAnswer the question with a single word."}
    )
    pinned_prompt_hash = "f9bbdfb3ba5c"
    max_new_tokens = 16
    metric = "relaxed_overall"
    reference = "lmms-eval 0.7.3, task chartqa"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by its position in the split; the question type goes to metadata."""
        return Sample(
            id=str(index),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=(get_str(row, "answer", where),),
            metadata={"type": get_str(row, "type", where)},
        )

    def build_prompt(self, sample: Sample) -> str:
        """The question followed by the one-word instruction."""
        return self.prompt_templates["prompt"].format(question=sample.question)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Relaxed accuracy of the trimmed output against the answer."""
        answer = prediction.strip()
        return SampleScore(relaxed_accuracy(answer, sample.answers[0]), answer)

    def aggregate(self, scored: Sequence[tuple[Sample, SampleScore]]) -> dict[str, float]:
        """`relaxed_overall` plus the human and augmented halves (when present)."""
        require_scores(self.name, scored)
        human = [
            result.score for sample, result in scored if sample.metadata["type"] == HUMAN_SPLIT
        ]
        augmented = [
            result.score for sample, result in scored if sample.metadata["type"] != HUMAN_SPLIT
        ]
        numbers = {self.metric: mean(result.score for _, result in scored)}
        if human:
            numbers["relaxed_human_split"] = mean(human)
        if augmented:
            numbers["relaxed_augmented_split"] = mean(augmented)
        return numbers
