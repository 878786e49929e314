"""AI2D test (`ai2d`): multiple-choice questions about science diagrams, exact match.

Data: `lmms-lab/ai2d`, split `test` (3,088 questions), files `data/test-*.parquet`; columns
question, options (list), answer (the 0-based index of the right option, as a string), image.
Rows have no id column; a sample's id is its 0-based position in the split.

Prompt (lmms-eval `ai2d`, default model kwargs, "mcq" format): the question, a newline, the
options one per line as "A. text", then a newline and "Answer with the option's letter from the
given choices directly.". Generation: up to 16 new tokens, no stop string (lmms-eval's default
"\n\n" is dropped by its `llava_onevision1_5` model). lmms-eval 0.7.3 reads the split from
`lmms-lab-encoder/ai2d`.

Score (lmms-eval's pipeline for this task: its "flexible-extract" filter, then the evaluator's
reasoning-tag stripping and trimming, see `ov_eval.tasks.lmms_output`, then its `exact_match`
metric ignoring case and punctuation): an output that starts with optional whitespace, an
upper-case letter A-Z and a period ("B. sun", "  C.") is read as that letter, any other output is
kept whole; `<think>`/`<analysis>` blocks are then removed and whitespace trimmed; it is right
when it equals the answer's letter ignoring case and ASCII punctuation, so "B", "b", " (B)\n",
"**B**" and "B. sun" count, "The answer is B" does not.
"""

import re
from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import exact_match, option_letters
from ov_eval.rows import RowLocation, get_image, get_int, get_str, get_str_list, shown
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options
from ov_eval.tasks.lmms_output import lmms_eval_output

_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


class AI2D(Task):
    """AI2D test split, option letter exact match."""

    name = "ai2d"
    version = 2
    summary = "AI2D test: multiple choice on science diagrams, option-letter exact match"
    dataset = "lmms-lab/ai2d (split test)"
    data_files = ("data/test-*.parquet", "test-*.parquet")
    columns = ("question", "options", "answer", "image")
    prompt_templates = MappingProxyType(
        {
            "prompt": "{question}\n{options}\n"
            "Answer with the option's letter from the given choices directly.",
            "option": "{letter}. {text}",
        }
    )
    pinned_prompt_hash = "ccea24bbec4b"
    max_new_tokens = 16
    metric = "exact_match"
    reference = "lmms-eval 0.7.3, task ai2d"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample whose answer is the right option's letter."""
        options = get_str_list(row, "options", where)
        answer = get_int(row, "answer", where)
        if not 0 <= answer < len(options):
            raise DatasetError(
                f"{where}: column 'answer': {answer} is not an index into the "
                f"{len(options)} options {shown(list(options))}"
            )
        return Sample(
            id=str(index),
            question=get_str(row, "question", where),
            images=(get_image(row, "image", where),),
            answers=(option_letters(len(options))[answer],),
            options=options,
        )

    def build_prompt(self, sample: Sample) -> str:
        """Question, lettered options, letter instruction."""
        options = format_options(sample.options, self.prompt_templates["option"])
        return self.prompt_templates["prompt"].format(question=sample.question, options=options)

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """Leading "X." read as X, otherwise the whole output (reasoning blocks removed, trimmed);
        exact match with the letter ignoring case and punctuation."""
        match = _LEADING_LETTER.match(prediction)
        extracted = lmms_eval_output(match.group(1) if match else prediction)
        return SampleScore(exact_match(extracted, sample.answers[0]), extracted)
