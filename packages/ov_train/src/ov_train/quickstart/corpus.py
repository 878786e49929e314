"""A synthetic multimodal corpus drawn with Pillow, with questions a tiny model can learn.

Every image is a plain background with one to three shapes (circle, square, triangle) in one of
six colours, at a position on a 3x3 grid; a quarter of the images also carry a rendered word.
Each image comes with

- a caption ("two shapes: a red circle on the left and a blue square in the middle"), for
  Stage-1 (projector alignment) and Stage-1.5 (mid-training);
- question-answer pairs for Stage-2, one per question type: `colour` and `shape` (of the single
  shape of one-shape images), `count` ("how many shapes"), `side` (left/middle/right of a
  one-shape image). Answers are one word, so exact match scores them.

The held-out evaluation set is drawn with a different seed and written as ov_eval `jsonl`
benchmarks, one folder per question type, so accuracy per type comes out of the standard runner.
Chance levels: colour 1/6, shape 1/3, count 1/3, side 1/3.

Everything is a pure function of the seed: the same call writes byte-identical files.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

# Colours follow a long tail in the training corpus (as concepts do in web data); the held-out
# evaluation draws them uniformly, so a model must learn the rare ones too.
COLOUR_WEIGHTS = {"red": 0.34, "green": 0.24, "blue": 0.16, "yellow": 0.12, "purple": 0.08}
COLOUR_WEIGHTS |= {"orange": 0.06}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
SIDES = ("left", "middle", "right")
SIDE_PHRASES = ("on the left", "in the middle", "on the right")
WORDS = ("cat", "sun", "map", "box", "car", "pen")
BACKGROUNDS = ((250, 250, 250), (225, 225, 215), (205, 215, 225))
QUESTION_TYPES = ("colour", "shape", "count", "side")
CHANCE = {"colour": 1 / 6, "shape": 1 / 3, "count": 1 / 3, "side": 1 / 3}
QUESTIONS = {
    "colour": "What colour is the shape? Answer with one word.",
    "shape": "What shape is it? Answer with one word.",
    "count": "How many shapes are there? Answer with one word.",
    "side": "Is the shape on the left, in the middle or on the right? Answer with one word.",
}
CAPTION_PROMPT = "Describe the image."


@dataclass(frozen=True)
class Shape:
    """One drawn shape: kind, colour name and grid cell (column 0-2, row 0-2)."""

    kind: str
    colour: str
    column: int
    row: int


@dataclass(frozen=True)
class Picture:
    """One image's content."""

    shapes: tuple[Shape, ...]
    background: tuple[int, int, int]
    word: str | None
    width: int
    height: int


def random_picture(
    rng: random.Random, *, single_shape: bool = False, long_tail: bool = True
) -> Picture:
    """Draw a picture's content: shapes in distinct grid cells, sometimes a word. Colours follow
    COLOUR_WEIGHTS with `long_tail`, else they are uniform."""
    count = 1 if single_shape else rng.choice((1, 1, 2, 3))
    cells = rng.sample([(c, r) for c in range(3) for r in range(3)], count)
    names = list(COLOURS)
    weights = [COLOUR_WEIGHTS[name] for name in names] if long_tail else None
    shapes = tuple(
        Shape(rng.choice(SHAPES), rng.choices(names, weights)[0], column, row)
        for column, row in sorted(cells)
    )
    word = rng.choice(WORDS) if rng.random() < 0.25 else None
    width, height = rng.choice(((84, 84), (112, 84), (84, 112), (112, 112)))
    return Picture(shapes, rng.choice(BACKGROUNDS), word, width, height)


def render(picture: Picture) -> Image.Image:
    """The picture as an RGB image."""
    image = Image.new("RGB", (picture.width, picture.height), picture.background)
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = picture.width / 3, picture.height / 3
    for shape in picture.shapes:
        x0, y0 = shape.column * cell_w + 4, shape.row * cell_h + 4
        x1, y1 = x0 + cell_w - 8, y0 + cell_h - 8
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    if picture.word is not None:
        draw.text((3, picture.height - 12), picture.word, fill=(20, 20, 20))
    return image


def caption(picture: Picture) -> str:
    """A one-sentence description of every shape (and the word, when there is one)."""
    parts = [f"a {s.colour} {s.kind} {SIDE_PHRASES[s.column]}" for s in picture.shapes]
    count = len(picture.shapes)
    text = f"{COUNT_WORDS[count]} shape{'s' if count > 1 else ''}: " + " and ".join(parts)
    if picture.word is not None:
        text += f", with the word {picture.word}"
    return text + "."


def answers(picture: Picture) -> dict[str, str]:
    """The one-word answer to each question type that applies to this picture."""
    result = {"count": COUNT_WORDS[len(picture.shapes)]}
    if len(picture.shapes) == 1:
        (shape,) = picture.shapes
        result |= {"colour": shape.colour, "shape": shape.kind, "side": SIDES[shape.column]}
    return result


def write_training_corpus(out: Path, *, count: int, seed: int) -> dict[str, Path]:
    """LLaVA-style JSON files (captions; questions) plus their image folder under `out`."""
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    captions, questions, concepts = [], [], {}
    for index in range(count):
        picture = random_picture(rng, single_shape=rng.random() < 0.6)
        name = f"img{index:06d}.png"
        render(picture).save(images / name)
        captions.append(_llava_row(f"cap{index:06d}", name, CAPTION_PROMPT, caption(picture)))
        concepts[f"cap{index:06d}"] = picture_concepts(picture)
        for kind, answer in sorted(answers(picture).items()):
            question_id = f"qa{index:06d}-{kind}"
            questions.append(_llava_row(question_id, name, QUESTIONS[kind], answer))
    paths = {"captions": out / "captions.json", "questions": out / "questions.json"}
    paths["concepts"] = out / "concepts.json"
    paths["concepts"].write_text(json.dumps(concepts, indent=1) + "\n")
    paths["captions"].write_text(json.dumps(captions, indent=1) + "\n")
    paths["questions"].write_text(json.dumps(questions, indent=1) + "\n")
    return paths | {"images": images}


def write_eval_benchmarks(out: Path, *, per_type: int, seed: int) -> dict[str, Path]:
    """One ov_eval `jsonl` benchmark folder per question type, `per_type` questions each."""
    rng = random.Random(seed)
    folders = {}
    for kind in QUESTION_TYPES:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(per_type):
            picture = random_picture(rng, single_shape=kind != "count", long_tail=False)
            name = f"{kind}{index:04d}.png"
            render(picture).save(folder / name)
            row = {"id": f"{kind}-{index:04d}", "question": QUESTIONS[kind], "image": name}
            row |= {"answers": [answers(picture)[kind]], "metric": "exact_match"}
            lines.append(json.dumps(row))
        (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
        folders[kind] = folder
    return folders


def concept_names() -> list[str]:
    """The concept vocabulary of the corpus: every coloured shape, and every word."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"word {w}" for w in WORDS]


def picture_concepts(picture: Picture) -> list[str]:
    """The concepts visible in a picture (a coloured shape may appear more than once)."""
    found = [f"{shape.colour} {shape.kind}" for shape in picture.shapes]
    return found + ([f"word {picture.word}"] if picture.word is not None else [])


def _llava_row(sample_id: str, image: str, question: str, answer: str) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def tokenizer_texts() -> list[str]:
    """Texts covering the corpus' vocabulary, to train the quickstart tokenizer on."""
    words = [*COLOURS, *SHAPES, *COUNT_WORDS.values(), *SIDES, *WORDS]
    return [CAPTION_PROMPT, *QUESTIONS.values(), " ".join(words), "You are a helpful assistant."]
