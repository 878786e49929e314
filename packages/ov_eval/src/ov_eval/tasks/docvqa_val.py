"""DocVQA validation (`docvqa_val`): questions about scanned documents, scored with ANLS.

Data: `lmms-lab/DocVQA`, config `DocVQA`, split `validation` (5,349 questions), files
`DocVQA/validation-*.parquet`; columns questionId, question, answers (list), image.

Prompt (lmms-eval 0.7.3 `docvqa_val`, `docvqa_doc_to_text` with the yaml's default model
kwargs): the question as given, a newline, then "Answer the question using a single word or
phrase."; the image before it. Generation: up to 32 new tokens (the yaml's `max_new_tokens`), no
stop string (the yaml's default `until` is a blank line, which lmms-eval's `llava_onevision1_5`
model drops).

Score: as lmms-eval's generic `generate_until` scoring with its `anls` metric
(`lmms_eval.api.metrics.anls`): the output is trimmed (`ConfigurableTask.process_results` trims
every output), then `ov_eval.metrics.anls` against all reference answers; no answer extraction.
The trimming matters: ANLS divides by the length of the longer *un-normalised* string, so
"Paris\n" would otherwise be longer than "Paris". Aggregation: the mean over questions.
"""

from types import MappingProxyType

from ov_eval.metrics import anls
from ov_eval.rows import RowLocation, get_id, get_image, get_str, get_str_list
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task


class DocVQAVal(Task):
    """DocVQA validation split, ANLS."""

    name = "docvqa_val"
    version = 2
    summary = "DocVQA validation: questions on scanned documents, ANLS"
    dataset = "lmms-lab/DocVQA (config DocVQA, split validation)"
    data_files = ("DocVQA/validation-*.parquet", "validation-*.parquet")
    columns = ("questionId", "question", "answers", "image")
    prompt_templates = MappingProxyType(
        {"prompt": "{question}\nAnswer the question using a single word or phrase."}
    )
    pinned_prompt_hash = "e65ce3bc78ec"
    max_new_tokens = 32
    metric = "anls"
    reference = "lmms-eval 0.7.3, task docvqa_val"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by the dataset's questionId."""
        return Sample(
            id=get_id(row, "questionId", where),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=get_str_list(row, "answers", where),
        )

    def build_prompt(self, sample: Sample) -> str:
        """The question followed by the short-answer instruction."""
        return self.prompt_templates["prompt"].format(question=sample.question)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """ANLS of the trimmed output against the reference answers."""
        answer = prediction.strip()
        return SampleScore(anls(answer, sample.answers), answer)
