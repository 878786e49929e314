"""jsonl: a custom benchmark file, its per-line metrics, and line-numbered errors."""

import json

import pytest

from ov_eval.errors import DatasetError
from ov_eval.tasks import get_task


def write_jsonl(directory, lines, name="samples.jsonl"):
    path = directory / name
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    )
    return path


def test_load_prompts_and_metrics(tmp_path, make_png):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(make_png())
    write_jsonl(
        tmp_path,
        [
            {
                "id": "q1",
                "image": "img/a.png",
                "question": "Color?",
                "answers": ["Red"],
                "metric": "exact_match",
            },
            "",
            {
                "question": "Which animal?",
                "options": ["dog", "cat"],
                "answers": "cat",
                "metric": "choice",
                "images": ["img/a.png", "img/a.png"],
            },
            {"question": "Total?", "answers": ["12"], "metric": "relaxed_accuracy"},
        ],
    )
    task = get_task("jsonl")
    color, animal, total = task.load(tmp_path)
    assert (color.id, animal.id, total.id) == ("q1", "3", "4")  # default id: the line number
    assert color.images == (make_png(),)
    assert len(animal.images) == 2
    assert total.images == ()
    assert animal.answers == ("B",)
    assert task.build_prompt(color) == "Color?"
    assert task.build_prompt(animal) == (
        "Which animal?\nA. dog\nB. cat\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.score(color, " red.").score == 1.0
    assert task.score(animal, "The answer is B").score == 1.0
    assert task.score(total, "12.3").score == 1.0
    scored = [
        (color, task.score(color, "blue")),
        (animal, task.score(animal, "B")),
        (total, task.score(total, "12")),
    ]
    assert task.aggregate(scored) == {
        "score": pytest.approx(2 / 3),
        "score/choice": 1.0,
        "score/exact_match": 0.0,
        "score/relaxed_accuracy": 1.0,
    }


def test_a_jsonl_file_path_also_works_and_limit_applies(tmp_path):
    path = write_jsonl(
        tmp_path,
        [{"question": f"q{i}", "answers": ["a"], "metric": "anls"} for i in range(5)],
        name="custom.jsonl",
    )
    samples = get_task("jsonl").load(path, limit=2)
    assert [s.question for s in samples] == ["q0", "q1"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: "),
        ({"question": "q", "answers": ["a"]}, "line 2: .*metric"),
        ({"question": "q", "answer": ["a"], "metric": "anls"}, "line 2: .*unknown field `answer`"),
        ({"question": "q", "answers": [], "metric": "anls"}, "line 2: 'answers' is empty"),
        ({"question": "q", "answers": ["a"], "metric": "bleu"}, "line 2: unknown metric 'bleu'"),
        ({"question": "q", "answers": ["C"], "metric": "choice"}, "line 2: metric 'choice' needs"),
        (
            {"question": "q", "answers": ["C"], "options": ["x", "y"], "metric": "choice"},
            "line 2: answer 'C' is neither an option letter",
        ),
        (
            {"question": "q", "answers": ["a"], "metric": "vqa_accuracy"},
            "line 2: vqa_accuracy needs",
        ),
        (
            {"question": "q", "answers": ["a"], "metric": "anls", "image": "x.png"},
            "line 2: image .*x.png",
        ),
        (
            {"id": 1, "question": "q", "answers": ["a"], "metric": "anls"},
            "line 2: id '1' already used at .*line 1",
        ),
    ],
)
def test_malformed_lines_are_reported_with_file_and_line(tmp_path, line, message):
    first = {"id": 1, "question": "q", "answers": ["a"], "metric": "anls"}
    path = write_jsonl(tmp_path, [first, line])
    with pytest.raises(DatasetError, match=f"{path}, {message}"):
        get_task("jsonl").load(tmp_path)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"samples\.jsonl: cannot read"):
        get_task("jsonl").load(tmp_path)
