"""InfographicVQA validation (`infovqa_val`): questions about infographics, scored with ANLS.

Data: `lmms-lab/DocVQA`, config `InfographicVQA`, split `validation` (2,801 questions), files
`InfographicVQA/validation-*.parquet`; columns questionId, question, answers (list), image.

Prompt (lmms-eval 0.7.3 `infovqa_val`, `infovqa_doc_to_text` with the yaml's default model
kwargs): the question, a newline, then "Answer the question using a single word or phrase.".
Generation: up to 32 new tokens, no stop string (as for DocVQA).

Score: ANLS of the trimmed output against the reference answers (lmms-eval's generic `anls`
metric), averaged over questions. Same prompt, budget and scoring as DocVQA in lmms-eval 0.7.3,
hence the shared code; only the data differ.
"""

from ov_eval.tasks.docvqa_val import DocVQAVal


class InfoVQAVal(DocVQAVal):
    """InfographicVQA validation split, ANLS."""

    name = "infovqa_val"
    reference = "lmms-eval 0.7.3, task infovqa_val"
    version = 2
    summary = "InfographicVQA validation: questions on infographics, ANLS"
    dataset = "lmms-lab/DocVQA (config InfographicVQA, split validation)"
    data_files = ("InfographicVQA/validation-*.parquet", "validation-*.parquet")
