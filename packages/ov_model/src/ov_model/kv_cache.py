"""The generation KV cache: one preallocated buffer per layer, written in place.

Layout: per layer a keys and a values buffer of shape (batch, kv_heads, columns, head_dim),
allocated at the layer's first write (in the dtype and device its keys arrive in, with as many kv
heads as its projections produce) with `reserve` columns, and doubled (never past `capacity`, the
most a generation can need) when a write needs more: a task with a 16,384-token budget whose
answers stop after 20 tokens does not hold 16,384 columns per row, and the copies of the doublings
add up to less than one copy of the final cache. Prompts are right-aligned: a prompt of
n tokens fills columns width - n .. width - 1, left of it nothing is ever written and the
attention mask hides it; decode step t writes column width + t for every row. So a step costs one
in-place copy per layer instead of re-allocating the whole cache (`torch.cat` copies every earlier
token at every step: quadratic traffic over a generation), and attention reads the buffer's first
`length` columns as a view.

Keys are stored with their kv heads, never expanded to the query heads (grouped-query attention
reads them in place, see `Attention.forward_cached`).

Dropping finished rows (`select`) copies the remaining rows into new, smaller buffers: one copy of
the cache per finishing event (at most batch - 1 of them) buys cheaper attention and MLP for all
the steps after it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ov_model.errors import InputError


@dataclass(frozen=True)
class PromptSlots:
    """Where the tokens of packed prompts go in a right-aligned cache.

    `rows[i]`, `columns[i]`: the cache row and column of packed token i (prompt after prompt, as
    `cu_seqlens` orders them); `width`: the longest prompt, so the column after every prompt;
    `filled`: (batch, width) bool, True where a prompt token is.
    """

    rows: torch.Tensor
    columns: torch.Tensor
    width: int
    filled: torch.Tensor

    @classmethod
    def right_aligned(cls, lengths: Sequence[int], device: torch.device | str) -> "PromptSlots":
        """Slots of prompts of these lengths, each ending at column max(lengths) - 1. Built on the
        host and copied once."""
        width = max(lengths)
        rows = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        columns = torch.cat([torch.arange(width - n, width) for n in lengths])
        filled = torch.arange(width)[None, :] >= (width - torch.tensor(lengths))[:, None]
        return cls(
            rows.to(device, non_blocking=True),
            columns.to(device, non_blocking=True),
            width,
            filled.to(device, non_blocking=True),
        )


@dataclass
class KVCache:
    """Keys and values of earlier tokens per layer, preallocated (see the module docstring).

    `length`: columns written so far, the same for every row and layer (a row's prompt padding
    counts, the mask hides it). A layer writes its new keys at columns length .. length + new - 1
    and the forward that called every layer then `advance`s `length`. `capacity`: the most
    columns it may hold; `reserve`: the columns allocated at first (default: `capacity`).
    """

    batch: int
    capacity: int
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0
    reserve: int = 0

    @classmethod
    def empty(
        cls, num_layers: int, batch: int, capacity: int, reserve: int | None = None
    ) -> "KVCache":
        """A cache of at most `capacity` tokens per row for `num_layers` layers (buffers
        allocated at each layer's first write with `reserve` columns, grown by doubling)."""
        if batch < 1 or capacity < 1:
            raise InputError(
                f"a KV cache needs batch >= 1 and capacity >= 1, got {batch} and {capacity}"
            )
        reserve = capacity if reserve is None else min(max(reserve, 1), capacity)
        return cls(batch, capacity, [None] * num_layers, [None] * num_layers, reserve=reserve)

    def _buffers(
        self, layer: int, like: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's buffers, with at least `end` columns: allocated on first use like `like`
        (..., kv_heads, head_dim), grown by doubling, with zeros (never-written columns must not
        hold NaN: masked keys still enter the matmul)."""
        if end > self.capacity:
            raise InputError(f"KV cache of {self.capacity} tokens cannot hold {end}")
        keys, values = self.keys[layer], self.values[layer]
        if keys is None:
            shape = (self.batch, like.shape[-2], max(self.reserve, end), like.shape[-1])
            self.keys[layer], self.values[layer] = like.new_zeros(shape), like.new_zeros(shape)
        elif keys.shape[2] < end:
            columns = min(self.capacity, max(end, 2 * keys.shape[2]))
            grown_keys = keys.new_zeros((*keys.shape[:2], columns, keys.shape[3]))
            grown_values = torch.zeros_like(grown_keys)
            grown_keys[:, :, : self.length] = keys[:, :, : self.length]
            grown_values[:, :, : self.length] = values[:, :, : self.length]
            self.keys[layer], self.values[layer] = grown_keys, grown_values
        return self.keys[layer], self.values[layer]

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (batch, kv_heads, new, head_dim) keys/values at columns `length` onward; returns
        views of all keys and values so far (`length + new` columns)."""
        end = self.length + keys.shape[2]
        key_buffer, value_buffer = self._buffers(layer, keys.transpose(1, 2), end)
        key_buffer[:, :, self.length : end] = keys
        value_buffer[:, :, self.length : end] = values
        return key_buffer[:, :, :end], value_buffer[:, :, :end]

    def scatter(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, slots: PromptSlots
    ) -> None:
        """Write packed (tokens, kv_heads, head_dim) keys/values of prompts to their `slots`."""
        key_buffer, value_buffer = self._buffers(layer, keys, slots.width)
        # Advanced indices on dims 0 and 2 around a slice: the indexed view is (tokens, heads, dim).
        key_buffer[slots.rows, :, slots.columns] = keys
        value_buffer[slots.rows, :, slots.columns] = values

    def advance(self, new: int) -> None:
        """Count `new` more written columns (after every layer wrote them)."""
        self.length += new

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (generation drops finished sequences)."""
        self.keys = [k.index_select(0, rows) if k is not None else None for k in self.keys]
        self.values = [v.index_select(0, rows) if v is not None else None for v in self.values]
        self.batch = len(rows)
