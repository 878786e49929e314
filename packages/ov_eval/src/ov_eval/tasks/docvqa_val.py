"""DocVQA validation (`docvqa_val`): questions about scanned documents, scored with ANLS.

Data: `lmms-lab/DocVQA`, config `DocVQA`, split `validation` (5,349 questions), files
`DocVQA/validation-*.parquet`; columns questionId, question, answers (list), image.

Prompt (lmms-eval `docvqa_val`, default model kwargs): the question, a newline, then
"Answer the question using a single word or phrase.". Generation: up to 128 new tokens.

Score: ANLS of the raw output against the reference answers (`ov_eval.metrics.anls`), averaged
over questions; no answer extraction, exactly as in lmms-eval.
"""

from types import MappingProxyType

from ov_eval.metrics import anls
from ov_eval.rows import RowLocation, get_id, get_image, get_str, get_str_list
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task


class DocVQAVal(Task):
    """DocVQA validation split, ANLS."""

    name = "docvqa_val"
    version = 1
    summary = "DocVQA validation: questions on scanned documents, ANLS"
    dataset = "lmms-lab/DocVQA (config DocVQA, split validation)"
    data_files = ("DocVQA/validation-*.parquet", "validation-*.parquet")
    columns = ("questionId", "question", "answers", "image")
    prompt_templates = MappingProxyType(
        {"prompt": "{question}\nAnswer the question using a single word or phrase."}
    )
    pinned_prompt_hash = "e65ce3bc78ec"
    max_new_tokens = 128
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
        """ANLS of the whole output against the reference answers."""
        return SampleScore(anls(prediction, sample.answers), prediction)
