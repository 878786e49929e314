"""Conversation -> token ids and labels, with image placeholders expanded. No pixels involved.

How labels are found. The chat template is opaque code, so instead of re-implementing it, the
conversation is rendered a second time with every assistant message's content wrapped in unique
markers; where the markers land is where the answers are. The marked render, markers removed,
must equal the plain render (a template that edits assistant content, e.g. strips it, is refused
because labels could not be placed exactly), and each answer must be followed by `<|im_end|>`.
Supervised: each answer and that closing `<|im_end|>`; not the role header
`<|im_start|>assistant\\n`, not the `\\n` after `<|im_end|>`, never an image token.

How text is tokenized. The rendered text is cut at the answer boundaries and each piece is
tokenized on its own. Every other boundary is a special token, where the tokenizer splits anyway;
at the `assistant\\n` -> answer boundary this keeps BPE from merging the header's newline into the
answer, so the prompt tokens of a training sample are exactly the tokens `prompt()` gives for
generation, and the answer tokens are exactly what the model must produce after them.

Images. The template writes one `<|image_pad|>` per image; each is replaced by as many copies as
the image has LLM tokens (patches / merge_size^2, given by the caller), in order of appearance.
Text that already contains a special-token string (`<|im_end|>`, `<|image_pad|>`, ...) would be
parsed as that token and silently break the turn structure or the image count, so it is refused.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from ov_model.chat_template import ChatTemplate, to_template_messages
from ov_model.conversation import Message, TextPart
from ov_model.packing import IGNORE_INDEX
from ov_model.processor_errors import (
    ChatTemplateError,
    ConversationError,
    ImageCountError,
    describe_sample,
)
from ov_model.tokenizer import SPECIAL_TOKEN_STRINGS, TextTokenizer

# Private-use code points: never produced by a template, vanishingly rare in data (and a
# collision is detected, not silently mislabelled).
_OPEN = "\ue000ov-answer-{}\ue001"
_CLOSE = "\ue002ov-answer-{}\ue003"


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids and aligned labels of one conversation (labels all IGNORE_INDEX when the
    encoding was made without labels)."""

    input_ids: list[int]
    labels: list[int]
    image_token_counts: tuple[int, ...]
    """LLM tokens of each image, in order of appearance."""


def check_reserved_text(
    messages: Sequence[Message], reserved: frozenset[str], sample_id: str | int | None
) -> None:
    """Refuse text parts that contain a special-token string."""
    for index, message in enumerate(messages):
        for part in message.parts:
            if not isinstance(part, TextPart):
                continue
            found = sorted(token for token in reserved if token in part.text)
            if found:
                raise ConversationError(
                    f"{describe_sample(sample_id)}, message {index}: the text contains the "
                    f"special token string(s) {', '.join(found)}, which would be read as "
                    f"control tokens",
                    sample_id=sample_id,
                )


def encode_conversation(
    messages: Sequence[Message],
    image_token_counts: Sequence[int],
    *,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    with_labels: bool = True,
    add_generation_prompt: bool = False,
    sample_id: str | int | None = None,
) -> EncodedConversation:
    """Render, tokenize and expand images; labels mark the supervised tokens (see module)."""
    check_reserved_text(messages, tokenizer.special_token_strings, sample_id)
    placeholders = sum(message.num_images for message in messages)
    if placeholders != len(image_token_counts):
        raise ImageCountError(
            placeholders=placeholders, images=len(image_token_counts), sample_id=sample_id
        )
    plain = template.render(
        messages, add_generation_prompt=add_generation_prompt, sample_id=sample_id
    )
    if with_labels:
        pieces = _split_at_answers(messages, plain, template, add_generation_prompt, sample_id)
    else:
        pieces = [(plain, False)]
    segments = tokenizer.encode_segments([text for text, _ in pieces])
    special = tokenizer.special
    input_ids: list[int] = []
    labels: list[int] = []
    counts = tuple(image_token_counts)
    next_image = 0
    vision = (special.vision_start, special.vision_end)
    for segment, (_, supervised) in zip(segments, pieces, strict=True):
        plain_text = special.image_pad not in segment and not (
            supervised and any(token in segment for token in vision)
        )
        if plain_text:  # the common case, without a per-token loop
            input_ids.extend(segment)
            labels.extend(segment if supervised else [IGNORE_INDEX] * len(segment))
            continue
        for token in segment:
            if token == special.image_pad:
                if next_image == len(counts):
                    raise ChatTemplateError(
                        f"{template.origin}: rendered more {SPECIAL_TOKEN_STRINGS['image_pad']} "
                        f"than the {len(counts)} image(s) of {describe_sample(sample_id)}"
                    )
                input_ids.extend([token] * counts[next_image])
                labels.extend([IGNORE_INDEX] * counts[next_image])
                next_image += 1
                continue
            input_ids.append(token)
            labels.append(token if supervised and token not in vision else IGNORE_INDEX)
    if next_image != len(counts):
        raise ChatTemplateError(
            f"{template.origin}: rendered {next_image} {SPECIAL_TOKEN_STRINGS['image_pad']} for "
            f"the {len(counts)} image(s) of {describe_sample(sample_id)}"
        )
    return EncodedConversation(input_ids, labels, counts)


def _split_at_answers(
    messages: Sequence[Message],
    plain: str,
    template: ChatTemplate,
    add_generation_prompt: bool,
    sample_id: str | int | None,
) -> list[tuple[str, bool]]:
    """The rendered text as (piece, supervised) pieces; supervised pieces are the answers, each
    with its closing `<|im_end|>`."""
    answers = [index for index, message in enumerate(messages) if message.role == "assistant"]
    if not answers:
        return [(plain, False)]
    wrap = {index: (_OPEN.format(index), _CLOSE.format(index)) for index in answers}
    marked = template.render_template_messages(
        to_template_messages(messages, wrap),
        add_generation_prompt=add_generation_prompt,
        sample_id=sample_id,
    )
    im_end = SPECIAL_TOKEN_STRINGS["im_end"]
    pieces: list[tuple[str, bool]] = []
    position = 0
    for index in answers:
        open_marker, close_marker = wrap[index]
        for marker in (open_marker, close_marker):
            if marked.count(marker) != 1:
                raise ChatTemplateError(
                    f"{template.origin}: the content of assistant message {index} of "
                    f"{describe_sample(sample_id)} appears {marked.count(marker)} times in the "
                    f"rendered text (expected once), so its labels cannot be placed"
                )
        start = marked.index(open_marker)
        end = marked.index(close_marker)
        if not position <= start < end:
            raise ChatTemplateError(
                f"{template.origin}: assistant messages of {describe_sample(sample_id)} are not "
                f"rendered in order, so their labels cannot be placed"
            )
        after = end + len(close_marker)
        if not marked.startswith(im_end, after):
            raise ChatTemplateError(
                f"{template.origin}: assistant message {index} of {describe_sample(sample_id)} "
                f"is not closed by {im_end} right after its content"
            )
        pieces.append((marked[position:start], False))
        pieces.append((marked[start + len(open_marker) : end] + im_end, True))
        position = after + len(im_end)
    pieces.append((marked[position:], False))
    if "".join(text for text, _ in pieces) != plain:
        raise ChatTemplateError(
            f"{template.origin}: the template changes assistant content while rendering "
            f"{describe_sample(sample_id)} (e.g. strips it), so labels cannot be placed exactly"
        )
    return [(text, supervised) for text, supervised in pieces if text]
