"""The preallocated KV cache and the cached attention paths: written in place, kv heads never
expanded, prompts right-aligned, and the same attention as expanding the heads."""

import pytest
import torch
import torch.nn.functional as F

from ov_model.errors import InputError
from ov_model.kv_cache import KVCache, PromptSlots
from ov_model.language_model import rope_cos_sin
from rice_vit.rope import apply_rope


def test_writes_go_in_place_into_buffers_of_the_kv_heads():
    cache = KVCache.empty(num_layers=2, batch=3, capacity=10)
    first = torch.randn(3, 2, 4, 8)  # (batch, kv_heads, new, head_dim)
    keys, values = cache.write(1, first, -first)
    buffer = cache.keys[1]
    assert buffer.shape == (3, 2, 10, 8)
    assert cache.keys[0] is None
    cache.advance(4)
    step = torch.randn(3, 2, 1, 8)
    keys, values = cache.write(1, step, -step)
    assert cache.keys[1] is buffer
    assert keys.data_ptr() == buffer.data_ptr()
    assert torch.equal(keys, torch.cat([first, step], dim=2))
    assert torch.equal(values, -keys)


def test_writing_past_the_capacity_is_refused():
    cache = KVCache.empty(num_layers=1, batch=1, capacity=3)
    cache.write(0, torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))
    cache.advance(3)
    with pytest.raises(InputError, match="cannot hold 4"):
        cache.write(0, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))


def test_buffers_start_at_the_reserve_and_double_keeping_what_was_written():
    cache = KVCache.empty(num_layers=1, batch=2, capacity=9, reserve=3)
    written = torch.randn(2, 1, 9, 4)
    for column in range(9):
        step = written[:, :, column : column + 1]
        keys, values = cache.write(0, step, -step)
        cache.advance(1)
        assert torch.equal(keys, written[:, :, : column + 1])
        assert torch.equal(values, -keys)
        assert cache.keys[0].shape[2] == {0: 3, 1: 3, 2: 3, 3: 6, 4: 6, 5: 6}.get(column, 9)
    with pytest.raises(InputError, match="cannot hold 10"):
        cache.write(0, step, step)


def test_packed_prompts_are_scattered_right_aligned():
    slots = PromptSlots.right_aligned([2, 4, 1], "cpu")
    assert slots.width == 4
    assert slots.filled.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    cache = KVCache.empty(num_layers=1, batch=3, capacity=6)
    packed = torch.arange(1, 8, dtype=torch.float32)[:, None, None].expand(7, 2, 3)
    cache.scatter(0, packed, -packed, slots)
    columns = cache.keys[0][:, 0, :, 0]  # the token each column holds, 0 where none
    assert columns.tolist() == [[0, 0, 1, 2, 0, 0], [3, 4, 5, 6, 0, 0], [0, 0, 0, 7, 0, 0]]
    assert torch.equal(cache.values[0], -cache.keys[0])


def test_select_keeps_the_chosen_rows():
    cache = KVCache.empty(num_layers=1, batch=3, capacity=2)
    keys = torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 1)
    cache.write(0, keys, keys)
    cache.select(torch.tensor([2, 0]))
    assert cache.batch == 2
    assert cache.keys[0][:, 0, :, 0].tolist() == [[2, 2], [0, 0]]


def _expanded_heads_reference(attention, x, cos, sin, mask, past_k, past_v):
    """The attention the cache path must equal: kv heads expanded by repeat_interleave."""
    batch, new = x.shape[:2]
    shape = (batch, new, -1, attention.head_dim)
    q = attention.q_proj(x).view(shape)
    k = attention.k_proj(x).view(shape)
    v = attention.v_proj(x).view(shape)
    q, k = attention.q_norm(q), attention.k_norm(k)
    q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v.transpose(1, 2)], dim=2)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attention.o_proj(out.transpose(1, 2).reshape(batch, new, -1))


@pytest.mark.parametrize("new", [1, 3])  # one token: folded query heads; more: enable_gqa
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_attention_equals_expanding_the_kv_heads(make_model, new, dtype):
    model = make_model(30, num_attention_heads=8, num_key_value_heads=2).to(dtype)
    attention = model.language_model.layers[0].self_attn
    batch, past, hidden = 3, 5, model.config.text.hidden_size
    generator = torch.Generator().manual_seed(0)
    past_k, past_v = (torch.randn(batch, 2, past, 16, generator=generator).to(dtype) for _ in "kv")
    x = torch.randn(batch, new, hidden, generator=generator).to(dtype)
    positions = torch.arange(past, past + new).expand(batch, new)
    cos, sin = rope_cos_sin(positions, 16, 1e6)
    mask = torch.ones(batch, 1, new, past + new, dtype=torch.bool).tril(past)
    mask[0, ..., :2] = False  # a left-padded row
    cache = KVCache.empty(num_layers=2, batch=batch, capacity=past + new + 2)
    cache.write(0, past_k, past_v)
    cache.advance(past)
    with torch.no_grad():
        got = attention.forward_cached(x, cos, sin, mask, cache)
        expected = _expanded_heads_reference(attention, x, cos, sin, mask, past_k, past_v)
    assert cache.keys[0].dtype == dtype
    assert cache.keys[0].shape[1] == 2
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_prefill_gives_the_packed_forward_bit_for_bit_and_fills_the_cache(make_model):
    model = make_model(31)
    language_model = model.language_model
    lengths = [3, 7, 1]
    embeds = torch.randn(sum(lengths), model.config.text.hidden_size)
    cu = torch.tensor([0, 3, 10, 11], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])
    slots = PromptSlots.right_aligned(lengths, "cpu")
    cache = KVCache.empty(len(language_model.layers), batch=3, capacity=9)
    with torch.no_grad():
        hidden = language_model.prefill(embeds, positions, cu, lengths, cache, slots)
        expected, _ = language_model(embeds, positions, cu, 7, sequence_lengths=lengths)
    assert torch.equal(hidden, expected)
    assert cache.length == 7
    for buffer in cache.keys:
        assert buffer[slots.rows, :, slots.columns].abs().sum(-1).min() > 0  # prompt tokens
        padding = buffer.transpose(1, 2)[:, :7][~slots.filled]  # (padding columns, heads, dim)
        assert padding.abs().max() == 0
