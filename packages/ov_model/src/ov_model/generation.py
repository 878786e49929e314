"""Text generation with a KV cache: batched prompts, greedy or sampled.

Prefill packs the prompts into one row (`cu_seqlens`, no padding computed) and runs the packed
path the training forward uses (images encoded once, their features written into the placeholder
rows), so each prompt is computed exactly as alone; every layer's keys and values are scattered
into a preallocated cache (`kv_cache.py`) where the prompts are right-aligned. Each decode step
then feeds one token per row, writes its keys and values in place (no concatenation) and attends
over the cache with a mask hiding each row's left padding; grouped-query heads read the cache's
kv heads where they are (never expanded; see `Attention.forward_cached`). Positions count real
tokens only, so every row's greedy output is the one it gets alone (up to float rounding of the
batched decode matmuls). Rows that stop leave the batch (the cache is compacted once per step in
which rows stop: measured 6% faster than computing finished rows on, with 8 rows stopping every
16 steps). Sampling applies temperature, then top-k, then top-p (nucleus) filtering, drawing
from a seeded `torch.Generator`.

What it costs: the cache holds (prompt width + max_new_tokens) columns per row from the start,
the longest prompt setting the width for all rows; the packed prefill's attention loops over the
distinct prompt lengths on CPU (`rice_vit.varlen_attention`'s sdpa backend), one varlen kernel on
GPU.
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ov_model.errors import InputError
from ov_model.kv_cache import KVCache, PromptSlots
from ov_model.packed_metadata import PackedMetadata

CACHE_RESERVE_NEW_TOKENS = 256
"""New-token columns the KV cache holds at first; it doubles when answers run longer."""

TokenCallback = Callable[[int, int], None]
"""Called as callback(row, token_id) for every generated token (streaming)."""


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How to pick tokens. temperature 0 (default) is greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")


def _filter_logits(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) > config.top_p  # keep the token crossing top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return logits


def next_tokens(
    logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """(batch,) next token ids from (batch, vocab) logits."""
    if config.temperature == 0:
        return logits.argmax(-1)
    probabilities = _filter_logits(logits.float(), config).softmax(-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[torch.Tensor],
    *,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    pad_token_id: int = 0,
    callback: TokenCallback | None = None,
) -> list[list[int]]:
    """Generated token ids per prompt (stop token included when one ended the row).

    `prompts` are 1-D token id tensors, none empty; their images, in prompt order, are
    `pixel_values` / `image_grid_thw` (all images of all prompts, concatenated). `pad_token_id`
    is accepted for compatibility: prompts are packed, nothing is padded.
    """
    del pad_token_id  # packed prefill: no padding tokens exist
    config = config or GenerationConfig()
    if not prompts:
        return []
    lengths = [int(p.numel()) for p in prompts]
    if 0 in lengths:
        raise InputError(f"prompt {lengths.index(0)} is empty: generation needs a token to follow")
    device = model.head_weight.device
    language_model = model.language_model
    batch = len(prompts)
    ids = torch.cat([p.reshape(-1).to("cpu", torch.int64) for p in prompts])
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    metadata = PackedMetadata.build(ids, None, cu, image_grid_thw)
    placement = metadata.images(model.config.image_token_id, model.config.merge_size)
    cu = cu.to(device, non_blocking=True)
    embeds, _ = model.embed(
        ids.to(device, non_blocking=True), cu, pixel_values, image_grid_thw, placement=placement
    )
    slots = PromptSlots.right_aligned(lengths, device)
    cache = KVCache.empty(
        len(language_model.layers),
        batch,
        capacity=slots.width + config.max_new_tokens,
        reserve=slots.width + min(config.max_new_tokens, CACHE_RESERVE_NEW_TOKENS),
    )
    hidden = language_model.prefill(
        embeds, metadata.position_ids.to(device, non_blocking=True), cu, lengths, cache, slots
    )
    last = hidden.index_select(0, cu[1:].long() - 1)
    # attention[row, column]: the cache column holds a token of the row (not prompt padding).
    attention = torch.zeros(batch, cache.capacity, dtype=torch.bool, device=device)
    attention[:, : slots.width] = slots.filled
    next_position = torch.tensor(lengths, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stops = set(config.stop_token_ids)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # original row of each cache row
    for step in range(config.max_new_tokens):
        tokens = next_tokens(last @ model.head_weight.t(), config, generator)
        keep = []
        for cache_row, token in enumerate(tokens.tolist()):
            row = active[cache_row]
            outputs[row].append(token)
            if callback is not None:
                callback(row, token)
            if token not in stops:
                keep.append(cache_row)
        if not keep or step == config.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=device)
            cache.select(rows)
            tokens, attention, next_position = tokens[rows], attention[rows], next_position[rows]
            active = [active[r] for r in keep]
        attention[:, cache.length] = True
        hidden = language_model.forward_cached(
            language_model.embed_tokens(tokens)[:, None],
            next_position[:, None],
            attention[:, : cache.length + 1],
            cache,
        )
        last = hidden[:, -1]
        next_position = next_position + 1
    return outputs
