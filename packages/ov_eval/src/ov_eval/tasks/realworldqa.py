"""RealWorldQA (`realworldqa`): spatial questions on real-world photos, lmms-eval's extraction.

Data: `lmms-lab/RealWorldQA`, split `test` (765 questions), files `data/test-*.parquet`; columns
question (multiple-choice questions list their options inside it as lines "A. text" and end with
an instruction to answer with the letter), answer (a letter, or a word/number), image. Rows have no
id column; a sample's id is its 0-based position in the split.

Prompt (lmms-eval `realworldqa`, default model kwargs: empty pre/post prompts): the question with
surrounding whitespace trimmed, nothing added. Generation: up to 16 new tokens.

Score (lmms-eval's "flexible-extract" filters, then `exact_match` ignoring case and punctuation):
1. an output that is exactly a number word zero..ten (any case) becomes its digits;
2. punctuation is deleted from the output and it is trimmed;
3. the options are read from the question (every "X. text" up to the end of its line, labelled
   A, B, C... in order of appearance); if one of their texts occurs in the cleaned output (the
   leftmost occurrence; at equal positions the earlier option), the output becomes that letter;
4. the result must equal the answer, ignoring case and punctuation.
So "B", "b.", "(B)" and "Left" (when option B is "Left") are all read as B.
"""

import re
from types import MappingProxyType

from ov_eval.metrics import exact_match, option_letters
from ov_eval.rows import RowLocation, get_image, get_str
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task

_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_OPTION_LINE = re.compile(r"\b([A-Z])\.\s+([^\n]*)")
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")


class RealWorldQA(Task):
    """RealWorldQA test split, lmms-eval's option extraction and exact match."""

    name = "realworldqa"
    version = 1
    summary = "RealWorldQA: real-world spatial questions, option extraction + exact match"
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
        """Number words to digits, punctuation dropped, option text to letter, exact match."""
        extracted = _NUMBER_WORDS.get(prediction.lower(), prediction)
        extracted = _NOT_WORD_OR_SPACE.sub("", extracted).strip()
        letters = option_letters(len(sample.options))
        positions = [
            (extracted.find(text), order, letter)
            for order, (letter, text) in enumerate(zip(letters, sample.options, strict=True))
            if text in extracted
        ]
        if positions:
            extracted = min(positions)[2]
        return SampleScore(exact_match(extracted, sample.answers[0]), extracted)


def options_in_question(question: str) -> tuple[str, ...]:
    """The option texts written in `question` as lines "X. text", in order."""
    return tuple(text.strip() for _, text in _OPTION_LINE.findall(question))
