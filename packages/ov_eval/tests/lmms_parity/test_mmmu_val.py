"""`mmmu_val` scores, prompts and budgets as lmms-eval 0.7.3's `mmmu_val` does.

The one deliberate difference: where MMMU's multiple-choice parser finds no letter and no option
text, lmms-eval picks `random.choice` of the letters (right 1/n of the time, depending on the
global random state); ov_eval counts the item wrong. The test replaces lmms-eval's random pick by
a sentinel that is never right, so the scores must then be equal, and lists every corpus output
that reaches the random pick (RANDOM_PICK below), so the difference stays visible and bounded.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("lmms_eval")

from ov_eval.rows import RowLocation
from ov_eval.tasks import get_task

YAML = "mmmu/mmmu_val.yaml"
RANDOM_REASON = (
    "no bracketed/bare/dotted letter and no option text: lmms-eval picks random.choice of the "
    "letters, ov_eval counts the item wrong"
)
# (id, question, options, answer, question_type, images referenced)
ROWS = [
    (
        "validation_Art_Theory_1",
        "Look at <image 1>. Which style is this?",
        "['Baroque', 'Gothic', 'Cubism', 'Impressionism']",
        "B",
        "multiple-choice",
    ),
    (
        "validation_Physics_2",
        "Compare <image 2> with <image 1>. Which force dominates?",
        "['gravity', 'friction shown in <image 3>', 'magnetism']",
        "C",
        "multiple-choice",
    ),
    (
        "validation_Math_3",
        "<image 1> What is the area of the triangle?",
        "['6', '12', '24', '36', '48']",
        "E",
        "multiple-choice",
    ),
    ("validation_Math_4", "<image 1> What is x?", "[]", "42", "open"),
    ("validation_Biology_5", "What process is shown in <image 1>?", "[]", "photosynthesis", "open"),
    ("validation_Physics_6", "What is the speed in m/s? <image 1>", "[]", "2.5", "open"),
    ("validation_Math_7", "Which variable is on the axis? <image 1>", "[]", "x", "open"),
]
OPEN_OUTPUTS = [
    "42",
    "42.",
    "x = 42",
    "The answer is 42",
    "forty-two",
    "41.999",
    "42.001",
    "4.2e1",
    "1,000",
    "1,000,000 dollars",
    "-2.5",
    "2.50",
    "2.5 m/s",
    "The speed is 2.5 m/s.\nSo the answer is 2.5",
    "Photosynthesis",
    "The process is photosynthesis.",
    "It is respiration. Therefore photosynthesis",
    "x",
    "The variable is x",
    "y = 2x",
    "nan",
    "inf",
    "1_000",
    "Answer: 42\nFinal answer: 43",
    "result = 7",
    "so .",
]


@pytest.fixture(scope="module")
def setup(lmms, lmms_doc, image_cell):
    rows = []
    for number, (sample_id, question, options, answer, question_type) in enumerate(ROWS):
        row = {
            "id": sample_id,
            "question": question,
            "options": options,
            "explanation": "",
            "answer": answer,
            "img_type": "['Diagrams']",
            "topic_difficulty": "Easy",
            "question_type": question_type,
            "subfield": "sub",
        }
        for image in range(1, 8):
            present = image <= 3
            row[f"image_{image}"] = image_cell((number * 30, image * 30, 0)) if present else None
        rows.append(row)
    ours = get_task("mmmu_val")
    samples = [
        ours.parse_row(row, RowLocation(Path("validation.parquet"), number), number)
        for number, row in enumerate(rows)
    ]
    docs = [lmms_doc(row) for row in rows]
    return ours, samples, docs, lmms.load_task(YAML, docs)


@pytest.fixture
def random_picks(monkeypatch):
    """lmms-eval's random letter replaced by a sentinel that is never an answer; the picks made
    are recorded."""
    from lmms_eval.tasks._task_utils import mmmu_mcq_utils

    picks = []

    def choice(letters):
        picks.append(list(letters))
        return "<random letter>"

    monkeypatch.setattr(mmmu_mcq_utils, "random", SimpleNamespace(choice=choice))
    return picks


def _outputs(mc_corpus, sample) -> list[str]:
    options = list(sample.options) or ["42", "photosynthesis", "2.5"]
    return list(dict.fromkeys([*mc_corpus.mc_outputs(options), *OPEN_OUTPUTS]))


def test_prompt_and_images_are_lmms_evals(setup, lmms, images_of):
    ours, samples, docs, reference = setup
    for sample, doc in zip(samples, docs, strict=True):
        assert ours.build_prompt(sample) == lmms.prompt(reference, doc)
        assert images_of(sample.open_images()) == images_of(lmms.visuals(reference, doc))


def test_generation_budget_is_lmms_evals(setup, lmms):
    ours, _, _, reference = setup
    kwargs = lmms.generation_kwargs(reference)
    assert ours.max_new_tokens == kwargs["max_new_tokens"] == 128
    assert list(ours.stop_strings) == [stop for stop in kwargs["until"] if stop != "\n\n"]


def test_scores_equal_lmms_evals_on_the_corpus(setup, lmms, mc_corpus, random_picks):
    ours, samples, docs, reference = setup
    checked = 0
    disagreements = []
    reached_random = set()
    for sample, doc in zip(samples, docs, strict=True):
        outputs = _outputs(mc_corpus, sample)
        assert len(outputs) >= 200
        for output in outputs:
            picks_before = len(random_picks)
            result = lmms.reference_results(reference, doc, output)["mmmu_acc"]
            judge, _ = _evaluate(result)
            ours_result = ours.score(sample, output)
            if len(random_picks) > picks_before:
                reached_random.add(output)
                assert ours_result.extracted is None, output
            checked += 1
            if ours_result.score != judge:
                disagreements.append((sample.id, output, ours_result.score, judge))
    assert disagreements == []
    assert checked >= 1400
    assert reached_random == set(RANDOM_PICK), sorted(reached_random ^ set(RANDOM_PICK))


def _evaluate(result: dict) -> tuple[float, dict]:
    from lmms_eval.tasks.mmmu.utils import evaluate_mmmu

    judge_dict, metrics = evaluate_mmmu([result])
    return (1.0 if judge_dict[result["id"]] == "Correct" else 0.0), metrics


def test_aggregates_equal_lmms_evals(setup, lmms, mc_corpus, random_picks, tmp_path, capsys):
    ours, samples, docs, reference = setup
    outputs = _outputs(mc_corpus, samples[0])
    for run in mc_corpus.assignments(len(docs), outputs):
        scored = [(s, ours.score(s, output)) for s, output in zip(samples, run, strict=True)]
        values = [
            lmms.reference_results(reference, doc, output)["mmmu_acc"]
            for doc, output in zip(docs, run, strict=True)
        ]
        expected = lmms.aggregate(reference, "mmmu_acc", values, tmp_path)
        assert ours.aggregate(scored)["mmmu_acc"] == pytest.approx(expected, abs=1e-12)


# Every corpus output that reaches lmms-eval's random pick on at least one document.
RANDOM_PICK: dict[str, str] = {
    "": RANDOM_REASON,
    "\tD\t": RANDOM_REASON,
    "\tE\t": RANDOM_REASON,
    "\tF\t": RANDOM_REASON,
    "\n": RANDOM_REASON,
    "\n\n": RANDOM_REASON,
    "\nD": RANDOM_REASON,
    "\nE": RANDOM_REASON,
    "\nF": RANDOM_REASON,
    " ": RANDOM_REASON,
    "  D  ": RANDOM_REASON,
    "  E  ": RANDOM_REASON,
    "  F  ": RANDOM_REASON,
    " 12\n": RANDOM_REASON,
    " 24\n": RANDOM_REASON,
    " 36\n": RANDOM_REASON,
    " 48\n": RANDOM_REASON,
    " 6\n": RANDOM_REASON,
    " Baroque\n": RANDOM_REASON,
    " Cubism\n": RANDOM_REASON,
    " D": RANDOM_REASON,
    " E": RANDOM_REASON,
    " F": RANDOM_REASON,
    " Gothic\n": RANDOM_REASON,
    " Impressionism\n": RANDOM_REASON,
    " friction shown in <image 3>\n": RANDOM_REASON,
    " gravity\n": RANDOM_REASON,
    " magnetism\n": RANDOM_REASON,
    '"A"': RANDOM_REASON,
    '"B"': RANDOM_REASON,
    '"C"': RANDOM_REASON,
    '"D"': RANDOM_REASON,
    '"E"': RANDOM_REASON,
    '"F"': RANDOM_REASON,
    "'D'": RANDOM_REASON,
    "'E'": RANDOM_REASON,
    "'F'": RANDOM_REASON,
    "(D)": RANDOM_REASON,
    "(D).": RANDOM_REASON,
    "(E)": RANDOM_REASON,
    "(E).": RANDOM_REASON,
    "(F)": RANDOM_REASON,
    "(F).": RANDOM_REASON,
    "(a)": RANDOM_REASON,
    "(b)": RANDOM_REASON,
    "(c)": RANDOM_REASON,
    "(d)": RANDOM_REASON,
    "(e)": RANDOM_REASON,
    "(f)": RANDOM_REASON,
    "**A**": RANDOM_REASON,
    "**B**": RANDOM_REASON,
    "**C**": RANDOM_REASON,
    "**D**": RANDOM_REASON,
    "**D.**": RANDOM_REASON,
    "**E**": RANDOM_REASON,
    "**E.**": RANDOM_REASON,
    "**F**": RANDOM_REASON,
    "**F.**": RANDOM_REASON,
    "-2.5": RANDOM_REASON,
    ".": RANDOM_REASON,
    "1": RANDOM_REASON,
    "1,000": RANDOM_REASON,
    "1,000,000 dollars": RANDOM_REASON,
    "12": RANDOM_REASON,
    "12.": RANDOM_REASON,
    "1_000": RANDOM_REASON,
    "2": RANDOM_REASON,
    "2.5 m/s": RANDOM_REASON,
    "2.50": RANDOM_REASON,
    "24": RANDOM_REASON,
    "24.": RANDOM_REASON,
    "3": RANDOM_REASON,
    "3.5": RANDOM_REASON,
    "36": RANDOM_REASON,
    "36.": RANDOM_REASON,
    "4.2e1": RANDOM_REASON,
    "41.999": RANDOM_REASON,
    "42": RANDOM_REASON,
    "42.": RANDOM_REASON,
    "42.001": RANDOM_REASON,
    "48": RANDOM_REASON,
    "48.": RANDOM_REASON,
    "50%": RANDOM_REASON,
    "6": RANDOM_REASON,
    "6.": RANDOM_REASON,
    ":D": RANDOM_REASON,
    ":E": RANDOM_REASON,
    ":F": RANDOM_REASON,
    "</think>D": RANDOM_REASON,
    "</think>E": RANDOM_REASON,
    "</think>F": RANDOM_REASON,
    "<analysis>The answer is A</analysis> D": RANDOM_REASON,
    "<analysis>The answer is A</analysis> E": RANDOM_REASON,
    "<analysis>The answer is A</analysis> F": RANDOM_REASON,
    "<think>\nlong thought\n</think>\n\nD.": RANDOM_REASON,
    "<think>\nlong thought\n</think>\n\nE.": RANDOM_REASON,
    "<think>\nlong thought\n</think>\n\nF.": RANDOM_REASON,
    "<think>Maybe A, maybe C.</think>D": RANDOM_REASON,
    "<think>Maybe A, maybe C.</think>E": RANDOM_REASON,
    "<think>Maybe A, maybe C.</think>F": RANDOM_REASON,
    "A\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "A)": RANDOM_REASON,
    "A) 6": RANDOM_REASON,
    "A) Baroque": RANDOM_REASON,
    "A) gravity": RANDOM_REASON,
    "Answer:\n\nD": RANDOM_REASON,
    "Answer: 42\nFinal answer: 43": RANDOM_REASON,
    "Answer: D": RANDOM_REASON,
    "Answer: E": RANDOM_REASON,
    "Answer: F": RANDOM_REASON,
    "Answer:D": RANDOM_REASON,
    "Answer:E": RANDOM_REASON,
    "Answer:F": RANDOM_REASON,
    "B\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "B)": RANDOM_REASON,
    "B) 12": RANDOM_REASON,
    "B) Gothic": RANDOM_REASON,
    "BAROQUE": RANDOM_REASON,
    "Baroque": RANDOM_REASON,
    "Baroque.": RANDOM_REASON,
    "C\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "C)": RANDOM_REASON,
    "C) 24": RANDOM_REASON,
    "C) Cubism": RANDOM_REASON,
    "C) magnetism": RANDOM_REASON,
    "CUBISM": RANDOM_REASON,
    "Cubism": RANDOM_REASON,
    "Cubism.": RANDOM_REASON,
    "D": RANDOM_REASON,
    "D\n": RANDOM_REASON,
    "D\n\n": RANDOM_REASON,
    "D\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "D ": RANDOM_REASON,
    "D - it fits": RANDOM_REASON,
    "D!": RANDOM_REASON,
    "D)": RANDOM_REASON,
    "D) 36": RANDOM_REASON,
    "D) Impressionism": RANDOM_REASON,
    "D,": RANDOM_REASON,
    "D.": RANDOM_REASON,
    "D.\n": RANDOM_REASON,
    "D:": RANDOM_REASON,
    "D;": RANDOM_REASON,
    "D?": RANDOM_REASON,
    "E": RANDOM_REASON,
    "E\n": RANDOM_REASON,
    "E\n\n": RANDOM_REASON,
    "E\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "E ": RANDOM_REASON,
    "E - it fits": RANDOM_REASON,
    "E!": RANDOM_REASON,
    "E)": RANDOM_REASON,
    "E) 48": RANDOM_REASON,
    "E,": RANDOM_REASON,
    "E.": RANDOM_REASON,
    "E.\n": RANDOM_REASON,
    "E:": RANDOM_REASON,
    "E;": RANDOM_REASON,
    "E?": RANDOM_REASON,
    "F": RANDOM_REASON,
    "F\n": RANDOM_REASON,
    "F\n\n": RANDOM_REASON,
    "F\n\nExplanation: the others do not match the image.": RANDOM_REASON,
    "F ": RANDOM_REASON,
    "F - it fits": RANDOM_REASON,
    "F!": RANDOM_REASON,
    "F)": RANDOM_REASON,
    "F,": RANDOM_REASON,
    "F.": RANDOM_REASON,
    "F.\n": RANDOM_REASON,
    "F:": RANDOM_REASON,
    "F;": RANDOM_REASON,
    "F?": RANDOM_REASON,
    "FRICTION SHOWN IN <IMAGE 3>": RANDOM_REASON,
    "Friction Shown In <Image 3>": RANDOM_REASON,
    "GRAVITY": RANDOM_REASON,
    "Gothic": RANDOM_REASON,
    "Gothic.": RANDOM_REASON,
    "Gravity": RANDOM_REASON,
    "I cannot tell from the image.": RANDOM_REASON,
    "I choose D.": RANDOM_REASON,
    "I choose E.": RANDOM_REASON,
    "I choose F.": RANDOM_REASON,
    "I don't know.": RANDOM_REASON,
    "IMPRESSIONISM": RANDOM_REASON,
    "Impressionism": RANDOM_REASON,
    "Impressionism.": RANDOM_REASON,
    "It is respiration. Therefore photosynthesis": RANDOM_REASON,
    "Looking at the image, there are many details to consider: the lighting, the shapes, the colours and the relative positions of the objects. Without more context it is hard to say which option is correct, but overall I lean towards the last one.": RANDOM_REASON,  # noqa: E501
    "MAGNETISM": RANDOM_REASON,
    "Magnetism": RANDOM_REASON,
    "My answer is D": RANDOM_REASON,
    "My answer is E": RANDOM_REASON,
    "My answer is F": RANDOM_REASON,
    "No": RANDOM_REASON,
    "None of the above.": RANDOM_REASON,
    "Option D": RANDOM_REASON,
    "Option E": RANDOM_REASON,
    "Option F": RANDOM_REASON,
    "Photosynthesis": RANDOM_REASON,
    "The answer is (D).": RANDOM_REASON,
    "The answer is (E).": RANDOM_REASON,
    "The answer is (F).": RANDOM_REASON,
    "The answer is 12.": RANDOM_REASON,
    "The answer is 24.": RANDOM_REASON,
    "The answer is 36.": RANDOM_REASON,
    "The answer is 42": RANDOM_REASON,
    "The answer is 48.": RANDOM_REASON,
    "The answer is 6.": RANDOM_REASON,
    "The answer is Baroque.": RANDOM_REASON,
    "The answer is Cubism.": RANDOM_REASON,
    "The answer is D.": RANDOM_REASON,
    "The answer is E.": RANDOM_REASON,
    "The answer is F.": RANDOM_REASON,
    "The answer is Gothic.": RANDOM_REASON,
    "The answer is Impressionism.": RANDOM_REASON,
    "The answer is gravity.": RANDOM_REASON,
    "The answer is magnetism.": RANDOM_REASON,
    "The best answer is E.": RANDOM_REASON,
    "The correct option is D": RANDOM_REASON,
    "The correct option is E": RANDOM_REASON,
    "The correct option is F": RANDOM_REASON,
    "The process is photosynthesis.": RANDOM_REASON,
    "The question asks which option applies. After careful consideration of every option listed, I conclude that option D is the best choice here.": RANDOM_REASON,  # noqa: E501
    "The speed is 2.5 m/s.\nSo the answer is 2.5": RANDOM_REASON,
    "The variable is x": RANDOM_REASON,
    "Two": RANDOM_REASON,
    "Yes": RANDOM_REASON,
    "[A]": RANDOM_REASON,
    "[B]": RANDOM_REASON,
    "[C]": RANDOM_REASON,
    "[D]": RANDOM_REASON,
    "[E]": RANDOM_REASON,
    "[F]": RANDOM_REASON,
    "a": RANDOM_REASON,
    "a.": RANDOM_REASON,
    "a. 6": RANDOM_REASON,
    "a. Baroque": RANDOM_REASON,
    "a. gravity": RANDOM_REASON,
    "answer: a": RANDOM_REASON,
    "answer: b": RANDOM_REASON,
    "answer: c": RANDOM_REASON,
    "answer: d": RANDOM_REASON,
    "answer: e": RANDOM_REASON,
    "answer: f": RANDOM_REASON,
    "b": RANDOM_REASON,
    "b.": RANDOM_REASON,
    "b. 12": RANDOM_REASON,
    "b. Gothic": RANDOM_REASON,
    "baroque": RANDOM_REASON,
    "c": RANDOM_REASON,
    "c.": RANDOM_REASON,
    "c. 24": RANDOM_REASON,
    "c. Cubism": RANDOM_REASON,
    "c. magnetism": RANDOM_REASON,
    "cubism": RANDOM_REASON,
    "d": RANDOM_REASON,
    "d.": RANDOM_REASON,
    "d. 36": RANDOM_REASON,
    "d. Impressionism": RANDOM_REASON,
    "e": RANDOM_REASON,
    "e.": RANDOM_REASON,
    "e. 48": RANDOM_REASON,
    "f": RANDOM_REASON,
    "f.": RANDOM_REASON,
    "forty-two": RANDOM_REASON,
    "friction shown in <image 3>": RANDOM_REASON,
    "friction shown in <image 3>.": RANDOM_REASON,
    "gothic": RANDOM_REASON,
    "gravity": RANDOM_REASON,
    "gravity.": RANDOM_REASON,
    "impressionism": RANDOM_REASON,
    "inf": RANDOM_REASON,
    "magnetism": RANDOM_REASON,
    "magnetism.": RANDOM_REASON,
    "nan": RANDOM_REASON,
    "option a": RANDOM_REASON,
    "option b": RANDOM_REASON,
    "option c": RANDOM_REASON,
    "option d": RANDOM_REASON,
    "option e": RANDOM_REASON,
    "option f": RANDOM_REASON,
    "result = 7": RANDOM_REASON,
    "so .": RANDOM_REASON,
    "the answer is a": RANDOM_REASON,
    "the answer is b": RANDOM_REASON,
    "the answer is c": RANDOM_REASON,
    "the answer is d": RANDOM_REASON,
    "the answer is e": RANDOM_REASON,
    "the answer is f": RANDOM_REASON,
    "two": RANDOM_REASON,
    "x": RANDOM_REASON,
    "x = 42": RANDOM_REASON,
    "y = 2x": RANDOM_REASON,
    "yes": RANDOM_REASON,
    "答案是D": RANDOM_REASON,
    "答案是E": RANDOM_REASON,
    "答案是F": RANDOM_REASON,
    "１２": RANDOM_REASON,
    "Ａ": RANDOM_REASON,
    "Ａ.": RANDOM_REASON,
    "Ｂ": RANDOM_REASON,
    "Ｂ.": RANDOM_REASON,
    "Ｂ．": RANDOM_REASON,
    "Ｃ": RANDOM_REASON,
    "Ｃ.": RANDOM_REASON,
    "Ｄ": RANDOM_REASON,
    "Ｄ.": RANDOM_REASON,
    "Ｅ": RANDOM_REASON,
    "Ｅ.": RANDOM_REASON,
    "Ｆ": RANDOM_REASON,
    "Ｆ.": RANDOM_REASON,
}
