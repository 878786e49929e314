"""Text generation with a KV cache: batched prompts (left padding), greedy or sampled.

Prefill runs the padded prompts in one cached pass (images encoded once, their features written
into the placeholder rows); each step then feeds one token per row. Positions count real tokens
only, so a left-padded prompt sees the same positions as alone, and every row's greedy output is
the one it gets alone (up to float rounding of the padded matmuls). Sampling applies temperature,
then top-k, then top-p (nucleus) filtering, drawing from a seeded `torch.Generator`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ov_model.errors import InputError
from ov_model.language_model import KVCache

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

    `prompts` are 1-D token id tensors; their images, in prompt order, are `pixel_values` /
    `image_grid_thw` (all images of all prompts, concatenated).
    """
    config = config or GenerationConfig()
    if not prompts:
        return []
    device = model.head_weight.device
    lengths = [int(p.numel()) for p in prompts]
    width = max(lengths)
    batch = len(prompts)
    ids = torch.full((batch, width), pad_token_id, dtype=torch.int64, device=device)
    mask = torch.zeros((batch, width), dtype=torch.int64, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - lengths[row] :] = prompt.to(device)
        mask[row, width - lengths[row] :] = 1
    cu = torch.arange(0, (batch + 1) * width, width, dtype=torch.int32, device=device)
    # Padding rows are left of each prompt, so the flattened order of placeholders is prompt order.
    embeds, _ = model.embed(ids.reshape(-1), cu, pixel_values, image_grid_thw)
    embeds = embeds.reshape(batch, width, -1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = KVCache.empty(len(model.language_model.layers))
    hidden = model.language_model.forward_cached(embeds, positions, mask, cache)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stops = set(config.stop_token_ids)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # original row of each cache row
    last = hidden[:, -1]
    next_position = positions[:, -1] + 1
    for _ in range(config.max_new_tokens):
        tokens = next_tokens(last @ model.head_weight.t(), config, generator)
        keep = []
        for cache_row, token in enumerate(tokens.tolist()):
            row = active[cache_row]
            outputs[row].append(token)
            if callback is not None:
                callback(row, token)
            if token not in stops:
                keep.append(cache_row)
        if not keep:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=device)
            cache.select(rows)
            tokens, mask, next_position = tokens[rows], mask[rows], next_position[rows]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        step = model.language_model.embed_tokens(tokens)[:, None]
        hidden = model.language_model.forward_cached(step, next_position[:, None], mask, cache)
        last = hidden[:, -1]
        next_position = next_position + 1
    return outputs
