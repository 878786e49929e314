"""The synthetic corpus: deterministic files, consistent captions, answers and concepts."""

import hashlib
import json
import random

from ov_train.quickstart import corpus


def _digest(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_writes_identical_files(tmp_path):
    corpus.write_training_corpus(tmp_path / "a", count=20, seed=3)
    corpus.write_training_corpus(tmp_path / "b", count=20, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_answers_captions_and_concepts_describe_the_picture():
    rng = random.Random(0)
    for _ in range(50):
        picture = corpus.random_picture(rng)
        answers = corpus.answers(picture)
        text = corpus.caption(picture)
        assert text.startswith(answers["count"])
        for shape in picture.shapes:
            assert f"{shape.colour} {shape.kind}" in text
        assert set(corpus.picture_concepts(picture)) <= set(corpus.concept_names())
        if len(picture.shapes) == 1:
            assert answers["colour"] in corpus.COLOURS
            assert answers["side"] in corpus.SIDES


def test_rendered_colour_is_the_answered_colour():
    rng = random.Random(1)
    picture = corpus.random_picture(rng, single_shape=True)
    image = corpus.render(picture)
    shape = picture.shapes[0]
    cell_w, cell_h = picture.width / 3, picture.height / 3
    centre = (int((shape.column + 0.5) * cell_w), int((shape.row + 0.6) * cell_h))
    assert image.getpixel(centre) == corpus.COLOURS[shape.colour]


def test_eval_benchmarks_are_ov_eval_jsonl_tasks(tmp_path):
    folders = corpus.write_eval_benchmarks(tmp_path, per_type=5, seed=1)
    assert set(folders) == set(corpus.QUESTION_TYPES)
    from ov_eval.tasks import get_task

    for kind, folder in folders.items():
        samples = get_task("jsonl").load(folder)
        assert len(samples) == 5
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert all(row["question"] == corpus.QUESTIONS[kind] for row in rows)
