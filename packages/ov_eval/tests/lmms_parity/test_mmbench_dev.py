"""`mmbench_dev` scores as lmms-eval 0.7.3's offline MMBench-EN dev evaluation
(`mmbench_en_dev_static`), prompts and budgets as `mmbench_en_dev`.

`mmbench_en_dev` and `mmbench_en_dev_static` share their YAML template (prompt, generation
budget, `mmbench_process_results`); they differ only in the aggregation: the former asks GPT to
match outputs MMBench's rules cannot read, the latter uses `extract_mcq_answer` there. ov_eval
follows the static one (no network, no randomness): that deliberate difference is the only one.
"""

import warnings
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")


from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "mmbench/mmbench_en_dev.yaml"
STATIC_YAML = "mmbench/mmbench_en_dev_static.yaml"
NAN = float("nan")
# (index, hint, question, A, B, C, D, answer, category, L2-category): question 0 with three
# rotated copies, question 1 (two options) with one, question 2 (a "nan" cell in D, no hint),
# question 3 (an empty hint), and a copy whose main row is absent.
ROWS = [
    (0, "A hint.", "What is shown?", "cat", "dog", "bird", "fish", "B", "perception", "fine"),
    (
        1_000_000,
        "A hint.",
        "What is shown?",
        "dog",
        "bird",
        "fish",
        "cat",
        "A",
        "perception",
        "fine",
    ),
    (
        2_000_000,
        "A hint.",
        "What is shown?",
        "bird",
        "fish",
        "cat",
        "dog",
        "D",
        "perception",
        "fine",
    ),
    (
        3_000_000,
        "A hint.",
        "What is shown?",
        "fish",
        "cat",
        "dog",
        "bird",
        "C",
        "perception",
        "fine",
    ),
    (1, None, "Is it day?", "yes", "no", None, None, "A", "reasoning", "logic"),
    (1_000_001, None, "Is it day?", "no", "yes", None, None, "B", "reasoning", "logic"),
    (2, NAN, "Which colour?", "red", "green", "blue", "nan", "C", "perception", "coarse"),
    (3, "", "How many?", "1", "2", "3", "4", "D", "reasoning", "math"),
    (1_000_005, "x", "Orphan copy?", "up", "down", None, None, "A", "reasoning", "logic"),
]


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = [
        {
            "index": index,
            "question": question,
            "hint": hint,
            "A": a,
            "B": b,
            "C": c,
            "D": d,
            "answer": answer,
            "category": category,
            "L2-category": l2,
            "source": "test",
            "split": "dev",
            "comment": None,
            "image": image_cell((number * 20, 0, 100)),
        }
        for number, (index, hint, question, a, b, c, d, answer, category, l2) in enumerate(ROWS)
    ]
    ours = get_task("mmbench_dev")
    samples = [
        ours.parse_row(row, RowLocation(Path("dev.parquet"), number), number)
        for number, row in enumerate(rows)
    ]
    docs = [lmms_doc(row) for row in rows]
    return ours, samples, docs, lmms.load_task(YAML, docs), lmms.load_task(STATIC_YAML, docs)


def _rows_are_right(evaluator, items: list[dict]) -> list[float]:
    """lmms-eval's static judgement of each row alone: `eval_result` over the rows, each made a
    main row of its own (index k) in a category of its own, so its category rate is its hit."""
    alone = [
        {**item, "index": k, "category": str(k), "L2-category": None}
        for k, item in enumerate(items)
    ]
    with warnings.catch_warnings():  # pandas warnings inside lmms-eval's evaluator
        warnings.simplefilter("ignore")
        _, by_category, _ = evaluator.eval_result(alone, eval_method="static")
    return [by_category[str(k)] for k in range(len(items))]


def _outputs(mc_corpus, sample) -> list[str]:
    extra = ["Failed to obtain answer via API", "Failed to obtain answer via API: B", "banana"]
    return list(dict.fromkeys([*mc_corpus.mc_outputs(sample.options), *extra]))


def test_prompt_and_images_are_lmms_evals(setup, lmms, images_of):
    ours, samples, docs, reference, static = setup
    for sample, doc in zip(samples, docs, strict=True):
        assert ours.build_prompt(sample) == lmms.prompt(reference, doc) == lmms.prompt(static, doc)
        assert images_of(sample.open_images()) == images_of(lmms.visuals(reference, doc))


def test_generation_budget_is_lmms_evals(setup, lmms):
    ours, _, _, reference, static = setup
    kwargs = lmms.generation_kwargs(reference)
    assert kwargs == lmms.generation_kwargs(static)
    assert ours.max_new_tokens == kwargs["max_new_tokens"] == 1024
    assert list(ours.stop_strings) == [stop for stop in kwargs["until"] if stop != "\n\n"]


def test_scores_equal_lmms_evals_on_the_corpus(setup, lmms, mc_corpus):
    from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator

    ours, samples, docs, _, static = setup
    checked = 0
    disagreements = []
    for sample, doc in zip(samples, docs, strict=True):
        outputs = _outputs(mc_corpus, sample)
        assert len(outputs) >= 200
        items = [lmms.reference_results(static, doc, out)["gpt_eval_score"] for out in outputs]
        for output, expected in zip(
            outputs, _rows_are_right(mmbench_evaluator, items), strict=True
        ):
            actual = ours.score(sample, output).score
            checked += 1
            if actual != expected:
                disagreements.append((sample.id, output, actual, expected))
    assert disagreements == []
    assert checked >= 1800


def test_aggregates_equal_lmms_evals(setup, lmms, mc_corpus, tmp_path):
    from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator

    ours, samples, docs, _, static = setup
    outputs = _outputs(mc_corpus, samples[0])
    for run in mc_corpus.assignments(len(docs), outputs, runs=30):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        items = [
            lmms.reference_results(static, doc, output)["gpt_eval_score"]
            for doc, output in zip(docs, run, strict=True)
        ]
        with warnings.catch_warnings():  # pandas warnings inside lmms-eval's evaluator
            warnings.simplefilter("ignore")
            headline = lmms.aggregate(static, "gpt_eval_score", [dict(i) for i in items], tmp_path)
            overall, by_category, by_l2 = mmbench_evaluator.eval_result(
                [dict(i) for i in items], eval_method="static"
            )
        numbers = ours.aggregate(scored)
        assert numbers["circular_accuracy"] * 100 == pytest.approx(headline, abs=1e-9)
        assert numbers["circular_accuracy"] == pytest.approx(overall, abs=1e-9)
        ours_by_category = {k[9:]: v for k, v in numbers.items() if k.startswith("category/")}
        ours_by_l2 = {k[12:]: v for k, v in numbers.items() if k.startswith("l2_category/")}
        assert ours_by_category == pytest.approx(by_category, abs=1e-9)
        assert ours_by_l2 == pytest.approx(by_l2, abs=1e-9)
