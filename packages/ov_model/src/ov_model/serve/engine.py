"""Continuous batching: one background thread runs the model for every request of a server.

A request joins the running batch between two decode steps and leaves it as soon as it ends, so
a short answer never waits for a long neighbour and a new request never waits for the batch to
drain. Each turn of the engine's loop:
1. drops the rows whose handles were cancelled (a client that went away) and frees their slots;
2. admits waiting requests into the free slots: their prompts are packed into one row and
   prefilled through `LanguageModel.prefill` (the packed training path: images encoded once,
   no padding computed), their keys and values written at the start of fresh rows of the
   `SlotCache`; each gets its first token from its last prompt position;
3. runs one decode step for every active row: the rows' last tokens through the decoder layers'
   `forward_cached`, each row at its own position and column, a per-row mask hiding the columns
   past its end; a token per row, finished rows leave at once.

Each request chooses its tokens with its own settings: greedy rows by argmax, sampled rows with
their own `torch.Generator` (seeded when the request gives a seed) through
`ov_model.generation.next_tokens` (temperature, top-k, top-p as `LlavaOV.generate`). So a
request's tokens do not depend on its neighbours: greedy ones are those of `LlavaOV.generate`
for the request alone, and so are seeded sampled ones (up to float rounding of the batched
matmuls, which argmax and sampling absorb except at near ties).

Requests beyond the free slots wait in a bounded queue (`submit` raises `QueueFull` when it is
full: the HTTP layer answers 429). Malformed requests are refused by `submit` itself. An
exception while prefilling ends only the requests that fail, with finish_reason "error" (a packed
prefill that fails is retried one request at a time, so a bad request does not take its
batch-mates with it); one in a decode step ends the rows of that step (they were computed
together); either way the engine goes on serving.

What it costs: a prefill pauses the decode of the running rows for its duration (no chunked
prefill); the cache holds `max_batch` rows as wide as the longest sequence since the batch last
emptied (see `slot_cache.py`). Requests are served first come, first served.
"""

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch

from ov_model.errors import InputError
from ov_model.generation import GenerationConfig, next_tokens
from ov_model.language_model import rope_cos_sin
from ov_model.model import LlavaOV
from ov_model.packed_metadata import PackedMetadata
from ov_model.serve.slot_cache import SlotCache


class QueueFull(Exception):
    """The engine holds as many requests as it may (running and waiting): try again later."""


class EngineClosed(Exception):
    """The engine was closed: it takes no more requests."""


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """How one request picks its tokens. temperature 0 (default) is greedy; `seed` None draws a
    fresh seed. Validated as `GenerationConfig` is (InputError)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.generation_config()

    def generation_config(self, seed: int = 0) -> GenerationConfig:
        """These settings as `ov_model.generation`'s config (with `seed` when none is set)."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_token_ids=tuple(self.stop_token_ids),
            seed=seed if self.seed is None else self.seed,
        )


@dataclass(frozen=True)
class EngineRequest:
    """One prompt to answer: 1-D token ids (as `OVProcessor.prompt` gives them), its images'
    pixel values and grids (or None), and its sampling settings."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    settings: SamplingSettings


class RequestHandle:
    """The caller's side of a submitted request: its tokens as they come, and how it ended.

    `finish_reason` is None while it runs, then "stop" (a stop token, which is the last token
    yielded, as `LlavaOV.generate` keeps it), "length" (max_new_tokens reached), "cancelled"
    (`cancel` or `Engine.close`) or "error" (then `error` says what went wrong). Times
    (`time.perf_counter`) are recorded for latency measurements.
    """

    def __init__(self, request: EngineRequest) -> None:
        self.request = request
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._generated: list[int] = []
        self._condition = threading.Condition()
        self._cancelled = threading.Event()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def done(self) -> bool:
        """Whether the request has ended (no more tokens will come)."""
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating: the request leaves the batch (or the queue) at the engine's next step
        and ends with finish_reason "cancelled" (unless it ended before)."""
        self._cancelled.set()

    def tokens(self) -> Iterator[int]:
        """Every generated token, in order, blocking until each arrives; ends when the request
        ends. Thread-safe; each call iterates from the first token."""
        index = 0
        while True:
            with self._condition:
                while index >= len(self._generated) and self.finish_reason is None:
                    self._condition.wait()
                new = self._generated[index:]
                done = self.finish_reason is not None
            index += len(new)
            yield from new
            if done:
                return

    async def atokens(self) -> AsyncIterator[int]:
        """`tokens` for asyncio: awaits each token without blocking the event loop or polling."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._condition:
            self._async_waiters.add(waiter)
        try:
            index = 0
            while True:
                with self._condition:
                    new = self._generated[index:]
                    done = self.finish_reason is not None
                    # Cleared under the lock: a token pushed after this read schedules a set
                    # that runs after the clear, so no wake-up is lost.
                    waiter[1].clear()
                index += len(new)
                for token in new:
                    yield token
                if done:
                    return
                if not new:
                    await waiter[1].wait()
        finally:
            with self._condition:
                self._async_waiters.discard(waiter)

    def result(self, timeout: float | None = None) -> list[int]:
        """All generated tokens once the request has ended (TimeoutError after `timeout` s)."""
        with self._condition:
            if not self._condition.wait_for(lambda: self.finish_reason is not None, timeout):
                raise TimeoutError(f"request still running after {timeout} s")
            return list(self._generated)

    # Engine side.
    def _push(self, token: int) -> None:
        with self._condition:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._generated.append(token)
            self._wake()

    def _finish(self, reason: str, error: str | None = None) -> bool:
        """End the request (first call wins); returns whether this call ended it."""
        with self._condition:
            if self.finish_reason is not None:
                return False
            self.finish_reason, self.error = reason, error
            self.finished_at = time.perf_counter()
            self._wake()
            return True

    def _wake(self) -> None:
        self._condition.notify_all()
        for loop, event in self._async_waiters:
            with contextlib.suppress(RuntimeError):  # a closed event loop: its reader is gone
                loop.call_soon_threadsafe(event.set)

    @property
    def num_generated(self) -> int:
        """Tokens generated so far."""
        return len(self._generated)


@dataclass(eq=False)
class _Row:
    """A request in the batch: its handle, token choice and the token not yet in the cache."""

    handle: RequestHandle
    config: GenerationConfig
    generator: torch.Generator | None
    pending: int = -1
    stops: frozenset[int] = field(default_factory=frozenset)


class Engine:
    """A continuous-batching generation engine over one model (see the module docstring).

    At most `max_batch` requests run at once and `max_queue` more wait; `start` launches the
    thread that owns the model (nothing else may run it meanwhile), `close` stops it. Usable as
    a context manager (start on entry, close on exit).
    """

    def __init__(self, model: LlavaOV, *, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise InputError(
                f"need max_batch >= 1 and max_queue >= 0, got {max_batch}, {max_queue}"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.device = model.head_weight.device
        self.cache = SlotCache(len(model.language_model.layers), max_batch)
        self._rows: list[_Row] = []  # row i of the cache
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._outstanding = 0  # submitted and not ended
        self._condition = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Engine":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start the background thread (once)."""
        with self._condition:
            if self._closing:
                raise EngineClosed("the engine was closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ov-model-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread after its current step; every request not ended ends "cancelled"."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._end_all("cancelled")

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Queue `request`; returns its handle. Raises InputError for a malformed request,
        QueueFull when `max_batch` requests run and `max_queue` wait, EngineClosed after close."""
        self._check(request)
        handle = RequestHandle(request)
        with self._condition:
            if self._closing:
                raise EngineClosed("the engine was closed")
            if self._outstanding >= self.max_batch + self.max_queue:
                raise QueueFull(
                    f"{self._outstanding} requests running or waiting (max_batch "
                    f"{self.max_batch} + max_queue {self.max_queue})"
                )
            self._outstanding += 1
            self._waiting.append(handle)
            self._condition.notify_all()
        return handle

    @property
    def pending(self) -> int:
        """Requests submitted and not ended (running or waiting)."""
        with self._condition:
            return self._outstanding

    def _check(self, request: EngineRequest) -> None:
        """InputError unless the prompt is 1-D, not empty, its ids inside the vocabulary and its
        image placeholders match its images: checked here so that a bad request never reaches a
        shared prefill (on a GPU an id out of range would not raise but poison the device)."""
        ids = request.input_ids
        if ids.dim() != 1 or ids.numel() == 0:
            raise InputError(f"input_ids must be 1-D and not empty, got shape {tuple(ids.shape)}")
        vocab = self.model.config.text.vocab_size
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            raise InputError(
                f"input_ids hold {low if low < 0 else high}, outside the vocabulary "
                f"0 .. {vocab - 1}"
            )
        if (request.pixel_values is None) != (request.image_grid_thw is None):
            raise InputError("pixel_values and image_grid_thw go together")
        grid = request.image_grid_thw
        if request.pixel_values is not None and grid is not None:
            patches = int(torch.as_tensor(grid).reshape(-1, 3).prod(-1).sum())
            if request.pixel_values.shape[0] != patches:
                raise InputError(
                    f"pixel_values hold {request.pixel_values.shape[0]} patches, the image grids "
                    f"{patches}"
                )
        cu = torch.tensor([0, ids.numel()], dtype=torch.int32)
        metadata = PackedMetadata.build(ids, None, cu, grid)
        metadata.images(self.model.config.image_token_id, self.model.config.merge_size)

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._condition:
                    while not self._closing and not self._waiting and not self._rows:
                        self._condition.wait()
                    if self._closing:
                        break
                try:
                    self._step()
                except Exception as error:  # the engine outlives a failing step
                    self._fail_running(error)
        self._end_all("cancelled")

    def _step(self) -> None:
        """Drop cancelled rows, prefill the admitted requests, decode one token for all rows."""
        self._drop_cancelled()
        with self._condition:
            admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if self._rows:
            self._decode()

    def _fail_running(self, error: Exception) -> None:
        """End every running row with "error" (the step that failed computed them all)."""
        message = f"{type(error).__name__}: {error}"
        with self._condition:
            handles = [row.handle for row in self._rows]
            self._rows = []
        self.cache.clear()
        for handle in handles:
            self._end(handle, "error", message)

    def _admit(self) -> list[RequestHandle]:
        """Waiting requests for the free slots, in order (cancelled ones end here); under lock."""
        admitted: list[RequestHandle] = []
        for handle in list(self._waiting):
            if handle.cancelled:
                self._waiting.remove(handle)
                self._end(handle, "cancelled")
        while self._waiting and len(admitted) < self.cache.free:
            admitted.append(self._waiting.popleft())
        return admitted

    def _end(self, handle: RequestHandle, reason: str, error: str | None = None) -> None:
        if handle._finish(reason, error):
            with self._condition:
                self._outstanding -= 1

    def _end_all(self, reason: str) -> None:
        with self._condition:
            handles = [row.handle for row in self._rows] + list(self._waiting)
            self._rows, self._waiting = [], collections.deque()
        self.cache.clear()
        for handle in handles:
            self._end(handle, reason)

    def _remove(self, index: int) -> None:
        """Free batch row `index` (the last row moves into it, in the cache and here)."""
        self.cache.remove(index)
        last = self._rows.pop()
        if index < len(self._rows):
            self._rows[index] = last

    def _drop_cancelled(self) -> None:
        for index in reversed(range(len(self._rows))):
            handle = self._rows[index].handle
            if handle.cancelled:
                self._remove(index)
                self._end(handle, "cancelled")

    def _prefill(self, handles: list[RequestHandle]) -> None:
        """Prefill `handles` packed and give each its first token; when the packed prefill fails,
        one at a time, so that only the failing requests end with "error"."""
        first = self.cache.active
        try:
            logits = self._prefill_packed(handles)
        except Exception as error:  # the engine outlives a bad request
            self.cache.truncate(first)
            if len(handles) == 1:
                self._end(handles[0], "error", f"{type(error).__name__}: {error}")
            else:
                for handle in handles:
                    self._prefill([handle])
            return
        self._rows.extend(self._new_row(handle) for handle in handles)
        self._choose(logits, first=first)

    def _prefill_packed(self, handles: list[RequestHandle]) -> torch.Tensor:
        """(requests, vocab) logits after each prompt, its keys and values now in fresh rows."""
        model, device = self.model, self.device
        requests = [handle.request for handle in handles]
        lengths = [int(r.input_ids.numel()) for r in requests]
        ids = torch.cat([r.input_ids.reshape(-1).to("cpu", torch.int64) for r in requests])
        cu_host = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        with_images = [r for r in requests if r.pixel_values is not None]
        pixel_values = grids = None
        if with_images:
            pixel_values = torch.cat([r.pixel_values for r in with_images]).to(device)  # type: ignore[misc]
            grids = torch.cat(
                [torch.as_tensor(r.image_grid_thw).reshape(-1, 3) for r in with_images]
            )
        metadata = PackedMetadata.build(ids, None, cu_host, grids)
        placement = metadata.images(model.config.image_token_id, model.config.merge_size)
        cu = cu_host.to(device, non_blocking=True)
        embeds, _ = model.embed(
            ids.to(device, non_blocking=True), cu, pixel_values, grids, placement=placement
        )
        writer, slots = self.cache.prompt_writer(lengths, device)
        hidden = model.language_model.prefill(  # the writer is the part of KVCache prefill uses
            embeds,
            metadata.position_ids.to(device, non_blocking=True),
            cu,
            lengths,
            writer,  # type: ignore[arg-type]
            slots,
        )
        last = hidden.index_select(0, cu[1:].long() - 1)
        return last @ model.head_weight.t()

    def _new_row(self, handle: RequestHandle) -> _Row:
        settings = handle.request.settings
        generator = None
        if settings.temperature > 0:
            generator = torch.Generator(device=self.device)
            if settings.seed is None:
                generator.seed()
            else:
                generator.manual_seed(settings.seed)
        return _Row(
            handle=handle,
            config=settings.generation_config(),
            generator=generator,
            stops=frozenset(settings.stop_token_ids),
        )

    def _decode(self) -> None:
        """One token for every active row: its last token at its own position and column."""
        language_model = self.model.language_model
        tokens = torch.tensor([row.pending for row in self._rows], device=self.device)
        positions = self.cache.columns(self.device)
        mask = self.cache.decode_mask(self.device)
        config = language_model.config
        cos, sin = rope_cos_sin(positions[:, None], config.head_dim, config.rope_theta)
        x = language_model.embed_tokens(tokens)[:, None]
        for layer in language_model.layers:
            x = layer.forward_cached(x, cos, sin, mask, self.cache)
        self.cache.advance(1)
        hidden = language_model.norm(x)[:, -1]
        self._choose(hidden @ self.model.head_weight.t(), first=0)

    def _choose(self, logits: torch.Tensor, first: int) -> None:
        """Pick the next token of rows first .. from their (rows, vocab) logits, hand it to each
        handle and free the rows that ended."""
        rows = self._rows[first:]
        chosen: list[torch.Tensor | None] = [None] * len(rows)
        greedy = [i for i, row in enumerate(rows) if row.generator is None]
        if greedy:
            picks = logits[greedy].argmax(-1) if len(greedy) < len(rows) else logits.argmax(-1)
            for i, token in zip(greedy, picks, strict=True):
                chosen[i] = token
        for i, row in enumerate(rows):
            if row.generator is not None:
                chosen[i] = next_tokens(logits[i : i + 1], row.config, row.generator)[0]
        tokens = torch.stack(chosen).tolist()  # type: ignore[arg-type]
        ended: list[tuple[int, str]] = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.handle._push(token)
            row.pending = token
            if token in row.stops:
                ended.append((first + i, "stop"))
            elif row.handle.num_generated >= row.config.max_new_tokens:
                ended.append((first + i, "length"))
        for index, reason in reversed(ended):
            handle = self._rows[index].handle
            self._remove(index)
            self._end(handle, reason)
