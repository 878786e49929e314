"""The HTTP side of `ov-model serve`: an OpenAI-compatible FastAPI app over the batching engine.

A request goes: JSON body -> `ChatCompletionRequest` (pydantic, unknown fields refused) ->
`content.to_conversation` (images checked and decoded) -> `OVProcessor.prompt` (the training chat
template) -> context and budget checks -> `Engine.submit` (429 when its queue is full) -> the
engine's tokens, decoded as they come. Decoding images and rendering run in the thread pool, so
the event loop keeps serving while a large request is prepared; the model itself is only touched
by the engine's own thread.

Text is decoded from all the tokens so far at every step (`AnswerText`): a character whose UTF-8
bytes are still incomplete is held back, and so is any tail that could be the beginning of a
stop string; once a stop string appears the answer ends before it, the engine handle is
cancelled (its batch slot frees at the next step) and the finish reason is "stop". A streamed
answer is server-sent events: a first chunk with the role, one chunk per new piece of text, a
last chunk with the finish reason, a usage chunk when `stream_options.include_usage`, then
`data: [DONE]`. A client that goes away, streamed or not, cancels its handle.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from ov_model.errors import InputError
from ov_model.processor import OVProcessor
from ov_model.processor_errors import SampleError
from ov_model.serve.content import ContentError, ImageLimits, to_conversation
from ov_model.serve.engine import (
    Engine,
    EngineClosed,
    EngineRequest,
    QueueFull,
    RequestHandle,
    SamplingSettings,
)
from ov_model.serve.errors import APIError, error_body, error_response, install_error_handlers
from ov_model.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
)

STATIC = Path(__file__).parent / "static"
DISCONNECT_POLL_SECONDS = 0.25


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """What the app needs besides the engine and the processor."""

    model_name: str
    """The name `/v1/models` lists and every answer carries."""
    max_new_tokens: int = 512
    """Largest `max_tokens` a request may ask for; the budget of requests that ask none."""
    max_context: int = 32768
    """Prompt + new tokens may not exceed this (the model's max_position_embeddings)."""
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_body_bytes: int = 64 * 2**20
    """Larger request bodies are refused with 413 before they are read."""


@dataclass(frozen=True)
class _Prepared:
    request: EngineRequest
    prompt_tokens: int


class AnswerText:
    """The answer's text as tokens arrive: pieces safe to show, and where a stop string ends it."""

    def __init__(self, processor: OVProcessor, stops: tuple[str, ...]) -> None:
        self._processor = processor
        self._stops = stops
        self.token_ids: list[int] = []
        self.text = ""
        """The text shown so far (what the pieces returned add up to)."""
        self.stopped = False
        """A stop string appeared: the answer is complete."""

    def add(self, token: int) -> str:
        """Take one token; returns the new text that can be shown now (possibly empty)."""
        self.token_ids.append(token)
        decoded = self._processor.decode(self.token_ids)
        if decoded.endswith("\ufffd"):  # a character whose bytes are incomplete
            return ""
        return self._advance(decoded, final=False)

    def finish(self) -> str:
        """The rest of the text once no token will come (held-back text included)."""
        if self.stopped:
            return ""
        return self._advance(self._processor.decode(self.token_ids), final=True)

    def _advance(self, decoded: str, *, final: bool) -> str:
        end = len(decoded)
        if self._stops:
            start = max(0, len(self.text) - max(map(len, self._stops)))
            found = [at for stop in self._stops if (at := decoded.find(stop, start)) >= 0]
            if found:
                end = min(found)
                self.stopped = True
            elif not final:
                end -= _partial_stop_length(decoded, self._stops)
        end = max(end, len(self.text))
        piece = decoded[len(self.text) : end]
        self.text = decoded[:end]
        return piece


def _partial_stop_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the beginning of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class _BodySizeLimit:
    """ASGI middleware: a request whose Content-Length is above the limit gets 413 unread."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                error = APIError(
                    413,
                    f"the request body is {int(length)} bytes; the server accepts at most "
                    f"{self.max_bytes}",
                    code="request_too_large",
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: Engine, processor: OVProcessor, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `engine` (already started; the caller closes it)."""
    app = FastAPI(title="ov-model serve", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(_BodySizeLimit, max_bytes=settings.max_body_bytes)
    special = processor.tokenizer.special
    stop_token_ids = (special.im_end, special.endoftext)
    created = int(time.time())

    def prepare(body: ChatCompletionRequest) -> _Prepared:
        try:
            rendered = to_conversation(body.messages, settings.limits)
            prompt = processor.prompt(rendered.conversation, rendered.images or None)
        except ContentError as error:
            raise APIError(400, str(error), param=error.param, code=error.code) from None
        except SampleError as error:
            raise APIError(400, str(error), param="messages", code="invalid_messages") from None
        prompt_tokens = int(prompt.input_ids.numel())
        budget = _token_budget(body, prompt_tokens, settings)
        try:
            sampling = SamplingSettings(
                max_new_tokens=budget,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                stop_token_ids=stop_token_ids,
            )
        except InputError as error:  # the schema's bounds should have caught it first
            raise APIError(400, str(error), code="invalid_value") from None
        request = EngineRequest(
            input_ids=prompt.input_ids,
            pixel_values=prompt.pixel_values,
            image_grid_thw=prompt.image_grid_thw,
            settings=sampling,
        )
        return _Prepared(request, prompt_tokens)

    def submit(prepared: _Prepared) -> RequestHandle:
        try:
            return engine.submit(prepared.request)
        except QueueFull:
            raise APIError(
                429,
                "the server's request queue is full (--max-queue); retry shortly",
                code="queue_full",
            ) from None
        except InputError as error:
            raise APIError(
                400, f"messages: {error}", param="messages", code="invalid_prompt"
            ) from None
        except EngineClosed:
            raise APIError(503, "the server is shutting down", code="shutting_down") from None

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> JSONResponse | StreamingResponse:
        """OpenAI Chat Completions, plain or streamed."""
        prepared = await run_in_threadpool(prepare, body)
        handle = submit(prepared)
        answer = AnswerText(processor, body.stop_strings)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _stream(
                handle,
                answer,
                completion_id,
                settings.model_name,
                include_usage,
                prepared.prompt_tokens,
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        try:
            async for token in handle.atokens():
                answer.add(token)
                if answer.stopped:
                    handle.cancel()
                    break
            answer.finish()
        finally:
            watcher.cancel()
            if handle.finish_reason is None and not answer.stopped:
                handle.cancel()
        reason = _finish_reason(handle, answer)
        completion = ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=settings.model_name,
            choices=[Choice(message=AssistantMessage(content=answer.text), finish_reason=reason)],
            usage=_usage(prepared.prompt_tokens, answer),
        )
        return JSONResponse(completion.model_dump())

    @app.get("/v1/models")
    async def models() -> ModelList:
        """The one model this server serves."""
        return ModelList(data=[ModelCard(id=settings.model_name, created=created)])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        """The served model, by its name."""
        if model_id != settings.model_name:
            raise APIError(
                404,
                f"no model {model_id!r}; this server serves {settings.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return ModelCard(id=settings.model_name, created=created)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """`{"status": "ok"}` while the server answers."""
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        """The browser chat page."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def _token_budget(body: ChatCompletionRequest, prompt_tokens: int, settings: ServeSettings) -> int:
    """New tokens this request may generate; APIError when it asks too many or cannot fit."""
    requested = body.requested_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    room = settings.max_context - prompt_tokens
    if room <= 0:
        raise APIError(
            400,
            f"messages: the prompt is {prompt_tokens} tokens, which leaves no room in the "
            f"model's context of {settings.max_context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(settings.max_new_tokens, room)
    if requested > room:
        raise APIError(
            400,
            f"{param}: the prompt ({prompt_tokens} tokens) + {param} ({requested}) = "
            f"{prompt_tokens + requested} tokens is over the model's context of "
            f"{settings.max_context} tokens",
            param=param,
            code="context_length_exceeded",
        )
    if requested > settings.max_new_tokens:
        raise APIError(
            400,
            f"{param}: {requested} is above the server's limit of {settings.max_new_tokens} "
            f"new tokens (--max-new-tokens)",
            param=param,
            code="max_tokens_too_large",
        )
    return requested


def _finish_reason(handle: RequestHandle, answer: AnswerText) -> str:
    """OpenAI's finish reason; APIError when the engine failed or shut down."""
    if answer.stopped or handle.finish_reason == "stop":
        return "stop"
    if handle.finish_reason == "length":
        return "length"
    if handle.finish_reason == "error":
        raise APIError(500, f"generation failed: {handle.error}", code="generation_error")
    raise APIError(503, "the server is shutting down; the request was cancelled", code="cancelled")


def _usage(prompt_tokens: int, answer: AnswerText) -> Usage:
    completion_tokens = len(answer.token_ids)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def _cancel_on_disconnect(request: Request, handle: RequestHandle) -> None:
    """Cancel the handle once its client has gone away (non-streamed requests; a streamed one
    notices when a write fails). Polls: once the body is read, what `receive` returns depends
    on the stack (FastAPI may replay the cached body), so waiting on it could spin."""
    while not handle.done:
        if await request.is_disconnected():
            handle.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def _event(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _stream(
    handle: RequestHandle,
    answer: AnswerText,
    completion_id: str,
    model_name: str,
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; cancels the handle when the client leaves."""
    created = int(time.time())
    exclude = None if include_usage else {"usage"}

    def chunk(delta: Delta, finish_reason: str | None = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        body = ChatCompletionChunk(
            id=completion_id, created=created, model=model_name, choices=[choice]
        )
        return _event(body.model_dump(exclude=exclude))

    try:
        yield chunk(Delta(role="assistant", content=""))
        async for token in handle.atokens():
            piece = answer.add(token)
            if piece:
                yield chunk(Delta(content=piece))
            if answer.stopped:
                handle.cancel()
                break
        piece = answer.finish()
        if piece:
            yield chunk(Delta(content=piece))
        try:
            reason = _finish_reason(handle, answer)
        except APIError as error:
            yield _event(error_body(error.message, type=error.type, code=error.code))
            yield _event("[DONE]")
            return
        yield chunk(Delta(), reason)
        if include_usage:
            usage = ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=model_name,
                choices=[],
                usage=_usage(prompt_tokens, answer),
            )
            yield _event(usage.model_dump())
        yield _event("[DONE]")
    finally:
        if handle.finish_reason is None:
            handle.cancel()
