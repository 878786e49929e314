"""RealWorldQA (`realworldqa`): spatial questions on real-world photos, lmms-eval's extraction.

Data: `lmms-lab/RealWorldQA`, split `test` (765 questions), files `data/test-*.parquet`; columns
question (multiple-choice questions list their options inside it as lines "A. text" and end with
an instruction to answer with the letter), answer (a letter, or a word/number), image. Rows have no
id column; a sample's id is its 0-based position in the split.

Prompt (lmms-eval `realworldqa`, default model kwargs: empty pre/post prompts): the question with
surrounding whitespace trimmed, nothing added. Generation: up to 16 new tokens, no stop string
(lmms-eval's default "\n\n" is dropped by its `llava_onevision1_5` model). lmms-eval 0.7.3 reads
the split from `lmms-lab-encoder/RealWorldQA`.

Score (lmms-eval's `realworldqa_process_results`; its YAML sets no filters, so the number-word and
option-text filters in its utils.py are not used), on the output as lmms-eval hands it to that
function (`<think>`/`<analysis>` blocks removed and whitespace trimmed, see
`ov_eval.tasks.lmms_output`):
- when the trimmed answer is a letter A-D (any case): lmms-eval's `extract_mcq_answer` over the
  letters A-D (`ov_eval.metrics.choice.extract_mcq_answer`, which documents the rule) must give
  the answer's letter ("B", "(B)", "Answer: B", "b." read as B; "b" alone is not a letter);
- otherwise (numbers, words): the output lower-cased, trimmed and without trailing periods must
  equal the trimmed, lower-cased answer ("2." matches "2"; "two" does not).
"""

import re
from types import MappingProxyType

from ov_eval.metrics.choice import extract_mcq_answer
from ov_eval.rows import RowLocation, get_image, get_str
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task
from ov_eval.tasks.lmms_output import lmms_eval_output

_MULTIPLE_CHOICE_LETTERS = ("A", "B", "C", "D")
_OPTION_LINE = re.compile(r"\b([A-Z])\.\s+([^\n]*)")


class RealWorldQA(Task):
    """RealWorldQA test split, lmms-eval's letter extraction or exact match."""

    name = "realworldqa"
    version = 2
    summary = "RealWorldQA: real-world spatial questions, letter extraction / exact match"
    dataset = "lmms-lab/RealWorldQA (split test)"
    data_files = ("data/test-*.parquet", "test-*.parquet")
    columns = ("question", "answer", "image")
    prompt_templates = MappingProxyType({"prompt": "{question}"})
    pinned_prompt_hash = "d89c86909c80"
    max_new_tokens = 16
    metric = "exact_match"
    reference = "lmms-eval 0.7.3, task realworldqa"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample keyed by position; the options stay inside the question, as published."""
        question = get_str(row, "question", where)
        return Sample(
            id=str(index),
            question=question,
            images=(get_image(row, "image", where),),
            answers=(get_str(row, "answer", where, allow_empty=False),),
            options=options_in_question(question),
        )

    def build_prompt(self, sample: Sample) -> str:
        """The trimmed question."""
        return self.prompt_templates["prompt"].format(question=sample.question.strip())

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Letter answers: lmms-eval's `extract_mcq_answer` (A-D); other answers: exact match of
        the lower-cased output without trailing periods."""
        predicted = lmms_eval_output(prediction)
        answer = sample.answers[0].strip()
        if answer.upper() in _MULTIPLE_CHOICE_LETTERS:
            letter = extract_mcq_answer(predicted, _MULTIPLE_CHOICE_LETTERS)
            return SampleScore(1.0 if letter == answer.upper() else 0.0, letter or None)
        cleaned = predicted.lower().strip().rstrip(".")
        return SampleScore(1.0 if cleaned == answer.lower() else 0.0, cleaned)


def options_in_question(question: str) -> tuple[str, ...]:
    """The option texts written in `question` as lines "X. text", in order."""
    return tuple(text.strip() for _, text in _OPTION_LINE.findall(question))
