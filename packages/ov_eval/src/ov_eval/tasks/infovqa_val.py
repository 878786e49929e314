"""InfographicVQA validation (`infovqa_val`): questions about infographics, scored with ANLS.

Data: `lmms-lab/DocVQA`, config `InfographicVQA`, split `validation` (2,801 questions), files
`InfographicVQA/validation-*.parquet`; columns questionId, question, answers (list), image.

Prompt (lmms-eval `infovqa_val`, default model kwargs): the question, a newline, then
"Answer the question using a single word or phrase.". Generation: up to 32 new tokens.

Score: ANLS of the raw output against the reference answers, averaged over questions. Same
prompt and scoring as DocVQA, hence the shared code; only the data and the budget differ.
"""

from ov_eval.tasks.docvqa_val import DocVQAVal


class InfoVQAVal(DocVQAVal):
    """InfographicVQA validation split, ANLS."""

    name = "infovqa_val"
    reference = "lmms-eval 0.7.3, task infovqa_val"
    version = 1
    summary = "InfographicVQA validation: questions on infographics, ANLS"
    dataset = "lmms-lab/DocVQA (config InfographicVQA, split validation)"
    data_files = ("InfographicVQA/validation-*.parquet", "validation-*.parquet")
    max_new_tokens = 32
