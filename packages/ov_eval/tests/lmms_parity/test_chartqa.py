"""chartqa scores as lmms-eval 0.7.3's `chartqa` task: prompt, budget, every output of the stress
corpus on every document (the overall and the split scores), and the three aggregates. No
deliberate difference."""

import importlib.util
import itertools
from pathlib import Path

import pytest

from ov_eval.tasks import get_task

pytest.importorskip("lmms_eval")

_spec = importlib.util.spec_from_file_location(
    "freeform_corpus", Path(__file__).with_name("freeform_corpus.py")
)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

METRICS = ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")
DOCUMENTS = [
    ("human_test", "How many bars are there?", "12"),
    ("augmented_test", "What is the share of Japan?", "0.5"),
    ("human_test", "What percentage voted yes? ", "45%"),
    ("augmented_test", "Is the line increasing?", "Yes"),
    ("human_test", "What is the lowest value?", "0"),
    ("augmented_test", "What is the change in 2019?", "-3.2"),
    ("human_test", "Which party won?", "Democrats"),
    ("augmented_test", "How many units were sold?", "1,000"),
    ("human_test", "In which year was the peak?", "2019"),
    ("augmented_test", "What is the ratio?", "1.25 "),
    ("human_test", "Which country is largest?", "Japan "),  # answers are not trimmed
    ("augmented_test", "What is the share?", "12% "),
]
ROWS = [
    {"type": kind, "question": question, "answer": answer, "image": corpus.image_cell(index)}
    for index, (kind, question, answer) in enumerate(DOCUMENTS)
]
OUTPUTS = corpus.build_outputs([answer] for _, _, answer in DOCUMENTS)


@pytest.fixture(scope="module")
def reference():
    return corpus.reference_task("chartqa/chartqa.yaml", ROWS)


@pytest.fixture(scope="module")
def task():
    return get_task("chartqa")


@pytest.fixture(scope="module")
def samples(task):
    return corpus.our_samples(task, ROWS)


@pytest.fixture(scope="module")
def scored(reference, task, samples):
    """(sample, output, lmms-eval's result dict, our SampleScore) for every output on every
    document."""
    docs = list(reference.test_docs())
    return [
        (sample, output, reference.process_results(doc, [output]), task.score(sample, output))
        for (doc, sample), output in itertools.product(zip(docs, samples, strict=True), OUTPUTS)
    ]


def test_lmms_eval_is_the_pinned_version():
    assert corpus.installed_lmms_eval_version() == corpus.LMMS_EVAL_VERSION


def test_prompts_and_images_are_lmms_evals(reference, task, samples):
    corpus.assert_same_prompts(reference, task, samples)


def test_generation_budget_is_lmms_evals(reference, task):
    corpus.assert_same_budget(reference, task)
    assert task.max_new_tokens == 16


def test_every_output_scores_as_in_lmms_eval(scored):
    assert len(OUTPUTS) >= 200
    disagreements = {}
    for sample, output, result, ours in scored:
        split = "relaxed_human_split" if sample.metadata["type"] == "human_test" else None
        split = split or "relaxed_augmented_split"
        expected = {"relaxed_overall": ours.score, split: ours.score}
        if result != expected:
            disagreements[(sample.id, output)] = (result, ours.score)
    assert disagreements == {}
    for index, (_, _, answer) in enumerate(DOCUMENTS):
        outcomes = {ours.score for sample, _, _, ours in scored if sample.id == str(index)}
        # A text answer with a trailing space can never be matched by a trimmed output, in
        # lmms-eval as here ("1.25 " still parses as a number).
        unwinnable = answer in ("Japan ", "12% ")
        assert outcomes == ({0.0} if unwinnable else {0.0, 1.0}), index


def test_aggregates_are_lmms_evals(reference, task, scored):
    aggregation = reference.aggregation()
    ours = task.aggregate([(sample, score) for sample, _, _, score in scored])
    for metric in METRICS:
        values = [result[metric] for _, _, result, _ in scored if metric in result]
        assert ours[metric] == pytest.approx(aggregation[metric](values), abs=1e-12), metric
    assert set(ours) == set(METRICS)
