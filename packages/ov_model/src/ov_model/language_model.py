"""The Qwen3 / Qwen2 decoder, single-device, with two attention paths.

- Packed training/scoring path (`forward`): the tokens of many samples as one (tokens, hidden)
  sequence with `cu_seqlens`; causal attention through rice_vit's `varlen_attention`, so no token
  sees another sample and nothing is padded. Positions are given per token (they restart at 0 for
  every sample).
- Cached generation path: `prefill` runs prompts packed in one row through the packed path above
  while storing every layer's keys and values in a preallocated `KVCache` (`kv_cache.py`, prompts
  right-aligned); `forward_cached` then runs a (batch, new tokens) block attending to the cache
  with an explicit mask (hiding the left padding) through torch's SDPA. The cache is never
  expanded to the query heads: one new token per row (a decode step) folds the query heads of
  each kv head into that head's query rows; longer blocks use SDPA's `enable_gqa`.

Numerics follow the official modeling code: RMSNorm in fp32 cast back before the weight;
per-head q/k RMSNorm before RoPE (Qwen3); grouped-query attention; SwiGLU MLP. One dtype rule,
shared with the ViT: norms return their input's dtype (the fp32 weight times a bf16 activation is
cast back) and RoPE is `rice_vit.rope`'s (cos/sin and the rotation in fp32, result in the input's
dtype; the official code rotates in the activation dtype, which is the same in fp32). So under
bf16 autocast q, k and v all reach attention in bf16.

No torch.distributed here: parallelism is ov_train's job, applied from outside to these plain
modules (their names match the HF checkpoint's).
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ov_model.config import TextConfig
from ov_model.errors import InputError
from ov_model.kv_cache import KVCache, PromptSlots
from rice_vit import rope, varlen_attention
from rice_vit.rope import apply_rope

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Packed causal attention of one row: q (tokens, heads, head_dim), k and v (tokens, kv_heads,
head_dim) -> (tokens, heads, head_dim), no token seeing another sample or a later token. The
decoder layers call it; `LanguageModel.forward` builds the single-device one (`varlen_attention`
over the row's cu_seqlens) unless given another (context parallelism attends over keys that
other ranks hold)."""


def varlen_attend(
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    backend: str | None,
    sequence_lengths: Sequence[int] | None = None,
) -> Attend:
    """The single-device `Attend` of a packed row: causal `varlen_attention` per sample."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return varlen_attention(
            q,
            k,
            v,
            cu_seqlens,
            max_seqlen,
            causal=True,
            backend=backend,
            sequence_lengths=sequence_lengths,
        )

    return attend


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back, times the weight; returns x's dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # fp32 weights times a bf16 activation (autocast) would promote to fp32: cast back.
        return (self.weight * x32.to(dtype)).to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos, sin of shape (*positions.shape, head_dim) for 1D RoPE (`rice_vit.rope`)."""
    return rope.rope_cos_sin(rope.position_rope_angles(positions, head_dim, theta))


class Attention(nn.Module):
    """Grouped-query attention with optional q/k RMSNorm (Qwen3) and q/k/v bias (Qwen2)."""

    def __init__(self, config: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (..., heads, head_dim), k, v (..., kv_heads, head_dim) with norms and RoPE.

        Heads are counted from the projections' outputs (`-1`), not from the config: under
        tensor parallelism a rank's q/k/v projections hold only its share of the heads."""
        shape = x.shape[:-1]
        q = self.q_proj(x).view(*shape, -1, self.head_dim)
        k = self.k_proj(x).view(*shape, -1, self.head_dim)
        v = self.v_proj(x).view(*shape, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """Packed causal attention over (tokens, hidden) through `attend`."""
        q, k, v = self._project(x, cos, sin)
        out = attend(q, k, v)
        return self.o_proj(out.reshape(x.shape[0], -1))

    def forward_cached(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """(batch, new, hidden) attending to the cache and itself; `mask` (batch, 1, new, all)."""
        batch, new = x.shape[:2]
        q, k, v = self._project(x, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, new, head_dim)
        k, v = cache.write(self.layer_index, k, v)
        heads, kv_heads = q.shape[1], k.shape[1]
        if new == 1 and heads != kv_heads:
            # One new token: the query heads of a kv head become that head's query rows (query
            # head h reads kv head h // groups), one (groups x cached) product per kv head. The
            # same result as enable_gqa, which on CPU runs every query head on its own (measured
            # 2-5x slower at decode shapes).
            q = q.reshape(batch, kv_heads, heads // kv_heads, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.o_proj(out.reshape(batch, 1, -1))
        # enable_gqa: query head h reads kv head h // groups straight from the cache.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=heads != kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, new, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attend: Attend):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_cached(self, x, cos, sin, mask, cache):
        x = x + self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LanguageModel(nn.Module):
    """Token embedding, decoder layers and the final norm (the HF `model.*` tensors)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention_backend: str | None = None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        *,
        output_hidden_states: bool = False,
        sequence_lengths: Sequence[int] | None = None,
        attend: Attend | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Final-norm hidden states (tokens, hidden) of a packed sequence, and optionally the input
        of every layer plus the final output (as the HF `hidden_states`). `sequence_lengths`: the
        samples' lengths as host ints, if known (see `rice_vit.varlen_attention`). `attend`:
        the attention of the row (default: `varlen_attend` over `cu_seqlens`)."""
        if attend is None:
            attend = varlen_attend(cu_seqlens, max_seqlen, self.attention_backend, sequence_lengths)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = inputs_embeds
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, attend)
            if states is not None:
                states.append(x)
        x = self.norm(x)
        if states is not None:
            states[-1] = x
        return x, tuple(states) if states is not None else None

    def forward_cached(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, new, hidden) of new tokens after the cached ones.

        `attention_mask` (batch, cached + new) is 1 for real tokens, 0 for left padding; the new
        tokens' keys and values are written into `cache` in place.
        """
        new = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        if total != cache.length + new:
            raise InputError(
                f"attention_mask covers {total} tokens, the cache holds {cache.length} + {new} new"
            )
        past = total - new
        device = inputs_embeds.device
        causal = torch.ones(new, total, dtype=torch.bool, device=device).tril(past)
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        # Every token may see itself, so a padding row is never fully masked: a fully masked row
        # gives NaN, and NaN keys of padding would leak into real rows as 0 * NaN.
        itself = torch.zeros(new, total, dtype=torch.bool, device=device)
        itself[torch.arange(new, device=device), past + torch.arange(new, device=device)] = True
        mask = mask | itself[None, None]
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = inputs_embeds
        for layer in self.layers:
            x = layer.forward_cached(x, cos, sin, mask, cache)
        cache.advance(new)
        return self.norm(x)

    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        sequence_lengths: Sequence[int],
        cache: KVCache,
        slots: PromptSlots,
    ) -> torch.Tensor:
        """Final-norm hidden states (tokens, hidden) of prompts packed in one row, computed by the
        packed path (`forward`'s layers and attention, no padding) while every layer's keys and
        values go to their `slots` in the empty `cache`, which then holds `slots.width` columns.
        """
        if cache.length:
            raise InputError(f"prefill needs an empty cache, this one holds {cache.length} tokens")
        attend = varlen_attend(
            cu_seqlens, max(sequence_lengths), self.attention_backend, sequence_lengths
        )
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = inputs_embeds
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, _caching(attend, cache, index, slots))
        cache.advance(slots.width)
        return self.norm(x)


def _caching(attend: Attend, cache: KVCache, layer: int, slots: PromptSlots) -> Attend:
    """`attend` that first stores the layer's keys and values (after RoPE) in the cache."""

    def attend_and_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cache.scatter(layer, k, v, slots)
        return attend(q, k, v)

    return attend_and_store
