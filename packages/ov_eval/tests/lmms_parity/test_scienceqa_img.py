"""`scienceqa_img` scores, prompts and budgets as lmms-eval 0.7.3's `scienceqa_img` does."""

from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "scienceqa/scienceqa_img.yaml"
CHOICES = [
    (["cat", "dog"], 0, "", (200, 0, 0)),
    (["Paris", "London", "Rome"], 2, "Some context.\nSecond line.", (0, 200, 0)),
    (["1", "2", "3", "4", "5"], 1, "A hint", None),
    (["solid", "liquid", "gas", "plasma"], 3, "", (0, 0, 200)),
]


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = [
        {
            "image": None if color is None else image_cell(color),
            "question": f"Question {index}: which one?",
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "task": "closed choice",
            "grade": "grade5",
            "subject": "natural science",
            "topic": "physics",
            "category": "x",
            "skill": "y",
            "lecture": "",
            "solution": "",
        }
        for index, (choices, answer, hint, color) in enumerate(CHOICES)
    ]
    ours = get_task("scienceqa_img")
    samples = [
        ours.parse_row(row, RowLocation(Path("test.parquet"), index), index)
        for index, row in enumerate(rows)
    ]
    docs = [lmms_doc(row) for row in rows]
    return ours, samples, docs, lmms.load_task(YAML, docs)


def test_prompt_and_images_are_lmms_evals(setup, lmms, images_of):
    ours, samples, docs, reference = setup
    for sample, doc in zip(samples, docs, strict=True):
        assert ours.build_prompt(sample) == lmms.prompt(reference, doc)
        assert images_of(sample.open_images()) == images_of(lmms.visuals(reference, doc))


def test_generation_budget_is_lmms_evals(setup, lmms):
    ours, _, _, reference = setup
    kwargs = lmms.generation_kwargs(reference)
    assert ours.max_new_tokens == kwargs["max_new_tokens"] == 16
    # llava_onevision1_5 drops lmms-eval's default "\n\n" stop; ov_eval does the same.
    assert list(ours.stop_strings) == [stop for stop in kwargs["until"] if stop != "\n\n"]


def test_scores_equal_lmms_evals_on_the_corpus(setup, lmms, mc_corpus, tmp_path):
    ours, samples, docs, reference = setup
    checked = 0
    disagreements = []
    for sample, doc in zip(samples, docs, strict=True):
        outputs = mc_corpus.mc_outputs(sample.options)
        assert len(outputs) >= 200
        for output in outputs:
            expected = lmms.reference_results(reference, doc, output)["exact_match"]
            actual = ours.score(sample, output).score
            checked += 1
            if actual != expected:
                disagreements.append((sample.id, output, actual, expected))
    assert disagreements == []
    assert checked >= 800

    for run in mc_corpus.assignments(len(docs), mc_corpus.mc_outputs(["cat", "dog"])):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        values = [
            lmms.reference_results(reference, doc, output)["exact_match"]
            for doc, output in zip(docs, run, strict=True)
        ]
        expected = lmms.aggregate(reference, "exact_match", values, tmp_path)
        assert ours.aggregate(scored)["exact_match"] == pytest.approx(expected, abs=1e-9)
