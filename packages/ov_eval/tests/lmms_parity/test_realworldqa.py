"""`realworldqa` scores, prompts and budgets as lmms-eval 0.7.3's `realworldqa` does."""

from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "realworldqa/realworldqa.yaml"
INSTRUCTION = "Please answer directly with only the letter of the correct option and nothing else."
# (question, answer); multiple-choice questions carry their options as "X. text" lines.
ROWS = [
    (f"Which way is the car facing?\nA. Left\nB. Right\nC. Towards us\n{INSTRUCTION}", "A"),
    (f"  Is the road wet?\nA. Yes\nB. No\n{INSTRUCTION}  \n", "B"),
    (f"What colour is the light?\nA. red\nB. green\nC. amber\nD. off\n{INSTRUCTION}", "D"),
    (f"How far is the sign?\nA. 5 m\nB. 50 m\nC. 500 m\n{INSTRUCTION}", " c "),
    ("How many cars are there? Please answer with a number.", "2"),
    ("Is the road going uphill or downhill? Answer with one word.", "Downhill"),
    ("How many pedestrians are on the crossing?", "0"),
]


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = [
        {"image": image_cell((0, index * 30, 0)), "question": question, "answer": answer}
        for index, (question, answer) in enumerate(ROWS)
    ]
    ours = get_task("realworldqa")
    samples = [
        ours.parse_row(row, RowLocation(Path("test.parquet"), index), index)
        for index, row in enumerate(rows)
    ]
    docs = [lmms_doc(row) for row in rows]
    return ours, samples, docs, lmms.load_task(YAML, docs)


def _outputs(mc_corpus, sample) -> list[str]:
    options = list(sample.options) or ["2", "Downhill", "uphill"]
    extra = ["2.", "2 cars", "two", "Two.", "0", "zero", "downhill", "Downhill.", "DOWNHILL..."]
    return list(dict.fromkeys([*mc_corpus.mc_outputs(options), *extra]))


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
        outputs = _outputs(mc_corpus, sample)
        assert len(outputs) >= 200
        for output in outputs:
            expected = lmms.reference_results(reference, doc, output)["exact_match"]
            actual = ours.score(sample, output).score
            checked += 1
            if actual != expected:
                disagreements.append((sample.id, output, actual, expected))
    assert disagreements == []
    assert checked >= 1400

    for run in mc_corpus.assignments(len(docs), _outputs(mc_corpus, samples[0])):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        values = [
            lmms.reference_results(reference, doc, output)["exact_match"]
            for doc, output in zip(docs, run, strict=True)
        ]
        expected = lmms.aggregate(reference, "exact_match", values, tmp_path)
        assert ours.aggregate(scored)["exact_match"] == pytest.approx(expected, abs=1e-9)
