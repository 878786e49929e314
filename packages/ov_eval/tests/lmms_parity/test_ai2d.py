"""`ai2d` scores, prompts and budgets as lmms-eval 0.7.3's `ai2d` does (filter included)."""

from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "ai2d/ai2d.yaml"
# (question, options, answer index as the dataset writes it)
ROWS = [
    ("Which label shows the sun?", ["sun", "moon"], "0"),
    ("What does the arrow point to?", ["root", "stem", "leaf"], "2"),
    ("Which stage comes after the egg?", ["larva", "pupa", "adult", "egg"], "1"),
    ("Which is a producer?", ["grass", "rabbit", "fox", "hawk"], "3"),
]


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = [
        {"question": question, "options": options, "answer": answer, "image": image_cell((9, 9, i))}
        for i, (question, options, answer) in enumerate(ROWS)
    ]
    ours = get_task("ai2d")
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

    for run in mc_corpus.assignments(len(docs), mc_corpus.mc_outputs(["sun", "moon"])):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        values = [
            lmms.reference_results(reference, doc, output)["exact_match"]
            for doc, output in zip(docs, run, strict=True)
        ]
        expected = lmms.aggregate(reference, "exact_match", values, tmp_path)
        assert ours.aggregate(scored)["exact_match"] == pytest.approx(expected, abs=1e-9)
