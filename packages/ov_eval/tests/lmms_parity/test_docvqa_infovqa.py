"""docvqa_val and infovqa_val score as lmms-eval 0.7.3's `docvqa_val` and `infovqa_val` tasks:
prompt, budget, ANLS of every output of the stress corpus on every document (lmms-eval's generic
generate_until scoring with its `anls` metric, after the trimming every output gets), and the
mean. No deliberate difference. One module for both: the two tasks share prompt and scorer and
differ in their documents and YAML."""

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

from ov_eval.tasks import get_task

pytest.importorskip("lmms_eval")

_spec = importlib.util.spec_from_file_location(
    "freeform_corpus", Path(__file__).with_name("freeform_corpus.py")
)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


@dataclass(frozen=True)
class Case:
    """One of the two tasks: its name, lmms-eval YAML and (questionId, question, answers)."""

    task: str
    yaml: str
    documents: tuple[tuple[str, str, list[str]], ...]

    @cached_property
    def rows(self) -> list[dict]:
        return [
            {
                "questionId": qid,
                "question": question,
                "answers": answers,
                "image": corpus.image_cell(i),
            }
            for i, (qid, question, answers) in enumerate(self.documents)
        ]

    @cached_property
    def outputs(self) -> list[str]:
        return corpus.build_outputs(answers for _, _, answers in self.documents)


CASES = {
    "docvqa_val": Case(
        "docvqa_val",
        "docvqa/docvqa_val.yaml",
        (
            ("49153", "What is the date?", ["June 1, 1998", "1 June 1998"]),
            ("2", "What is the total?", ["$ 50,000", "50,000"]),
            ("3", "Who is the sender? ", ["ITC Limited"]),
            ("4", "How many pages?", ["6"]),
            ("5", "Which street?", ["Straße"]),
            ("6", "What is the rate?", ["0.5%"]),
            ("7", "Which option?", ["A"]),
            ("8", "What is the title?", ["the quick brown fox jumps over the lazy dog"]),
            ("9", "What is the code?", ["ＡＢＣ-12"]),
        ),
    ),
    "infovqa_val": Case(
        "infovqa_val",
        "infovqa/infovqa_val.yaml",
        (
            ("10001", "What share of people use it?", ["25%", "25 %"]),
            ("10002", "How many respondents?", ["2,500", "2500"]),
            ("10003", "Which city is shown?", ["New York City", "NYC"]),
            ("10004", "Is it safe?", ["yes"]),
            ("10005", "What is the population?", ["3.5 million"]),
            ("10006", "What is the first step?", ["wash your hands with soap"]),
            ("10007", "What is the value?", ["-12.5"]),
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def reference(case):
    return corpus.reference_task(case.yaml, case.rows)


@pytest.fixture(scope="module")
def task(case):
    return get_task(case.task)


@pytest.fixture(scope="module")
def samples(case, task):
    return corpus.our_samples(task, case.rows)


@pytest.fixture(scope="module")
def scored(case, reference, task, samples):
    return corpus.score_everything(reference, task, samples, case.outputs)


def test_lmms_eval_is_the_pinned_version():
    assert corpus.installed_lmms_eval_version() == corpus.LMMS_EVAL_VERSION


def test_prompts_and_images_are_lmms_evals(reference, task, samples):
    corpus.assert_same_prompts(reference, task, samples)


def test_generation_budget_is_lmms_evals(reference, task):
    corpus.assert_same_budget(reference, task)
    assert task.max_new_tokens == 32


def test_every_output_scores_as_in_lmms_eval(case, scored):
    assert len(case.outputs) >= 200
    disagreements = {
        (sample.id, output): (result, ours.score)
        for sample, output, result, ours in scored
        if set(result) != {"anls"} or abs(result["anls"] - ours.score) > 1e-12
    }
    assert disagreements == {}
    # Every document sees right, partly right (0.5 <= ANLS < 1) and wrong outputs.
    for sample_id, _, _ in case.documents:
        outcomes = {min(ours.score, 0.5) for sample, _, _, ours in scored if sample.id == sample_id}
        assert outcomes >= {0.0, 0.5}, sample_id


def test_mean_is_lmms_evals(reference, task, scored):
    expected = reference.aggregation()["anls"]([result["anls"] for _, _, result, _ in scored])
    ours = task.aggregate([(sample, score) for sample, _, _, score in scored])
    assert ours == {"anls": pytest.approx(expected, abs=1e-12)}
