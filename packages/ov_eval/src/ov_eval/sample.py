"""`Sample`: one benchmark item as every task hands it to the runner, whatever its source format.

A task's loader turns a dataset row into a Sample; the task then builds the prompt from it and
scores the model's answer against it. Keeping one shape for every benchmark lets the runner,
the predictions file and the tests treat all tasks alike.

Images stay as the encoded bytes found in the dataset (PNG/JPEG...), not decoded pixels: a
benchmark of a few thousand document scans is a few GB encoded and ten times that decoded, and the
model's processor resizes them anyway. `open_images` decodes on demand with rice_vit's decoder
(the pixel limit, bomb guard and truncation check the model's processor applies to files),
converting to RGB as lmms-eval's `doc_to_visual` functions do.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from PIL import Image

from rice_vit import decode_image


@dataclass(frozen=True, slots=True)
class Sample:
    """One benchmark item.

    - `id`: unique within the task; stable across runs (the runner resumes by it).
    - `question`: the question as the dataset gives it (the task builds the prompt from it).
    - `images`: encoded image files, in the order the model sees them.
    - `answers`: the reference answer(s): for multiple choice, the correct option's letter.
    - `options`: option texts, labelled A, B, C... (empty when the item is not multiple choice).
    - `metadata`: whatever else the task needs to build its prompt or its per-category scores.
    - `source`: where the sample was read from ("file, row 3"), for error messages; set by the
      loader, not compared (two samples with the same content are equal wherever they came from).
    """

    id: str
    question: str
    images: tuple[bytes, ...]
    answers: tuple[str, ...]
    options: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"sample id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.question, str):
            raise TypeError(f"sample {self.id}: question must be a string")
        for name in ("images", "answers", "options"):
            if not isinstance(getattr(self, name), tuple):
                raise TypeError(f"sample {self.id}: {name} must be a tuple")
        if not all(isinstance(image, bytes) and image for image in self.images):
            raise TypeError(f"sample {self.id}: images must be non-empty bytes")
        if not all(isinstance(text, str) for text in self.answers + self.options):
            raise TypeError(f"sample {self.id}: answers and options must be strings")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def name(self) -> str:
        """How error messages name this sample: its source (when known) and its id."""
        return f"{self.source}: sample {self.id!r}" if self.source else f"sample {self.id!r}"

    def open_images(self) -> list[Image.Image]:
        """Decode the images and convert them to RGB; rice_vit's ImageError (a ValueError)
        names the sample (with its source) and the image when one cannot be decoded."""
        return [
            decode_image(image, mode="RGB", name=f"{self.name}: image {position}")
            for position, image in enumerate(self.images)
        ]
