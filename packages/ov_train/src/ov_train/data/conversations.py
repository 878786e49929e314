"""Reading the text side of a raw row: conversations, captions, ids.

Shared by the three ingesters so a conversation means the same thing in every format:

- a conversation is a non-empty list of `{"from": str, "value": str}` objects (LLaVA style);
  other keys of a turn are dropped, a JSON string holding such a list is accepted (some parquet
  exports store conversations that way). Whether the roles and texts make sense is left to the
  processor when the sample is measured (`malformed_conversation`);
- a caption (a webdataset `.txt`, a parquet caption column, a `"caption"` key) becomes a one-turn
  conversation: the user turn `<image>\\n` + `CAPTION_PROMPT`, the assistant turn the caption
  (stripped). The prompt is fixed by default so that the same corpus always gives the same tokens;
  `PrepareConfig.caption_prompt` changes it for a whole job;
- an id is a non-empty string or an integer (written in decimal); without one, the row's source
  reference (`file#row`) is its id.

Every problem raises `RowError` with a short reason text; the ingester turns it into a
`malformed_row` entry of the report.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ov_train.data.raw_sample import IMAGE_PLACEHOLDER

CAPTION_PROMPT = "Write a short caption for the image."
"""What the user asks in the one-turn conversation built from a caption."""


class RowError(ValueError):
    """A raw row's field cannot be read; the message says which field and why."""


def parse_conversation(value: Any) -> tuple[dict[str, str], ...]:
    """A raw `conversations` value -> validated LLaVA turns; RowError if it is not one."""
    if isinstance(value, str | bytes):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError:
            raise RowError("conversations is a string that is not a JSON list") from None
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
        raise RowError(f"conversations must be a list of turns, got {type(value).__name__}")
    if not value:
        raise RowError("conversations is empty")
    turns = []
    for index, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise RowError(f"turn {index} is a {type(turn).__name__}, not an object")
        speaker, text = turn.get("from"), turn.get("value")
        if not isinstance(speaker, str) or not isinstance(text, str):
            raise RowError(f'turn {index} lacks string "from" and "value" fields')
        turns.append({"from": speaker, "value": text})
    return tuple(turns)


def caption_conversation(caption: Any, prompt: str = CAPTION_PROMPT) -> tuple[dict[str, str], ...]:
    """The one-turn conversation `<image>\\n{prompt}` -> caption; RowError if the caption is not
    a non-empty string (bytes must be UTF-8)."""
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            raise RowError("caption is not valid UTF-8") from None
    if not isinstance(caption, str):
        raise RowError(f"caption must be a string, got {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        raise RowError("caption is empty")
    return (
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}"},
        {"from": "gpt", "value": caption},
    )


def parse_id(value: Any, fallback: str) -> str:
    """A raw id -> its string; `fallback` when absent (None); RowError for other types."""
    if value is None:
        return fallback
    if isinstance(value, bool):
        raise RowError(f"id must be a string or an integer, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise RowError(f"id must be a non-empty string or an integer, got {value!r}")


def placeholder_count(conversation: Sequence[Mapping[str, str]]) -> int:
    """How many `<image>` markers the turns hold."""
    return sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversation)
