"""ocrbench scores as lmms-eval 0.7.3's `ocrbench` task: prompt, budget, every output of the stress
corpus on every document, and the aggregate.

One deliberate difference, in the aggregate only: lmms-eval's `ocrbench_aggregate_accuracy`
divides the number of right items by 1000 whatever the number of items; we divide by the number
of items. The two agree on the full test split (1000 items), which the aggregate test checks;
the partial-run difference is asserted as documented.
"""

import importlib.util
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from ov_eval.tasks import get_task

pytest.importorskip("lmms_eval")

_spec = importlib.util.spec_from_file_location(
    "freeform_corpus", Path(__file__).with_name("freeform_corpus.py")
)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

FULL_SPLIT = 1000
METRIC = "ocrbench_accuracy"
DOCUMENTS = [
    ("IIIT5K", "Regular Text Recognition", ["CHAIR"]),
    ("SVT", "Irregular Text Recognition", ["Straße"]),
    ("HOST", "Digit String Recognition", ["0123456"]),
    ("textVQA", "Scene Text-centric VQA", ["Coca Cola", "coca-cola"]),
    ("docVQA", "Doc-oriented VQA", ["June 1, 1998", "1 June 1998"]),
    ("FUNSD", "Key Information Extraction", ["12,345.67"]),
    ("POIE", "Key Information Extraction", ["ＡＢＣ Ltd", "line one\nline two"]),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["x^{2}+\\frac{1}{2}"]),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["A B\nC"]),
]
ROWS = [
    {
        "dataset": dataset,
        "question": f" what is written in image {index}? \n",
        "question_type": category,
        "answer": answers,
        "image": corpus.image_cell(index),
    }
    for index, (dataset, category, answers) in enumerate(DOCUMENTS)
]
OUTPUTS = corpus.build_outputs(answers for _, _, answers in DOCUMENTS)


@pytest.fixture(scope="module")
def reference():
    return corpus.reference_task("ocrbench/ocrbench.yaml", ROWS)


@pytest.fixture(scope="module")
def task():
    return get_task("ocrbench")


@pytest.fixture(scope="module")
def samples(task):
    return corpus.our_samples(task, ROWS)


@pytest.fixture(scope="module")
def scored(reference, task, samples):
    """(sample, output, lmms-eval's result, our SampleScore) for every output on every
    document."""
    docs = list(reference.test_docs())
    return [
        (
            sample,
            output,
            reference.process_results(doc, [output])[METRIC],
            task.score(sample, output),
        )
        for (doc, sample), output in itertools.product(zip(docs, samples, strict=True), OUTPUTS)
    ]


def reference_aggregate(reference, results, tmp_path) -> float:
    aggregate = reference.aggregation()[METRIC]
    # lmms-eval keeps its per-category counts in a module-level dict that grows with each call;
    # one lmms-eval run calls it once, so start from zero as that run does.
    counts = aggregate.__globals__["OCRBench_score"]
    counts.update(dict.fromkeys(counts, 0))
    return aggregate(results, SimpleNamespace(output_path=str(tmp_path)))


def test_lmms_eval_is_the_pinned_version():
    assert corpus.installed_lmms_eval_version() == corpus.LMMS_EVAL_VERSION


def test_prompts_and_images_are_lmms_evals(reference, task, samples):
    corpus.assert_same_prompts(reference, task, samples)


def test_generation_budget_is_lmms_evals(reference, task):
    corpus.assert_same_budget(reference, task)
    assert task.max_new_tokens == 128


def test_every_output_scores_as_in_lmms_eval(scored):
    assert len(OUTPUTS) >= 200
    disagreements = {
        (sample.id, output): (result["score"], ours.score)
        for sample, output, result, ours in scored
        if float(result["score"]) != ours.score
    }
    assert disagreements == {}
    # The corpus exercises both outcomes on every document.
    for index in range(len(ROWS)):
        outcomes = {ours.score for sample, _, _, ours in scored if sample.id == str(index)}
        assert outcomes == {0.0, 1.0}, index


def test_aggregate_on_the_full_split_size_is_lmms_evals(reference, task, scored, tmp_path):
    full = list(itertools.islice(itertools.cycle(scored), FULL_SPLIT))
    expected = reference_aggregate(reference, [result for _, _, result, _ in full], tmp_path)
    ours = task.aggregate([(sample, score) for sample, _, _, score in full])
    assert ours[METRIC] == pytest.approx(expected, abs=1e-12)
    assert ours["correct"] == expected * FULL_SPLIT


def test_documented_difference_partial_runs_divide_by_their_size(reference, task, scored, tmp_path):
    part = scored[:250]
    expected = reference_aggregate(reference, [result for _, _, result, _ in part], tmp_path)
    ours = task.aggregate([(sample, score) for sample, _, _, score in part])
    assert expected == ours["correct"] / FULL_SPLIT  # lmms-eval: right items / 1000
    assert ours[METRIC] == pytest.approx(ours["correct"] / len(part))  # ours: / items
