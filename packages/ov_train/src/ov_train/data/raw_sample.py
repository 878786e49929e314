"""The one form every ingester produces: a `RawSample`, or a `BadSample` saying why not.

Three raw formats (LLaVA JSON + image folder, webdataset tars, HF parquet) describe the same thing:
an id, a LLaVA-style conversation (`[{"from": "human" | "gpt" | "system", "value": str}]`, images
marked by `<image>` in the text) and the images it refers to. Ingesters turn each row into that
common form and nothing more: they do not open images or count tokens, so a format's quirks stay
in its own file and every later step (measuring, packing, writing) is written once.

Nothing is dropped silently. A row an ingester cannot read becomes a `BadSample` with a `Reason`
and a human-readable detail; later steps add their own reasons (an image that does not decode, a
sample too long). Every one ends up in the manifest and the report, listed by sample id. A file
that cannot be read on (truncated, not JSON, a corrupt parquet row group or tar) is not a
sample: it is a `SourceFileError` that stops the job, naming the file and the position.

Images stay encoded: `bytes` as found in a tar or a parquet cell, or a `Path` to a file (LLaVA
folders, parquet cells that hold only a path), read when the sample is measured. `None` marks an
image the data says exists but that has no content (a null cell, a null list item); it is
reported as `none_image` instead of turning into an image-count error further down.
"""

import enum
from dataclasses import dataclass
from pathlib import Path

IMAGE_PLACEHOLDER = "<image>"

ImageRef = bytes | Path | None
"""An encoded image, a file holding one, or None for an image the row lists without content."""


class Reason(enum.StrEnum):
    """Why a sample is not packed. The values are what manifests and reports show."""

    MALFORMED_ROW = "malformed_row"
    """The row cannot be read: not an object, no usable conversation or caption, bad id type."""
    MALFORMED_CONVERSATION = "malformed_conversation"
    """The processor refuses the conversation (unknown role, reserved token text, ...)."""
    MISSING_FILE = "missing_file"
    """An image path does not exist."""
    NONE_IMAGE = "none_image"
    """An image is null: the row says it has an image but gives no bytes and no path."""
    UNDECODABLE_IMAGE = "undecodable_image"
    """An image's bytes are not an image PIL can read (or, with verification, fully decode)."""
    UNUSABLE_IMAGE = "unusable_image"
    """A readable image the processor cannot use: too many pixels, impossible aspect ratio."""
    IMAGE_COUNT_MISMATCH = "image_count_mismatch"
    """More or fewer images than `<image>` placeholders."""
    NO_SUPERVISED_TOKENS = "no_supervised_tokens"
    """No assistant answer: the sample would train at loss 0."""
    TOO_LONG = "too_long"
    """More tokens than `max_length` (or not truncatable without losing every supervised token)."""
    DUPLICATE_ID = "duplicate_id"
    """An id seen before in the inputs; the first occurrence is kept."""
    OVER_CAPACITY = "tokens_over_capacity"
    """The packer rejected it: more tokens than the bin capacity."""
    OVER_PATCH_CAPACITY = "patches_over_capacity"
    """The packer rejected it: more ViT patches than the patch capacity."""


@dataclass(frozen=True, slots=True)
class RawSample:
    """One ingested sample, not yet measured. `source` says where it came from (for reports)."""

    id: str
    conversation: tuple[dict[str, str], ...]
    """LLaVA-style turns, each exactly {"from": str, "value": str}."""
    images: tuple[ImageRef, ...]
    """In placeholder order."""
    source: str
    """`file#row` or `tar:key`: enough to find the raw row again."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"{self.source}: a sample id must be a non-empty string")
        for index, turn in enumerate(self.conversation):
            if (
                not isinstance(turn, dict)
                or set(turn) != {"from", "value"}
                or not all(isinstance(value, str) for value in turn.values())
            ):
                raise ValueError(
                    f"{self.source}: sample {self.id!r}, turn {index} is not "
                    f'{{"from": str, "value": str}}: {turn!r}'
                )
        for index, image in enumerate(self.images):
            if image is not None and not isinstance(image, bytes | Path):
                raise ValueError(
                    f"{self.source}: sample {self.id!r}, image {index} is a "
                    f"{type(image).__name__}, expected bytes, a Path or None"
                )


@dataclass(frozen=True, slots=True)
class BadSample:
    """A sample that will not be trained on, and why."""

    id: str
    source: str
    reason: Reason
    detail: str


IngestResult = RawSample | BadSample
