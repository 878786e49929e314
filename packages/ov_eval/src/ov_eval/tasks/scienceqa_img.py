"""ScienceQA-IMG test (`scienceqa_img`): science multiple choice with an image, letter match.

Data: `lmms-lab/ScienceQA`, config `ScienceQA-IMG`, split `test` (2,017 questions), files
`ScienceQA-IMG/test-*.parquet`; columns image, question, choices (list), answer (0-based index),
hint (context text, often empty), subject and others. Rows have no id column; a sample's id is its
0-based position in the split. A row without an image gets none (lmms-eval does the same).

Prompt (lmms-eval `scienceqa_img`, default model kwargs, "default" format): "Context: <hint>" and
a newline when the hint is not empty, then the question, a newline, the choices one per line as
"A. text", a newline and "Answer with the option's letter from the given choices directly.".
Generation: up to 16 new tokens, no stop string (the YAML sets no `until`; lmms-eval's default
"\n\n" is dropped by its `llava_onevision1_5` model). lmms-eval 0.7.3 reads the split from
`lmms-lab-encoder/ScienceQA`.

Score (lmms-eval's `sqa_process_results`, the LLaVA rule), on the output as lmms-eval hands it to
that function (`<think>`/`<analysis>` blocks removed and whitespace trimmed, see
`ov_eval.tasks.lmms_output`): right when the output equals the answer's letter ignoring case
("B", "b", " B\n"), or when it starts with an upper-case character and a period and that
character, lower-cased, is the answer's letter ("B. cat"; "b. cat" and "(B)" are wrong).
"""

from types import MappingProxyType

from ov_eval.errors import DatasetError
from ov_eval.metrics import option_letters
from ov_eval.rows import (
    RowLocation,
    get_image,
    get_int,
    get_optional_str,
    get_str,
    get_str_list,
    is_missing,
    shown,
)
from ov_eval.sample import Sample
from ov_eval.tasks.base import SampleScore, Task, format_options
from ov_eval.tasks.lmms_output import lmms_eval_output


class ScienceQAImg(Task):
    """ScienceQA-IMG test split, option letter match."""

    name = "scienceqa_img"
    version = 2
    summary = "ScienceQA-IMG test: science multiple choice with images, option-letter match"
    dataset = "lmms-lab/ScienceQA (config ScienceQA-IMG, split test)"
    data_files = ("ScienceQA-IMG/test-*.parquet", "test-*.parquet")
    columns = ("image", "question", "choices", "answer", "hint")
    optional_columns = ("subject",)
    prompt_templates = MappingProxyType(
        {
            "prompt": "{context}{question}\n{options}\n"
            "Answer with the option's letter from the given choices directly.",
            "context": "Context: {hint}\n",
            "option": "{letter}. {text}",
        }
    )
    pinned_prompt_hash = "c7ff74a04328"
    max_new_tokens = 16
    metric = "exact_match"
    reference = "lmms-eval 0.7.3, task scienceqa_img"

    def parse_row(self, row: dict, where: RowLocation, index: int) -> Sample:
        """A Sample whose answer is the right choice's letter; the hint goes to metadata."""
        choices = get_str_list(row, "choices", where)
        answer = get_int(row, "answer", where)
        if not 0 <= answer < len(choices):
            raise DatasetError(
                f"{where}: column 'answer': {answer} is not an index into the "
                f"{len(choices)} choices {shown(list(choices))}"
            )
        images = () if is_missing(row.get("image")) else (get_image(row, "image", where),)
        return Sample(
            id=str(index),
            question=get_str(row, "question", where),
            images=images,
            answers=(option_letters(len(choices))[answer],),
            options=choices,
            metadata={
                "hint": get_optional_str(row, "hint", where) or "",
                "subject": get_optional_str(row, "subject", where),
            },
        )

    def build_prompt(self, sample: Sample) -> str:
        """Optional context line, question, lettered choices, letter instruction."""
        templates = self.prompt_templates
        hint = sample.metadata["hint"]
        context = templates["context"].format(hint=hint) if hint else ""
        options = format_options(sample.options, templates["option"])
        return templates["prompt"].format(
            context=context, question=sample.question, options=options
        )

    def score(self, sample: Sample, prediction: str) -> SampleScore:
        """The letter ignoring case, or "<upper-case character>." at the start (trimmed output)."""
        target = sample.answers[0].strip().lower()
        predicted = lmms_eval_output(prediction)
        if predicted.lower() == target:
            return SampleScore(1.0, predicted)
        if len(predicted) >= 2 and predicted[0].isupper() and predicted[1] == ".":
            return SampleScore(1.0 if predicted[0].lower() == target else 0.0, predicted[0])
        return SampleScore(0.0, None)
