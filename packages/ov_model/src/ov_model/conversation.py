"""Conversations in one typed form, whichever format they arrive in.

Two formats are in use for the same thing:
- LLaVA style (the training corpora): `[{"from": "human" | "gpt" | "system", "value": str}]`,
  images marked by `<image>` inside the text;
- OpenAI / HF chat style (inference, lmms-eval): `[{"role": "user" | "assistant" | "system",
  "content": str | [{"type": "image"}, {"type": "text", "text": str}, ...]}]`.

Both become a tuple of `Message(role, parts)` where parts are `TextPart`s and `ImagePart`s in
order, so the chat template, the labels and the image count have a single input to reason about.
`<image>` is an image placeholder wherever it appears in text, in either format (string content
or text items): LLaVA data writes it that way, and a literal `<image>` that was meant as text
shows up as an image-count error, never silently. Videos are refused (LLaVA-OV-1.5 trains on
images only). Empty text parts are dropped, so `"<image>"` and `[{"type": "image"}]` are the
same message.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ov_model.processor_errors import ConversationError, describe_sample

IMAGE_PLACEHOLDER = "<image>"

Role = Literal["system", "user", "assistant"]

ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
"""Accepted role spellings (LLaVA's `from` and OpenAI's `role`) -> the role rendered."""


@dataclass(frozen=True, slots=True)
class TextPart:
    """A run of text of a message (never contains `<image>`)."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """The place of one image in a message; images are numbered by order of appearance."""


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class Message:
    """One turn: who speaks and what, text and images in order."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def num_images(self) -> int:
        """How many images this message holds."""
        return sum(isinstance(part, ImagePart) for part in self.parts)


Conversation = Sequence[Mapping[str, Any]] | Sequence[Message]
"""What the processor accepts: LLaVA or OpenAI/HF dicts, or already normalised messages."""


def split_placeholders(text: str) -> list[Part]:
    """Text with `<image>` markers -> text and image parts in order, empty texts dropped."""
    parts: list[Part] = []
    for position, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position:
            parts.append(ImagePart())
        if piece:
            parts.append(TextPart(piece))
    return parts


def normalize_conversation(
    conversation: Conversation, *, sample_id: str | int | None = None
) -> tuple[Message, ...]:
    """Either format (or `Message`s, passed through) -> a tuple of `Message`s. Raises
    `ConversationError` naming the sample and the message for anything it cannot read."""
    if isinstance(conversation, str | bytes | Mapping) or not isinstance(conversation, Sequence):
        raise ConversationError(
            f"{describe_sample(sample_id)}: a conversation is a list of messages, got "
            f"{type(conversation).__name__}",
            sample_id=sample_id,
        )
    if not conversation:
        raise ConversationError(
            f"{describe_sample(sample_id)}: the conversation has no message", sample_id=sample_id
        )
    return tuple(
        _normalize_message(message, index, sample_id) for index, message in enumerate(conversation)
    )


def _normalize_message(message: Any, index: int, sample_id: str | int | None) -> Message:
    where = f"{describe_sample(sample_id)}, message {index}"
    if isinstance(message, Message):
        return message
    if not isinstance(message, Mapping):
        raise ConversationError(
            f"{where}: expected a dict, got {type(message).__name__}", sample_id=sample_id
        )
    if "from" in message and "value" in message:
        speaker, content = message["from"], message["value"]
        if not isinstance(content, str):
            raise ConversationError(
                f"{where}: LLaVA-style 'value' must be a string, got {type(content).__name__}",
                sample_id=sample_id,
            )
    elif "role" in message and "content" in message:
        speaker, content = message["role"], message["content"]
    else:
        raise ConversationError(
            f"{where}: neither LLaVA style ('from', 'value') nor OpenAI style ('role', "
            f"'content'); keys are {sorted(map(str, message))}",
            sample_id=sample_id,
        )
    role = ROLE_NAMES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise ConversationError(
            f"{where}: unknown role {speaker!r}; expected one of {sorted(ROLE_NAMES)}",
            sample_id=sample_id,
        )
    if isinstance(content, str):
        return Message(role, tuple(split_placeholders(content)))
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        parts: list[Part] = []
        for item_index, item in enumerate(content):
            parts.extend(_content_item(item, f"{where}, content item {item_index}", sample_id))
        return Message(role, tuple(parts))
    raise ConversationError(
        f"{where}: 'content' must be a string or a list of items, got {type(content).__name__}",
        sample_id=sample_id,
    )


def _content_item(item: Any, where: str, sample_id: str | int | None) -> list[Part]:
    if not isinstance(item, Mapping):
        raise ConversationError(
            f"{where}: expected a dict, got {type(item).__name__}", sample_id=sample_id
        )
    kind = item.get("type")
    untyped_image = kind is None and ("image" in item or "image_url" in item)
    if kind in ("image", "image_url") or untyped_image:
        return [ImagePart()]
    if kind == "video" or (kind is None and "video" in item):
        raise ConversationError(
            f"{where}: video content is not supported (images only)", sample_id=sample_id
        )
    if kind in ("text", None) and isinstance(item.get("text"), str):
        return split_placeholders(item["text"])
    shown = repr(dict(item))
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    raise ConversationError(
        f"{where}: unsupported content item {shown}; expected {{'type': 'image'}} or "
        f"{{'type': 'text', 'text': str}}",
        sample_id=sample_id,
    )
