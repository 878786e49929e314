"""jsonl: a custom benchmark file, its per-line metrics, and line-numbered errors."""

import json
import re
from pathlib import Path

import pytest

from ov_eval.errors import DatasetError
from ov_eval.runner import task_data_dir
from ov_eval.tasks import get_task

README = Path(__file__).parents[2] / "README.md"


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
            {"question": "q", "answers": ["a"], "options": ["x"] * 27, "metric": "exact_match"},
            "line 2: 27 options; at most 26",
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


@pytest.mark.parametrize("written", ["../outside.png", "img/../../outside.png", "ABSOLUTE"])
def test_image_paths_cannot_leave_the_folder_of_the_file(tmp_path, make_png, written):
    (tmp_path / "outside.png").write_bytes(make_png())
    folder = tmp_path / "task"
    folder.mkdir()
    if written == "ABSOLUTE":
        written = str(tmp_path / "outside.png")
    line = {"question": "q", "answers": ["a"], "metric": "anls", "image": written}
    path = write_jsonl(folder, [{"question": "q", "answers": ["a"], "metric": "anls"}, line])
    with pytest.raises(DatasetError, match=f"{re.escape(str(path))}, line 2: image .* is outside"):
        get_task("jsonl").load(folder)


def test_image_paths_inside_the_folder_load_even_when_absolute_or_with_dots(tmp_path, make_png):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(make_png())
    lines = [
        {"question": "q", "answers": ["a"], "metric": "anls", "image": written}
        for written in ("img/../img/a.png", str(tmp_path / "img" / "a.png"), "./img/a.png")
    ]
    write_jsonl(tmp_path, lines)
    assert [s.images for s in get_task("jsonl").load(tmp_path)] == [(make_png(),)] * 3


def test_an_undecodable_image_loads_and_fails_its_sample_only(tmp_path):
    from rice_vit import ImageError

    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    line = {"id": "x", "question": "q", "answers": ["a"], "metric": "anls", "image": "bad.png"}
    path = write_jsonl(tmp_path, [line])
    (sample,) = get_task("jsonl").load(tmp_path)
    with pytest.raises(ImageError, match=f"{re.escape(str(path))}, line 1: sample 'x': image 0"):
        sample.open_images()


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DatasetError, match=f"{re.escape(str(path))}: no samples"):
        get_task("jsonl").load(tmp_path)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"samples\.jsonl: cannot read"):
        get_task("jsonl").load(tmp_path)


def readme_format_section() -> tuple[str, list[tuple[str, str]]]:
    """The README's jsonl section and its fenced blocks, as (info string, text) in order."""
    readme = README.read_text(encoding="utf-8")
    start = readme.index("### Your own benchmark: the `jsonl` task")
    section = readme[start : readme.index("\n## ", start)]
    return section, re.findall(r"^```(\w+)\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)


def test_the_readme_example_loads_as_documented(tmp_path, make_png):
    section, blocks = readme_format_section()
    (_, example), (_, prompt) = blocks[0], blocks[1]
    folder = tmp_path / "data" / "jsonl"
    (folder / "images").mkdir(parents=True)
    (folder / "samples.jsonl").write_text(example, encoding="utf-8")
    for line in filter(None, map(str.strip, example.splitlines())):
        fields = json.loads(line)
        for image in fields.get("images") or [fields.get("image")] * ("image" in fields):
            (folder / image).write_bytes(make_png())
    task = get_task("jsonl")
    samples = task.load(task_data_dir(tmp_path / "data", task))
    documented_ids = re.findall(r"`([^`]+)`", re.search(r"sample ids are (.*?) \(", section)[1])
    assert [sample.id for sample in samples] == documented_ids
    by_id = {sample.id: sample for sample in samples}
    assert by_id["30"].answers == ("B",)
    assert len(by_id["30"].images) == 2
    assert task.build_prompt(by_id["shape-1"]) == prompt.rstrip("\n")
    assert {sample.metadata["metric"] for sample in samples} == {
        "exact_match",
        "choice",
        "anls",
        "relaxed_accuracy",
        "vqa_accuracy",
    }


def test_the_readme_bad_line_gives_the_documented_error(tmp_path):
    _, blocks = readme_format_section()
    example, bad_line, error = blocks[0][1], blocks[2][1], blocks[3][1]
    without_image = next(line for line in example.splitlines() if '"image' not in line and line)
    folder = tmp_path / "data" / "jsonl"
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text(without_image + "\n" + bad_line, encoding="utf-8")
    with pytest.raises(DatasetError) as raised:
        get_task("jsonl").load(folder)
    expected = error.strip().replace("data/jsonl/samples.jsonl", str(folder / "samples.jsonl"))
    assert str(raised.value) == expected
