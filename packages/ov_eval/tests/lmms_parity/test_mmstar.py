"""`mmstar` scores, prompts and budgets as lmms-eval 0.7.3's `mmstar` does."""

from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "mmstar/mmstar.yaml"
# (question, answer, category, l2_category)
ROWS = [
    (
        "Which animal is shown?\nOptions: A: cat, B: dog, C: bird, D: fish",
        "A",
        "coarse perception",
        "image scene and topic",
    ),
    (
        "  How many apples are there?\nOptions: A: 1, B: 2, C: 3, D: 4  ",
        "B",
        "fine-grained perception",
        "object counting",
    ),
    (
        "Is the sky blue? Please answer yes or no.\nOptions: A: yes, B: no, C: maybe, D: never",
        "C",
        "coarse perception",
        "image emotion",
    ),
    (
        "What is 2+2?\nOptions: A: 3, B: 5, C: 6, D: 4\n",
        "D",
        "math",
        "numeric commonsense and calculation",
    ),
    (
        "Which part conducts electricity?\nOptions: A: copper, B: wood, C: glass, D: rubber",
        "A",
        "science & technology",
        "electronics & energy & mechanical eng.",
    ),
    (
        "Which object is left of the cup?\nOptions: A: pen, B: book, C: phone, D: key",
        "B",
        "instance reasoning",
        "cross-instance relation reasoning",
    ),
]
OPTIONS = {"A": ["cat", "dog", "bird", "fish"], "B": ["1", "2", "3", "4"]}
CATEGORIES = sorted({row[2] for row in ROWS})


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = [
        {
            "index": index,
            "question": question,
            "image": image_cell((index * 40, 0, 0)),
            "answer": answer,
            "category": category,
            "l2_category": l2_category,
            "meta_info": {"source": "x"},
        }
        for index, (question, answer, category, l2_category) in enumerate(ROWS)
    ]
    ours = get_task("mmstar")
    samples = [
        ours.parse_row(row, RowLocation(Path("mmstar.parquet"), index), index)
        for index, row in enumerate(rows)
    ]
    docs = [lmms_doc(row) for row in rows]
    return ours, samples, docs, lmms.load_task(YAML, docs)


def _option_texts(question: str) -> list[str]:
    options = question.split("Options:")[1].strip()
    return [part.split(":", 1)[1].strip() for part in options.split(", ")]


def test_prompt_and_images_are_lmms_evals(setup, lmms, images_of):
    ours, samples, docs, reference = setup
    for sample, doc in zip(samples, docs, strict=True):
        assert ours.build_prompt(sample) == lmms.prompt(reference, doc)
        assert images_of(sample.open_images()) == images_of(lmms.visuals(reference, doc))


def test_generation_budget_is_lmms_evals(setup, lmms):
    ours, _, _, reference = setup
    kwargs = lmms.generation_kwargs(reference)
    # The YAML sets no max_new_tokens: the model's default applies (128 in llava_onevision1_5).
    assert "max_new_tokens" not in kwargs
    assert ours.max_new_tokens == 128
    assert list(ours.stop_strings) == [stop for stop in kwargs["until"] if stop != "\n\n"]


def test_scores_equal_lmms_evals_on_the_corpus(setup, lmms, mc_corpus):
    ours, samples, docs, reference = setup
    checked = 0
    disagreements = []
    for sample, doc in zip(samples, docs, strict=True):
        outputs = mc_corpus.mc_outputs(_option_texts(sample.question))
        assert len(outputs) >= 200
        for output in outputs:
            result = lmms.reference_results(reference, doc, output)
            expected = result["average"]["score"]
            assert result[doc["category"]]["score"] == expected
            actual = ours.score(sample, output).score
            checked += 1
            if actual != expected:
                disagreements.append((sample.id, output, actual, expected))
    assert disagreements == []
    assert checked >= 1200


def test_aggregates_equal_lmms_evals(setup, lmms, mc_corpus, tmp_path):
    ours, samples, docs, reference = setup
    outputs = mc_corpus.mc_outputs(OPTIONS["A"])
    for run in mc_corpus.assignments(len(docs), outputs):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        results = [
            lmms.reference_results(reference, doc, output)
            for doc, output in zip(docs, run, strict=True)
        ]
        numbers = ours.aggregate(scored)
        for metric in ["average", *CATEGORIES]:
            values = [result[metric] for result in results if metric in result]
            expected = lmms.aggregate(reference, metric, values, tmp_path)
            assert numbers[metric] == pytest.approx(expected, abs=1e-9), metric
