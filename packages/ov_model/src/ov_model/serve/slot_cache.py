"""The serving KV cache: a fixed number of slots, one sequence per slot, each with its own length.

`generation.py`'s `KVCache` serves one batch from start to end: every row writes its decode step
at the same column, so rows must start together. A server's rows do not: a request joins while
others are mid-answer, and one that finishes must free its place at once. So here every row is
left-aligned (a sequence of n tokens fills columns 0 .. n-1, its position ids are its column
numbers) and writes its next token at its own column; attention reads columns 0 .. longest row
and a per-row mask hides what lies past each row's end (stale keys of an earlier occupant or
zeros: always finite, so a masked column never leaks NaN).

Layout: per layer one keys and one values buffer of shape (slots, kv_heads, columns, head_dim),
allocated at the first write (in the dtype, device and kv heads the layer's keys arrive in) and
doubled when a row needs more columns. Rows 0 .. active-1 are in use, so attention reads the
buffers as views (`[:active, :, :width]`, no copy per step). A row that leaves is filled by the
last active row (one row copy per layer), so finishing costs O(one sequence), not O(the batch).

Prompts enter through `LanguageModel.prefill` (the packed training path, images included):
`prompt_writer` returns the object that method writes keys and values to, placing each packed
prompt at the start of a fresh row. Decode steps go through the decoder layers'
`forward_cached`, which call `write` and read the views it returns.

What it costs: the buffers hold `slots` rows as wide as the longest sequence served since the
batch last emptied (`clear` releases them); a short row next to a long one computes attention over
the long one's columns (masked). Not done: paging (blocks shared between rows), prefix sharing.
"""

from collections.abc import Sequence

import torch

from ov_model.errors import InputError
from ov_model.kv_cache import PromptSlots

INITIAL_COLUMNS = 256
"""Columns allocated at first (grown by doubling)."""


class SlotCache:
    """Keys and values of up to `slots` sequences of independent lengths (module docstring)."""

    def __init__(self, num_layers: int, slots: int) -> None:
        if num_layers < 1 or slots < 1:
            raise InputError(
                f"a slot cache needs layers >= 1 and slots >= 1, got {num_layers}, {slots}"
            )
        self.num_layers = num_layers
        self.slots = slots
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths: list[int] = []
        """Columns written per active row (row i of the buffers); also its next position."""
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def active(self) -> int:
        """Rows in use (rows 0 .. active-1)."""
        return len(self.lengths)

    @property
    def free(self) -> int:
        """Rows a new sequence may take."""
        return self.slots - self.active

    def _buffers(
        self, layer: int, like: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's buffers with at least `end` columns, allocated like `like`
        (..., kv_heads, head_dim) on first use, grown by doubling, zero-filled."""
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            shape = (self.slots, like.shape[-2], max(INITIAL_COLUMNS, end), like.shape[-1])
            self.keys[layer], self.values[layer] = like.new_zeros(shape), like.new_zeros(shape)
        elif keys.shape[2] < end:
            columns = max(end, 2 * keys.shape[2])
            grown_keys = keys.new_zeros((*keys.shape[:2], columns, keys.shape[3]))
            grown_values = torch.zeros_like(grown_keys)
            grown_keys[:, :, : keys.shape[2]] = keys
            grown_values[:, :, : values.shape[2]] = values
            self.keys[layer], self.values[layer] = grown_keys, grown_values
        return self.keys[layer], self.values[layer]  # type: ignore[return-value]

    def prompt_writer(
        self, lengths: Sequence[int], device: torch.device | str
    ) -> tuple["PromptWriter", PromptSlots]:
        """Take one fresh row per prompt (rows active .. active + len - 1, in order) and return
        what `LanguageModel.prefill` needs to write the packed prompts there: the writer (its
        `cache`) and the slots (each prompt left-aligned in its row)."""
        if len(lengths) > self.free:
            raise InputError(f"{len(lengths)} prompts for {self.free} free slots")
        if not lengths or min(lengths) < 1:
            raise InputError(f"prompts need at least one token each, got lengths {list(lengths)}")
        first = self.active
        width = max(lengths)
        counts = torch.tensor(lengths)
        rows = torch.repeat_interleave(torch.arange(first, first + len(lengths)), counts)
        columns = torch.cat([torch.arange(n) for n in lengths])
        filled = torch.arange(width)[None, :] < counts[:, None]
        slots = PromptSlots(
            rows.to(device, non_blocking=True),
            columns.to(device, non_blocking=True),
            width,
            filled.to(device, non_blocking=True),
        )
        self.lengths.extend(lengths)
        self._index = None
        return PromptWriter(self), slots

    def truncate(self, active: int) -> None:
        """Forget rows active .. (a prefill that failed)."""
        del self.lengths[active:]
        self._index = None

    def index(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(active,) int64 rows 0 .. active-1 and each row's next column, which is also its next
        position id; built once per step (every layer's `write` uses them)."""
        if self._index is None or self._index[1].device != torch.device(device):
            columns = torch.tensor(self.lengths, dtype=torch.int64, device=device)
            self._index = (torch.arange(self.active, device=device), columns)
        return self._index

    def columns(self, device: torch.device | str) -> torch.Tensor:
        """(active,) int64: each row's next column, which is also its next position id."""
        return self.index(device)[1]

    def decode_mask(self, device: torch.device | str) -> torch.Tensor:
        """(active, 1, 1, width) bool for one new token per row: each row sees its own columns,
        the new token's included; width = the longest row + 1."""
        columns = self.columns(device)
        width = max(self.lengths) + 1
        return (torch.arange(width, device=device)[None, :] <= columns[:, None])[:, None, None]

    # The interface of `KVCache` that `Attention.forward_cached` uses.
    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new token per active row, (active, kv_heads, 1, head_dim), at each row's
        own column; returns views of every active row's keys and values up to the longest."""
        if keys.shape[0] != self.active or keys.shape[2] != 1:
            raise InputError(
                f"a slot cache writes one token for each of its {self.active} rows, got keys "
                f"of shape {tuple(keys.shape)}"
            )
        end = max(self.lengths) + 1
        key_buffer, value_buffer = self._buffers(layer, keys.transpose(1, 2), end)
        rows, columns = self.index(keys.device)
        key_buffer[rows, :, columns] = keys[:, :, 0]
        value_buffer[rows, :, columns] = values[:, :, 0]
        return key_buffer[: self.active, :, :end], value_buffer[: self.active, :, :end]

    def advance(self, new: int) -> None:
        """Count `new` more columns in every active row (after every layer wrote them)."""
        self.lengths = [n + new for n in self.lengths]
        self._index = None

    def remove(self, row: int) -> None:
        """Free `row`: the last active row moves into it (callers mirror the move)."""
        last = self.active - 1
        if not 0 <= row <= last:
            raise InputError(f"row {row} is not active (active rows: {self.active})")
        if row != last:
            used = self.lengths[last]
            for buffer in (*self.keys, *self.values):
                if buffer is not None:
                    buffer[row, :, :used] = buffer[last, :, :used]
            self.lengths[row] = used
        self.lengths.pop()
        self._index = None
        if not self.lengths:
            self.clear()

    def clear(self) -> None:
        """Drop every row and release the buffers (they are allocated again on the next write)."""
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.lengths = []
        self._index = None


class PromptWriter:
    """What `LanguageModel.prefill` writes a packed prefill's keys and values to: the subset of
    `KVCache` it calls (`length`, `scatter`, `advance`), writing into fresh rows of a
    `SlotCache` (see `SlotCache.prompt_writer`)."""

    length = 0
    """Prefill demands an empty cache: the rows it writes are fresh."""

    def __init__(self, cache: SlotCache) -> None:
        self.cache = cache

    def scatter(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, slots: PromptSlots
    ) -> None:
        """Write packed (tokens, kv_heads, head_dim) keys/values to their `slots`."""
        end = max(self.cache.lengths)
        key_buffer, value_buffer = self.cache._buffers(layer, keys, end)
        key_buffer[slots.rows, :, slots.columns] = keys
        value_buffer[slots.rows, :, slots.columns] = values

    def advance(self, new: int) -> None:
        """Nothing to count: the rows' lengths were set when they were taken."""
