"""The OpenAI Chat Completions request and response bodies, as pydantic models.

Only the part of the API a LLaVA-OV checkpoint can honour is modelled: messages with system
(or developer), user and assistant roles; content as a string or a list of `text` and
`image_url` parts (images in user messages only, as OpenAI's own API has it); the sampling
fields `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n` (only
1) and `stream` with `stream_options.include_usage`. Every model refuses fields it does not
know (`extra="forbid"`): a client that sends `logprobs` or `tools` gets a 400 naming the field
instead of an answer that silently ignored it. Defaults follow OpenAI's (temperature 1, top_p 1).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    """A `{"type": "text", "text": ...}` content part."""

    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    """Where an image is: a `data:` URL, or a local path (file:// or plain) under --image-root."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None
    """Accepted for compatibility; the processor's own resize rules decide the resolution."""


class ImageContent(_Strict):
    """A `{"type": "image_url", "image_url": {"url": ...}}` content part."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class ChatMessage(_Strict):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    """Accepted for compatibility; the chat template has no place for it."""

    @model_validator(mode="after")
    def _images_only_from_the_user(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if (
            self.role != "user"
            and isinstance(self.content, list)
            and any(isinstance(part, ImageContent) for part in self.content)
        ):
            raise ValueError(
                f"image_url parts are only accepted in user messages, not in {self.role} messages"
            )
        return self


class StreamOptions(_Strict):
    """`stream_options`: `include_usage` adds a final chunk with the usage counts."""

    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    """Any name is accepted: the server serves one model and answers with its own name."""
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    """Accepted for compatibility (an end-user id OpenAI uses for abuse monitoring)."""

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n = 1 is supported, got {n}")
        return n

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        stops = self.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"stop holds {len(stops)} strings; at most {MAX_STOP_STRINGS}")
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple (empty without one)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_tokens(self) -> int | None:
        """`max_completion_tokens` or its older name `max_tokens`; None when neither is set."""
        return self.max_completion_tokens or self.max_tokens


# --- responses --------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """Token counts of one completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The body of a non-streamed answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "onevision"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
