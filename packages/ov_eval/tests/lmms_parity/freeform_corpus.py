"""Free-form parity with lmms-eval 0.7.3: a stress corpus of model outputs, and the reference task.

The corpus (`build_outputs`) is what a model might answer to a question whose gold answers are
given: each answer in many spellings (case, surrounding whitespace and newlines, trailing
punctuation, "The answer is ...", markdown, quotes, fullwidth characters, inner spaces and line
breaks, extra words, near misses a few edits away, at and around ANLS's 0.5 threshold), numbers in
other forms (words, thousands separators, decimals, percentages, units, currency, sign, scientific
notation, within and just outside 5 %), plus outputs unrelated to any answer (empty, whitespace,
refusals, long text, characters whose length changes with case such as "ß" and "İ"). The parity
tests cross every output with every document of the task.

The reference side is lmms-eval's own task object, not a re-implementation: `reference_task`
loads the task's yaml with lmms-eval's loader (`load_yaml_config`, its `!function` tags imported),
builds `lmms_eval.api.task.ConfigurableTask` for the `llava_onevision1_5` model (the model our
prompts follow) with its `download` replaced by an in-memory `datasets.Dataset` of the test's
rows, so prompts (`doc_to_text`, `doc_to_visual`), generation kwargs (`TaskConfig` defaults
included), `process_results` (with the trimming `ConfigurableTask.process_results` applies to
every output) and aggregation are lmms-eval's code paths. Our side reads the same rows through the
task's `parse_row`.

Loaded by the parity tests by file path (pytest runs with --import-mode=importlib), only after
`pytest.importorskip("lmms_eval")`.
"""

import io
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from unittest import mock

from PIL import Image

from ov_eval.rows import RowLocation
from ov_eval.sample import Sample
from ov_eval.tasks.base import Task

LMMS_EVAL_VERSION = "0.7.3"
REFERENCE_MODEL = "llava_onevision1_5"
# lmms-eval's llava_onevision1_5 model: max_new_tokens when the task sets none, and the stop
# string it drops ("\n\n", the TaskConfig default `until`) before generating.
REFERENCE_DEFAULT_MAX_NEW_TOKENS = 128
REFERENCE_DROPPED_STOP = "\n\n"

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NUMBER_WORDS += ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")
_NUMBER_WORDS += ("seventeen", "eighteen", "nineteen", "twenty")
_TENS = {30: "thirty", 40: "forty", 50: "fifty", 100: "one hundred", 1000: "one thousand"}


# --- the corpus -------------------------------------------------------------------------------


def fullwidth(text: str) -> str:
    """`text` with printable ASCII in its fullwidth form ("12" -> "１２") and spaces as U+3000."""
    return "".join(
        "\u3000" if char == " " else chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char
        for char in text
    )


def number_word(value: float) -> str | None:
    """English words for small whole numbers ("fourteen"), else None."""
    if value != int(value):
        return None
    value = int(value)
    if 0 <= value < len(_NUMBER_WORDS):
        return _NUMBER_WORDS[value]
    return _TENS.get(value)


def with_substitutions(text: str, count: int) -> str:
    """`text` with its last `count` characters replaced by '#': exactly `count` edits away."""
    count = max(0, min(count, len(text)))
    return text[: len(text) - count] + "#" * count


def near_misses(answer: str) -> list[str]:
    """Outputs a few edits from `answer`, around ANLS's 0.5 threshold (exactly 0.5 for an even
    length), plus one deletion, one insertion and a dropped first character."""
    half = len(answer) / 2
    counts = {1, int(half) - 1, int(half), round(half + 0.25), int(half) + 1, len(answer)}
    misses = [with_substitutions(answer, count) for count in sorted(counts) if count > 0]
    return [*misses, answer[:-1], answer + answer[-1:], answer[1:], answer[: int(half)]]


def number_variants(answer: str) -> list[str]:
    """Other spellings of `answer` when it is a number (else nothing)."""
    text = answer.replace(",", "")
    percent = text.endswith("%")
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        return []
    whole = value == int(value)
    out = [
        f"{value:,}",
        f"{value:,.2f}",
        f"{value:.1f}",
        f"{value:.2f}",
        f"{value:e}",
        f"{value * 1.04:g}",
        f"{value * 1.05:g}",
        f"{value * 1.0501:g}",
        f"{value * 0.95:g}",
        f"{value * 1.06:g}",
        f"{-value:g}",
        f"+{text}",
        f"{value:g}%",
        f"{value / 100:g}",
        f"{value:g} kg",
        f"${text}",
        f"$ {text}",
        f"about {text}",
        f"{text} million",
        fullwidth(f"{value:g}"),
    ]
    if whole:
        out += [str(int(value)), f"{int(value):,}", f"{int(value)}.0", f"{int(value)}_0"]
    if percent:
        out += [text.rstrip("%"), f"{value} %", f"{value / 100:g}"]
    word = number_word(value)
    if word is not None:
        out += [word, word.capitalize(), f"{word} ({int(value)})", f"The answer is {word}."]
    return out


def answer_variants(answer: str) -> list[str]:
    """Spellings of one gold answer, right and nearly right."""
    a = answer
    out = [
        a,
        a.lower(),
        a.upper(),
        a.title(),
        a.swapcase(),
        f" {a}",
        f"{a} ",
        f"  {a}  ",
        f"\n{a}\n",
        f"{a}\n",
        f"{a}\n\n",
        f"{a}\r\n",
        f"\t{a}",
        f"\u00a0{a}\u00a0",
        f"\u3000{a}",
        f"{a}\u200b",
        f"{a}.",
        f"{a}!",
        f"{a}?",
        f"{a},",
        f"{a}.\n",
        f"{a}\n\nExplanation: it is written in the image.",
        f"The answer is {a}.",
        f"The answer is: {a}",
        f'The answer is "{a}".',
        f"Answer: {a}",
        f"Answer:{a}",
        f"answer: {a.lower()}",
        f"**{a}**",
        f"`{a}`",
        f'"{a}"',
        f"'{a}'",
        f"({a})",
        f"[{a}]",
        f"It is {a} according to the image.",
        f"{a} is the answer",
        f"I think {a}, but I am not sure.",
        fullwidth(a),
        fullwidth(a.upper()),
        a.replace(" ", ""),
        a.replace(" ", "  "),
        a.replace(" ", "\n"),
        a.replace(" ", "\t"),
        " ".join(a),
    ]
    return out + near_misses(a) + number_variants(a)


GENERIC_OUTPUTS = (
    "",
    " ",
    "\n",
    "\n\n",
    "\t",
    "None",
    "none",
    "N/A",
    "unanswerable",
    "I don't know.",
    "I cannot answer this question from the image.",
    "The image shows a document with several paragraphs of text and a table.",
    "Yes",
    "No",
    "yes.",
    "0",
    "1",
    "-1",
    "100%",
    "0.0",
    "1e3",
    "nan",
    "inf",
    "A",
    "B",
    "(B)",
    "B.",
    "[1, 2]",
    "[]",
    "ß",
    "Straße",
    "STRASSE",
    "İstanbul",
    "ﬁne",
    "ＡＢＣ",
    "１２",
    "一二三",
    "☃",
    "x" * 120,
    "word " * 40,
)


def build_outputs(answer_lists: Iterable[Sequence[str]]) -> list[str]:
    """The corpus for documents with these gold answers: every answer's variants plus the
    generic outputs, without repeats, in a fixed order."""
    outputs: dict[str, None] = {}
    for answers in answer_lists:
        for answer in answers:
            outputs.update(dict.fromkeys(answer_variants(answer)))
    outputs.update(dict.fromkeys(GENERIC_OUTPUTS))
    return list(outputs)


# --- the reference task -----------------------------------------------------------------------


def lmms_tasks_dir() -> Path:
    """lmms-eval's `tasks` folder (one subfolder per benchmark: yaml files and utils.py)."""
    import lmms_eval

    return Path(lmms_eval.__file__).parent / "tasks"


def installed_lmms_eval_version() -> str:
    """The installed lmms-eval's version string."""
    from importlib.metadata import version

    return version("lmms_eval")


def image_cell(index: int = 0) -> dict:
    """A Hugging Face `Image` cell holding a tiny PNG whose colour and size depend on `index`."""
    buffer = io.BytesIO()
    colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    Image.new("RGB", (4 + index % 3, 3 + index % 2), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": f"image{index}.png"}


def lmms_doc(row: dict) -> dict:
    """The dataset row as lmms-eval's `datasets` loader hands it over: image cells decoded."""
    return {
        key: Image.open(io.BytesIO(value["bytes"]))
        if isinstance(value, dict) and "bytes" in value
        else value
        for key, value in row.items()
    }


def reference_task(yaml_path: str, rows: Sequence[dict]):
    """lmms-eval's ConfigurableTask for `yaml_path` (relative to its tasks folder) whose test
    split is `rows` (HF column layout, image cells as {"bytes", "path"})."""
    import datasets
    import lmms_eval.api.metrics  # noqa: F401  (registers "mean" & co., as an lmms-eval run has)
    from lmms_eval.api.task import ConfigurableTask
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(lmms_tasks_dir() / yaml_path), mode="full")
    docs = [lmms_doc(row) for row in rows]

    def download(self, dataset_kwargs=None) -> None:
        split = self.config.test_split
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset

    with mock.patch.object(ConfigurableTask, "download", download):
        return ConfigurableTask(config=config, model_name=REFERENCE_MODEL)


def our_samples(task: Task, rows: Sequence[dict]) -> list[Sample]:
    """Our task's samples for the same rows."""
    return [
        task.parse_row(dict(row), RowLocation(Path("parity.parquet"), index), index)
        for index, row in enumerate(rows)
    ]


def score_everything(reference, task: Task, samples: Sequence[Sample], outputs: Sequence[str]):
    """(sample, output, lmms-eval's process_results dict, our SampleScore) for every output on
    every document, documents in order."""
    docs = list(reference.test_docs())
    return [
        (sample, output, reference.process_results(doc, [output]), task.score(sample, output))
        for (doc, sample), output in itertools.product(zip(docs, samples, strict=True), outputs)
    ]


def reference_budget(reference) -> tuple[int, list[str]]:
    """(max_new_tokens, stop strings) that lmms-eval's llava_onevision1_5 model generates with
    for this task: the yaml's generation kwargs after TaskConfig's defaults, "\\n\\n" dropped."""
    kwargs = reference.config.generation_kwargs
    until = kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    stops = [stop for stop in until if stop != REFERENCE_DROPPED_STOP]
    return int(kwargs.get("max_new_tokens", REFERENCE_DEFAULT_MAX_NEW_TOKENS)), stops


def decoded(image: bytes) -> Image.Image:
    """One of our sample's encoded images as an RGB PIL image."""
    return Image.open(io.BytesIO(image)).convert("RGB")


def assert_same_prompts(reference, task: Task, samples: Sequence[Sample]) -> None:
    """lmms-eval's doc_to_text / doc_to_visual equal our build_prompt / images, doc by doc."""
    docs = list(reference.test_docs())
    assert len(docs) == len(samples)
    for doc, sample in zip(docs, samples, strict=True):
        assert reference.doc_to_text(doc) == task.build_prompt(sample), sample.id
        visuals = reference.doc_to_visual(doc)
        assert len(visuals) == len(sample.images), sample.id
        for visual, image in zip(visuals, sample.images, strict=True):
            ours = decoded(image)
            assert (visual.size, visual.tobytes()) == (ours.size, ours.tobytes()), sample.id


def assert_same_budget(reference, task: Task) -> None:
    """The generation budget and stop strings equal the reference's."""
    max_new_tokens, stops = reference_budget(reference)
    assert task.max_new_tokens == max_new_tokens
    assert list(task.stop_strings) == stops
