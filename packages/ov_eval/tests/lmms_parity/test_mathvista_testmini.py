"""mathvista_testmini scores as lmms-eval 0.7.3's `mathvista_testmini_format` task (the
bare-answer variant of its `mathvista_testmini` group), with two deliberate differences:

1. The GPT judge. lmms-eval's `MathVistaEvaluator.extract_answer` reads some outputs itself (empty,
   one of the choices verbatim, `int()`/`float()`-parsable for integer/float answers) and sends
   every other output to a GPT judge. 0.7.3 has no offline path (without OPENAI_API_KEY its task
   module does not import; a failed judge call extracts ""), so ov_eval reads those outputs with
   rules (`extract_by_rules`). The test runs lmms-eval with its judge call
   (`get_chat_response`) answered by those rules and checks that lmms-eval calls it for exactly
   the outputs our `extract_without_judge` leaves to the rules: everything around the judge is
   lmms-eval's code, and the judge boundary is the same.
2. Float precision. The dataset stores `precision` as float64 (1.0, 2.0); lmms-eval passes it to
   `round()` as is, which raises TypeError, so every float answer normalises to None and scores 0.
   We round with int(precision), as MathVista's official code does. With the documents'
   precision given as int, lmms-eval agrees with us on every output; with the dataset's float,
   it disagrees exactly on the outputs listed in FLOAT_PRECISION_DIFFERENCES.
"""

import copy
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from ov_eval.tasks import get_task
from ov_eval.tasks.mathvista_testmini import extract_by_rules, extract_without_judge

pytest.importorskip("lmms_eval")

_spec = importlib.util.spec_from_file_location(
    "freeform_corpus", Path(__file__).with_name("freeform_corpus.py")
)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

YAML = "mathvista/mathvista_testmini_format.yaml"
METRIC = "llm_as_judge_eval"
MULTI, FREE = "multi_choice", "free_form"
# pid, question, choices, unit, precision, answer, question_type, answer_type
DOCUMENTS = [
    (
        "1",
        "What fraction of the shape is blue?",
        ["3/11", "8/11", "6/11", "3/5"],
        None,
        None,
        "8/11",
        MULTI,
        "text",
    ),
    (
        "2",
        "Which perimeter is impossible?",
        ["29", "34", "37", "38"],
        None,
        None,
        "38",
        MULTI,
        "text",
    ),
    ("3", "Is the line straight?", ["Yes", "No"], None, None, "No", MULTI, "text"),
    (
        "4",
        "Which colour is the car?",
        ["red", "dark red", "blue"],
        None,
        None,
        "dark red",
        MULTI,
        "text",
    ),
    ("5", "Which number is missing?", None, None, None, "14", FREE, "integer"),
    ("6", "How much does it cost?", None, "$", None, "1000", FREE, "integer"),
    ("7", "What is the lowest temperature?", None, "°C", None, "-3", FREE, "integer"),
    ("8", "What fraction of the people face the camera?", None, None, 1.0, "0.6", FREE, "float"),
    ("9", "How much money does Luca need?", None, "$", 2.0, "1.45", FREE, "float"),
    ("10", "Between which two years was the peak?", None, None, None, "[2007, 2008]", FREE, "list"),
]
METADATA = {
    "category": "math-targeted-vqa",
    "context": "bar chart",
    "grade": "high school",
    "img_height": 3,
    "img_width": 4,
    "language": "english",
    "skills": ["arithmetic reasoning", "statistical reasoning"],
    "source": "ChartQA",
    "source_type": "VQA",
    "split": "testmini",
    "task": "figure question answering",
}


def rows(int_precision: bool = False) -> list[dict]:
    """The dataset rows (precision as float64, as published; as int when asked)."""
    return [
        {
            "pid": pid,
            "question": question,
            "image": f"images/{pid}.jpg",
            "decoded_image": corpus.image_cell(index),
            "choices": choices,
            "unit": unit,
            "precision": int(precision) if int_precision and precision else precision,
            "answer": answer,
            "question_type": question_type,
            "answer_type": answer_type,
            "metadata": METADATA,
            "query": f"Hint: ...\nQuestion: {question}",
        }
        for index, (
            pid,
            question,
            choices,
            unit,
            precision,
            answer,
            question_type,
            answer_type,
        ) in enumerate(DOCUMENTS)
    ]


def letter_outputs() -> list[str]:
    outputs = []
    for letter, text in zip("ABCD", ["3/11", "8/11", "6/11", "3/5"], strict=True):
        outputs += [letter, letter.lower(), f"({letter})", f"{letter}.", f"{letter})"]
        outputs += [f"Answer: {letter}", f"The answer is {letter}.", f'The answer is "{letter}".']
        outputs += [f"**{letter}**", f"{letter}. {text}", f"({letter}) {text}", f"Option {letter}"]
        outputs += [corpus.fullwidth(letter), f"{letter}\n\nBecause the shape is mostly blue."]
    return [*outputs, "A and B", "I choose D because the others are possible.", "E", "(e)"]


OUTPUTS = list(
    dict.fromkeys(
        corpus.build_outputs(
            [answer, *(choices or [])] for _, _, choices, _, _, answer, _, _ in DOCUMENTS
        )
        + letter_outputs()
        + ["fourteen", "14 apples", "The missing number is 14.", "[2007,2008]", "(2007, 2008)"]
    )
)


class RulesJudge:
    """Stands in for lmms-eval's GPT call: answers with our rules, records who asked and any
    prompt that does not end with the output (no assert here: lmms-eval's process_results
    retries on exceptions, with pauses)."""

    def __init__(self):
        self.sample = None
        self.response = None
        self.calls: set[tuple[str, str]] = set()
        self.unexpected_prompts: list[str] = []

    def __call__(self, prompt, temperature=0, max_tokens=256, n=1, patience=5, sleep_time=0):
        # lmms-eval's prompt ends with the (trimmed) output and "Extracted answer: ".
        if not prompt.endswith(f"\n\n{self.response}\n\nExtracted answer: "):
            self.unexpected_prompts.append(prompt)
        self.calls.add((self.sample.id, self.response))
        return extract_by_rules(self.response, self.sample)


@pytest.fixture(scope="module")
def lmms_mathvista():
    """Reference tasks for the dataset's float precision and for int precision, sharing one
    judge stub. The key only lets lmms-eval's task module import; no request is ever sent:
    the judge call of the (one, imported) MathVistaEvaluator class is replaced."""
    judge = RulesJudge()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "parity-test-no-requests")
        from lmms_eval.tasks.mathvista.mathvista_evals import MathVistaEvaluator

        patch.setattr(MathVistaEvaluator, "get_chat_response", judge)
        yield SimpleNamespace(
            as_published=corpus.reference_task(YAML, rows()),
            int_precision=corpus.reference_task(YAML, rows(int_precision=True)),
            judge=judge,
        )


@pytest.fixture(scope="module")
def task():
    return get_task("mathvista_testmini")


@pytest.fixture(scope="module")
def samples(task):
    return corpus.our_samples(task, rows())


def score_all(reference, judge, task, samples):
    """(sample, output, lmms-eval's result, our SampleScore) for every output on every doc."""
    scored = []
    for doc, sample in zip(reference.test_docs(), samples, strict=True):
        for output in OUTPUTS:
            judge.sample, judge.response = sample, output.strip()
            result = reference.process_results(doc, [output])[METRIC]
            scored.append((sample, output, result, task.score(sample, output)))
    return scored


@pytest.fixture(scope="module")
def scored_int_precision(lmms_mathvista, task, samples):
    lmms_mathvista.judge.calls.clear()
    scored = score_all(lmms_mathvista.int_precision, lmms_mathvista.judge, task, samples)
    return scored, set(lmms_mathvista.judge.calls)


@pytest.fixture(scope="module")
def scored_as_published(lmms_mathvista, task, samples):
    return score_all(lmms_mathvista.as_published, lmms_mathvista.judge, task, samples)


def disagreements(scored) -> dict:
    return {
        (sample.id, output): (result["true_false"], result["prediction"], ours)
        for sample, output, result, ours in scored
        if (float(result["true_false"]), result["prediction"]) != (ours.score, ours.extracted)
    }


def reference_aggregate(reference, scored):
    results = [copy.deepcopy(result) for _, _, result, _ in scored]  # it pops keys
    return reference.aggregation()[METRIC](results, None)


def test_lmms_eval_is_the_pinned_version():
    assert corpus.installed_lmms_eval_version() == corpus.LMMS_EVAL_VERSION


def test_prompts_and_images_are_lmms_evals(lmms_mathvista, task, samples):
    corpus.assert_same_prompts(lmms_mathvista.as_published, task, samples)


def test_generation_budget_is_lmms_evals(lmms_mathvista, task):
    corpus.assert_same_budget(lmms_mathvista.as_published, task)
    assert task.max_new_tokens == 16384


def test_quick_extract_is_off_in_the_reference(lmms_mathvista):
    config = lmms_mathvista.as_published.config.process_results.__globals__["config"]
    assert config["metadata"]["quick_extract"] is False


def test_every_output_scores_as_in_lmms_eval_with_integer_precision(scored_int_precision):
    scored, _ = scored_int_precision
    assert len(OUTPUTS) >= 200
    assert disagreements(scored) == {}
    for sample_id, *_ in DOCUMENTS:
        outcomes = {ours.score for sample, _, _, ours in scored if sample.id == sample_id}
        assert outcomes == {0.0, 1.0}, sample_id


def test_lmms_eval_asks_its_judge_exactly_where_we_use_rules(lmms_mathvista, scored_int_precision):
    scored, judge_calls = scored_int_precision
    ours = {
        (sample.id, output.strip())
        for sample, output, _, _ in scored
        if extract_without_judge(output.strip(), sample) is None
    }
    assert judge_calls == ours
    assert lmms_mathvista.judge.unexpected_prompts == []
    assert 0 < len(ours) < len(scored)


def test_aggregate_is_lmms_evals_with_integer_precision(lmms_mathvista, scored_int_precision, task):
    scored, _ = scored_int_precision
    ours = task.aggregate([(sample, score) for sample, _, _, score in scored])
    assert set(ours) == {"accuracy"}
    # lmms-eval reports a percentage rounded to 2 decimals.
    assert reference_aggregate(lmms_mathvista.int_precision, scored) == round(
        ours["accuracy"] * 100, 2
    )


def test_float_precision_differences_are_exactly_the_documented_ones(scored_as_published):
    float_ids = {pid for pid, *_, answer_type in DOCUMENTS if answer_type == "float"}
    found = disagreements(scored_as_published)
    # Normalised answers differ on every float output (None there) and nowhere else...
    assert {sample_id for sample_id, _ in found} == float_ids
    assert all(normalised is None for _, normalised, _ in found.values())
    # ...and scores differ exactly on the documented outputs: right here, 0 in lmms-eval.
    score_differences = {
        key: (right, ours.score) for key, (right, _, ours) in found.items() if ours.score != right
    }
    assert sorted(score_differences) == sorted(FLOAT_PRECISION_DIFFERENCES)
    assert set(score_differences.values()) == {(False, 1.0)}


def test_aggregate_as_published_misses_exactly_the_documented_items(
    lmms_mathvista, scored_as_published, task
):
    ours = task.aggregate([(sample, score) for sample, _, _, score in scored_as_published])
    right = ours["accuracy"] * len(scored_as_published) - len(FLOAT_PRECISION_DIFFERENCES)
    expected = round(right / len(scored_as_published) * 100, 2)
    assert reference_aggregate(lmms_mathvista.as_published, scored_as_published) == expected


FLOAT_PRECISION_REASON = (
    "lmms-eval 0.7.3 calls round(x, precision) with the dataset's float64 precision, which "
    "raises TypeError: every float answer normalises to None and scores 0; we round with "
    "int(precision) as MathVista's official code does"
)
# (pid, output) -> reason: the outputs right here and 0 in lmms-eval 0.7.3 (all on the float
# documents 8 and 9).
FLOAT_PRECISION_DIFFERENCES: dict[tuple[str, str], str] = {
    ("8", "\t0.6"): FLOAT_PRECISION_REASON,
    ("8", "\n0.6\n"): FLOAT_PRECISION_REASON,
    ("8", "  0.6  "): FLOAT_PRECISION_REASON,
    ("8", " 0.6"): FLOAT_PRECISION_REASON,
    ("8", '"0.6"'): FLOAT_PRECISION_REASON,
    ("8", "$ 0.6"): FLOAT_PRECISION_REASON,
    ("8", "$0.6"): FLOAT_PRECISION_REASON,
    ("8", "'0.6'"): FLOAT_PRECISION_REASON,
    ("8", "(0.6)"): FLOAT_PRECISION_REASON,
    ("8", "**0.6**"): FLOAT_PRECISION_REASON,
    ("8", "+0.6"): FLOAT_PRECISION_REASON,
    ("8", ".6"): FLOAT_PRECISION_REASON,
    ("8", "0.57"): FLOAT_PRECISION_REASON,
    ("8", "0.6"): FLOAT_PRECISION_REASON,
    ("8", "0.6\n"): FLOAT_PRECISION_REASON,
    ("8", "0.6\n\n"): FLOAT_PRECISION_REASON,
    ("8", "0.6\n\nExplanation: it is written in the image."): FLOAT_PRECISION_REASON,
    ("8", "0.6\r\n"): FLOAT_PRECISION_REASON,
    ("8", "0.6 "): FLOAT_PRECISION_REASON,
    ("8", "0.6 is the answer"): FLOAT_PRECISION_REASON,
    ("8", "0.6 kg"): FLOAT_PRECISION_REASON,
    ("8", "0.6 million"): FLOAT_PRECISION_REASON,
    ("8", "0.6!"): FLOAT_PRECISION_REASON,
    ("8", "0.6%"): FLOAT_PRECISION_REASON,
    ("8", "0.6,"): FLOAT_PRECISION_REASON,
    ("8", "0.6."): FLOAT_PRECISION_REASON,
    ("8", "0.6.\n"): FLOAT_PRECISION_REASON,
    ("8", "0.60"): FLOAT_PRECISION_REASON,
    ("8", "0.624"): FLOAT_PRECISION_REASON,
    ("8", "0.63"): FLOAT_PRECISION_REASON,
    ("8", "0.63006"): FLOAT_PRECISION_REASON,
    ("8", "0.636"): FLOAT_PRECISION_REASON,
    ("8", "0.6?"): FLOAT_PRECISION_REASON,
    ("8", "0.6\u200b"): FLOAT_PRECISION_REASON,
    ("8", "6.000000e-01"): FLOAT_PRECISION_REASON,
    ("8", "Answer: 0.6"): FLOAT_PRECISION_REASON,
    ("8", "Answer:0.6"): FLOAT_PRECISION_REASON,
    ("8", "I think 0.6, but I am not sure."): FLOAT_PRECISION_REASON,
    ("8", "It is 0.6 according to the image."): FLOAT_PRECISION_REASON,
    ("8", 'The answer is "0.6".'): FLOAT_PRECISION_REASON,
    ("8", "The answer is 0.6."): FLOAT_PRECISION_REASON,
    ("8", "The answer is: 0.6"): FLOAT_PRECISION_REASON,
    ("8", "[0.6]"): FLOAT_PRECISION_REASON,
    ("8", "`0.6`"): FLOAT_PRECISION_REASON,
    ("8", "about 0.6"): FLOAT_PRECISION_REASON,
    ("8", "answer: 0.6"): FLOAT_PRECISION_REASON,
    ("8", "\xa00.6\xa0"): FLOAT_PRECISION_REASON,
    ("8", "\u30000.6"): FLOAT_PRECISION_REASON,
    ("9", "\t1.45"): FLOAT_PRECISION_REASON,
    ("9", "\n1.45\n"): FLOAT_PRECISION_REASON,
    ("9", "  1.45  "): FLOAT_PRECISION_REASON,
    ("9", " 1.45"): FLOAT_PRECISION_REASON,
    ("9", '"1.45"'): FLOAT_PRECISION_REASON,
    ("9", "$ 1.45"): FLOAT_PRECISION_REASON,
    ("9", "$1.45"): FLOAT_PRECISION_REASON,
    ("9", "'1.45'"): FLOAT_PRECISION_REASON,
    ("9", "(1.45)"): FLOAT_PRECISION_REASON,
    ("9", "**1.45**"): FLOAT_PRECISION_REASON,
    ("9", "+1.45"): FLOAT_PRECISION_REASON,
    ("9", "1.45"): FLOAT_PRECISION_REASON,
    ("9", "1.45\n"): FLOAT_PRECISION_REASON,
    ("9", "1.45\n\n"): FLOAT_PRECISION_REASON,
    ("9", "1.45\n\nExplanation: it is written in the image."): FLOAT_PRECISION_REASON,
    ("9", "1.45\r\n"): FLOAT_PRECISION_REASON,
    ("9", "1.45 "): FLOAT_PRECISION_REASON,
    ("9", "1.45 is the answer"): FLOAT_PRECISION_REASON,
    ("9", "1.45 kg"): FLOAT_PRECISION_REASON,
    ("9", "1.45 million"): FLOAT_PRECISION_REASON,
    ("9", "1.45!"): FLOAT_PRECISION_REASON,
    ("9", "1.45%"): FLOAT_PRECISION_REASON,
    ("9", "1.45,"): FLOAT_PRECISION_REASON,
    ("9", "1.45."): FLOAT_PRECISION_REASON,
    ("9", "1.45.\n"): FLOAT_PRECISION_REASON,
    ("9", "1.450000e+00"): FLOAT_PRECISION_REASON,
    ("9", "1.45?"): FLOAT_PRECISION_REASON,
    ("9", "1.45\u200b"): FLOAT_PRECISION_REASON,
    ("9", "Answer: 1.45"): FLOAT_PRECISION_REASON,
    ("9", "Answer:1.45"): FLOAT_PRECISION_REASON,
    ("9", "I think 1.45, but I am not sure."): FLOAT_PRECISION_REASON,
    ("9", "It is 1.45 according to the image."): FLOAT_PRECISION_REASON,
    ("9", 'The answer is "1.45".'): FLOAT_PRECISION_REASON,
    ("9", "The answer is 1.45."): FLOAT_PRECISION_REASON,
    ("9", "The answer is: 1.45"): FLOAT_PRECISION_REASON,
    ("9", "[1.45]"): FLOAT_PRECISION_REASON,
    ("9", "`1.45`"): FLOAT_PRECISION_REASON,
    ("9", "about 1.45"): FLOAT_PRECISION_REASON,
    ("9", "answer: 1.45"): FLOAT_PRECISION_REASON,
    ("9", "\xa01.45\xa0"): FLOAT_PRECISION_REASON,
    ("9", "\u30001.45"): FLOAT_PRECISION_REASON,
}
