"""Fixtures of the data-pipeline tests: a tiny processor, images drawn with Pillow, and a raw
corpus in all three input formats with bad samples of every kind mixed in."""

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from ov_model.processor import OVProcessor
from ov_model.tiny import create_tiny_model
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_parquet import ParquetSource
from ov_train.data.ingest_webdataset import WebDatasetSource
from ov_train.data.prepare_config import PrepareConfig

TEXTS = [
    "What is shown in the image? A red square and a blue circle on a white background.",
    "Write a short caption for the image. Two green triangles next to a yellow star.",
    "How many shapes are there? There are three shapes. Describe both images.",
] * 4
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
MAX_LENGTH = 160


def image_bytes(width: int, height: int, seed: int = 0, format: str = "PNG") -> bytes:
    """A small drawn image (a coloured rectangle and ellipse) encoded as `format`."""
    image = Image.new("RGB", (width, height), (255 - 7 * seed % 256, 255, 255))
    draw = ImageDraw.Draw(image)
    colour = (40 * seed % 256, 90, 200 - 13 * seed % 200)
    draw.rectangle((2, 2, width // 2, height // 2), fill=colour)
    draw.ellipse((width // 3, height // 3, width - 2, height - 2), fill=(200, 30 * seed % 256, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def truncated_png(width: int = 60, height: int = 60) -> bytes:
    """A PNG whose header is intact but whose pixel data is cut short."""
    data = image_bytes(width, height, seed=3)
    return data[: len(data) // 2]


def qa(question: str, answer: str, images: int = 1) -> list[dict[str, str]]:
    """A one-turn LLaVA conversation with `images` placeholders."""
    return [
        {"from": "human", "value": "<image>\n" * images + question},
        {"from": "gpt", "value": answer},
    ]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar of (name, bytes) members, in order."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class RawCorpus:
    """Raw inputs and what prepare must make of them."""

    inputs: tuple
    good: dict[str, tuple[list[dict[str, str]], list[bytes]]] = field(default_factory=dict)
    """id -> (conversation as prepare sees it, image bytes in order)."""
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(id, reason) of every row that must be rejected."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint folder (also a processor folder) with small image settings."""
    folder = tmp_path_factory.mktemp("tiny-model")
    create_tiny_model(
        folder, TEXTS, bpe_vocab_size=320, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    return folder


@pytest.fixture(scope="session")
def processor(tiny_model_dir) -> OVProcessor:
    """The tiny model's processor (images resized to at most 112 x 112 pixels)."""
    return OVProcessor.from_pretrained(tiny_model_dir)


def build_raw_corpus(root: Path) -> RawCorpus:
    """Raw data in all three formats with good and bad samples (see the inline comments)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = RawCorpus(inputs=())
    llava = _llava(root / "llava", corpus)
    webdataset = _webdataset(root / "wds", corpus)
    parquet = _parquet(root / "parquet", corpus)
    captions = _caption_parquet(root / "captions", corpus)
    corpus.inputs = (llava, webdataset, parquet, captions)
    return corpus


def _llava(folder: Path, corpus: RawCorpus) -> LlavaSource:
    images = folder / "images"
    images.mkdir(parents=True)
    rows: list[object] = []

    def add_image(name: str, data: bytes) -> str:
        (images / name).write_bytes(data)
        return name

    for index in range(4):
        data = image_bytes(40 + 13 * index, 50 + 7 * index, seed=index)
        conversation = qa("What is shown in the image?", "A red square. " * (1 + index))
        rows.append(
            {
                "id": f"llava-{index}",
                "image": add_image(f"{index}.png", data),
                "conversations": conversation,
            }
        )
        corpus.good[f"llava-{index}"] = (conversation, [data])
    pair = [image_bytes(70, 40, seed=5), image_bytes(30, 90, seed=6, format="JPEG")]
    conversation = qa("Describe both images.", "Two shapes.", images=2)
    rows.append(
        {
            "id": "llava-pair",
            "image": [add_image("p0.png", pair[0]), add_image("p1.jpg", pair[1])],
            "conversations": conversation,
        }
    )
    corpus.good["llava-pair"] = (conversation, pair)
    text_only = [
        {"from": "human", "value": "How many shapes are there?"},
        {"from": "gpt", "value": "Three."},
    ]
    rows.append({"id": 17, "conversations": text_only})  # integer id, no image
    corpus.good["17"] = (text_only, [])
    ok = qa("What is shown in the image?", "A circle.")
    rows += [
        {"id": "llava-missing", "image": "nope.png", "conversations": ok},
        {"id": "llava-null", "image": None, "conversations": ok},
        {
            "id": "llava-null-item",
            "image": ["0.png", None],
            "conversations": qa("Describe both images.", "x", 2),
        },
        {
            "id": "llava-mismatch",
            "image": "0.png",
            "conversations": qa("Describe both images.", "x", 2),
        },
        {"id": "llava-no-image", "conversations": ok},
        {
            "id": "llava-garbage",
            "image": add_image("garbage.png", b"not an image at all"),
            "conversations": ok,
        },
        {
            "id": "llava-truncated",
            "image": add_image("cut.png", truncated_png()),
            "conversations": ok,
        },
        {"id": "llava-no-answer", "image": "0.png", "conversations": ok[:1]},
        {
            "id": "llava-robot",
            "image": "0.png",
            "conversations": [ok[0], {"from": "robot", "value": "beep"}],
        },
        {
            "id": "llava-long",
            "image": "0.png",
            "conversations": qa("What is shown?", "A red square. " * 80),
        },
        {"id": "llava-no-conversations", "image": "0.png"},
        42,
        {"id": "llava-0", "image": "1.png", "conversations": ok},  # duplicate id
    ]
    corpus.bad += [
        ("llava-missing", "missing_file"),
        ("llava-null", "none_image"),
        ("llava-null-item", "none_image"),
        ("llava-mismatch", "image_count_mismatch"),
        ("llava-no-image", "image_count_mismatch"),
        ("llava-garbage", "undecodable_image"),
        ("llava-truncated", "undecodable_image"),
        ("llava-no-answer", "no_supervised_tokens"),
        ("llava-robot", "malformed_conversation"),
        ("llava-long", "too_long"),
        ("llava-no-conversations", "malformed_row"),
        (f"{folder / 'data.json'}#{len(rows) - 2}", "malformed_row"),
        ("llava-0", "duplicate_id"),
    ]
    (folder / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    return LlavaSource(folder / "data.json", images)


def _webdataset(folder: Path, corpus: RawCorpus) -> WebDatasetSource:
    folder.mkdir(parents=True)
    first: list[tuple[str, bytes]] = []
    for index in range(3):
        data = image_bytes(60, 30 + 11 * index, seed=10 + index, format="JPEG")
        conversation = qa("What is shown in the image?", "A blue circle. " * (index + 1))
        first += [
            (f"wds-{index}.jpg", data),
            (f"wds-{index}.json", json.dumps({"conversations": conversation}).encode()),
        ]
        corpus.good[f"wds-{index}"] = (conversation, [data])
    caption_image = image_bytes(45, 45, seed=20)
    first += [("wds-caption.png", caption_image), ("wds-caption.txt", b"  Two green triangles.\n")]
    corpus.good["wds-caption"] = (
        [
            {"from": "human", "value": "<image>\nWrite a short caption for the image."},
            {"from": "gpt", "value": "Two green triangles."},
        ],
        [caption_image],
    )
    # Members written out of natural order: img10 after img2 must still come second.
    many = [image_bytes(30, 30, seed=30), image_bytes(40, 30, seed=31)]
    conversation = qa("Describe both images.", "Two images.", images=2)
    first += [
        ("dir/wds-multi.img10.png", many[1]),
        ("dir/wds-multi.img2.png", many[0]),
        ("dir/wds-multi.json", json.dumps({"conversations": conversation}).encode()),
    ]
    corpus.good["dir/wds-multi"] = (conversation, many)
    second = [
        ("wds-garbage.jpg", b"\xff\xd8 broken"),
        ("wds-garbage.txt", b"a caption"),
        ("wds-no-text.jpg", image_bytes(30, 30)),
        ("wds-bad-json.jpg", image_bytes(30, 30)),
        ("wds-bad-json.json", b"{not json"),
        ("wds-two-for-caption.0.png", image_bytes(30, 30)),
        ("wds-two-for-caption.1.png", image_bytes(30, 30)),
        ("wds-two-for-caption.txt", b"one caption, two images"),
        ("wds-empty-caption.png", image_bytes(30, 30)),
        ("wds-empty-caption.txt", b"   "),
        ("wds-0.png", image_bytes(30, 30)),
        ("wds-0.txt", b"duplicate key across tars"),
    ]
    corpus.bad += [
        ("wds-garbage", "undecodable_image"),
        ("wds-no-text", "malformed_row"),
        ("wds-bad-json", "malformed_row"),
        ("wds-two-for-caption", "image_count_mismatch"),
        ("wds-empty-caption", "malformed_row"),
        ("wds-0", "duplicate_id"),
    ]
    write_tar(folder / "part-000.tar", first)
    write_tar(folder / "part-001.tar", second)
    return WebDatasetSource(folder)


def _parquet(folder: Path, corpus: RawCorpus) -> ParquetSource:
    folder.mkdir(parents=True)
    side = image_bytes(50, 80, seed=40)
    (folder / "side.png").write_bytes(side)
    good = image_bytes(84, 56, seed=41, format="WEBP")
    ok = qa("What is shown in the image?", "A yellow star.")
    text_only = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]
    rows = [
        ("pq-bytes", {"bytes": good, "path": "ignored.webp"}, ok),
        ("pq-path", {"bytes": None, "path": "side.png"}, ok),
        ("pq-text", None, text_only),
        ("pq-null", None, ok),
        ("pq-null-struct", {"bytes": None, "path": None}, ok),
        ("pq-garbage", {"bytes": b"garbage", "path": None}, ok),
        ("pq-missing", {"bytes": None, "path": "missing.png"}, ok),
    ]
    corpus.good["pq-bytes"] = (ok, [good])
    corpus.good["pq-path"] = (ok, [side])
    corpus.good["pq-text"] = (text_only, [])
    corpus.bad += [
        ("pq-null", "none_image"),
        ("pq-null-struct", "none_image"),
        ("pq-garbage", "undecodable_image"),
        ("pq-missing", "missing_file"),
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    turn_type = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    table = pa.table(
        {
            "id": pa.array([row[0] for row in rows], pa.string()),
            "image": pa.array([row[1] for row in rows], image_type),
            "conversations": pa.array([row[2] for row in rows], turn_type),
        }
    )
    pq.write_table(table, folder / "train.parquet")
    return ParquetSource(folder)


def _caption_parquet(folder: Path, corpus: RawCorpus) -> ParquetSource:
    folder.mkdir(parents=True)
    path = folder / "captions.parquet"
    data = image_bytes(64, 64, seed=50, format="JPEG")
    table = pa.table(
        {
            "image": pa.array([data, data, None], pa.binary()),
            "caption": pa.array(["A red ball.", None, "No image."], pa.string()),
        }
    )
    pq.write_table(table, path)
    corpus.good[f"{path}#0"] = (
        [
            {"from": "human", "value": "<image>\nWrite a short caption for the image."},
            {"from": "gpt", "value": "A red ball."},
        ],
        [data],
    )
    corpus.bad += [(f"{path}#1", "malformed_row"), (f"{path}#2", "none_image")]
    return ParquetSource(path)


@pytest.fixture
def raw_corpus(tmp_path) -> RawCorpus:
    """A fresh raw corpus in `tmp_path/raw` (see `build_raw_corpus`)."""
    return build_raw_corpus(tmp_path / "raw")


@pytest.fixture(scope="session")
def config_for() -> Callable[..., PrepareConfig]:
    """PrepareConfig with the tests' defaults (small max_length, no progress bars, measuring in
    this process: a spawned worker costs seconds of imports, tested where it matters)."""

    def make(inputs: tuple, out_dir: Path, **overrides: object) -> PrepareConfig:
        settings: dict[str, object] = {"max_length": MAX_LENGTH, "progress": False, "workers": 1}
        settings.update(overrides)
        return PrepareConfig(inputs=inputs, out_dir=out_dir, **settings)

    return make
