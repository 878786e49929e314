"""Exceptions of the text side of ov_model: tokenizer, chat template, conversations, labels.

They split in two families because their callers treat them differently:
- configuration errors (`TokenizerError`, `ChatTemplateError`) mean the processor itself is
  unusable; they name the file and stop a run;
- `SampleError`s mean one sample is unusable (malformed, wrong image count, a bad image, too
  long to keep a supervised token, nothing to supervise); a data pipeline catches
  `SampleError`, reports the `sample_id` and moves on instead of training on a broken or
  loss-free sample.
"""

from ov_model.errors import OVModelError


def describe_sample(sample_id: str | int | None) -> str:
    """How error messages name a sample: `sample 'abc'`, or `sample` when it has no id."""
    return "sample" if sample_id is None else f"sample {sample_id!r}"


class ProcessorError(OVModelError):
    """Base class of the errors the tokenizer, chat template and processor raise."""


class TokenizerError(ProcessorError):
    """A tokenizer file is missing, unreadable, or lacks a required special token."""


class ChatTemplateError(ProcessorError):
    """A chat template cannot be loaded or rendered, or renders conversations in a way labels
    cannot be derived from (the message names the template's file)."""


class SampleError(ProcessorError):
    """One sample cannot be turned into a training example; `sample_id` says which."""

    def __init__(self, message: str, *, sample_id: str | int | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id


class ConversationError(SampleError):
    """A conversation is malformed: unknown format or role, bad content item, reserved text."""


class ImageCountError(ConversationError):
    """The number of images given differs from the number of image placeholders."""

    def __init__(
        self, *, placeholders: int, images: int, sample_id: str | int | None = None
    ) -> None:
        super().__init__(
            f"{describe_sample(sample_id)}: the conversation has {placeholders} image "
            f"placeholder(s) but {images} image(s) were given",
            sample_id=sample_id,
        )
        self.placeholders = placeholders
        self.images = images


class SampleImageError(SampleError):
    """An image of the sample cannot be used (unreadable file, impossible aspect ratio, ...);
    wraps rice_vit's `ImageError` with the sample's name."""


class SampleTooLongError(SampleError):
    """`max_length` is too short to keep any supervised token without cutting an image."""

    def __init__(
        self,
        *,
        length: int,
        max_length: int,
        first_supervised: int,
        sample_id: str | int | None = None,
    ) -> None:
        super().__init__(
            f"{describe_sample(sample_id)}: {length} tokens do not fit max_length={max_length}: "
            f"the first supervised token is at position {first_supervised}, so truncation would "
            f"leave no supervised token",
            sample_id=sample_id,
        )
        self.length = length
        self.max_length = max_length
        self.first_supervised = first_supervised


class NoSupervisedTokensError(SampleError):
    """The conversation has no assistant answer, so it has nothing to train on."""

    def __init__(self, *, sample_id: str | int | None = None) -> None:
        super().__init__(
            f"{describe_sample(sample_id)}: no supervised token (the conversation has no "
            f"assistant message); it would train at loss 0",
            sample_id=sample_id,
        )
