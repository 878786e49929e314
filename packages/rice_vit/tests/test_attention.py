"""varlen_attention: every backend against a float64 reference, isolation between sequences,
causal masking, grouped-query attention, input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rice_vit.attention import (
    BACKENDS,
    backend_unavailable_reason,
    select_backend,
    varlen_attention,
)
from rice_vit.errors import InputError

CPU_BACKENDS = ("sdpa", "dense")


def reference_attention(q, k, v, lengths, causal, scale=None):
    """Explicit softmax attention, one sequence at a time, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    out, start = torch.zeros_like(q), 0
    for length in lengths:
        rows = slice(start, start + length)
        scores = torch.einsum("qhd,khd->hqk", q[rows], k[rows]) * scale
        if causal:
            scores = scores.masked_fill(
                torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf")
            )
        out[rows] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[rows])
        start += length
    return out


def packed(lengths, heads=4, kv_heads=4, head_dim=16, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim, generator=generator).to(dtype)
    k = torch.randn(total, kv_heads, head_dim, generator=generator).to(dtype)
    v = torch.randn(total, kv_heads, head_dim, generator=generator).to(dtype)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu_seqlens, max(lengths)


LENGTHS = [7, 1, 0, 33, 7, 7, 20]  # repeated lengths (batched path), a 1-token and an empty one


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backends_match_a_float64_reference(backend, causal):
    q, k, v, cu, max_len = packed(LENGTHS)
    out = varlen_attention(q, k, v, cu, max_len, causal=causal, backend=backend)
    expected = reference_attention(q, k, v, LENGTHS, causal)
    assert out.dtype == torch.float32
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(any),
    causal=st.booleans(),
    kv_heads=st.sampled_from([1, 2, 4]),
)
def test_sdpa_backend_matches_the_reference_for_any_packing(lengths, causal, kv_heads):
    q, k, v, cu, max_len = packed(lengths, heads=4, kv_heads=kv_heads, head_dim=8)
    out = varlen_attention(q, k, v, cu, max_len, causal=causal, backend="sdpa")
    expected = reference_attention(q, k, v, lengths, causal)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grouped_query_attention_equals_pre_expanded_kv_heads(backend):
    q, k, v, cu, max_len = packed(LENGTHS, heads=8, kv_heads=2)
    grouped = varlen_attention(q, k, v, cu, max_len, causal=True, backend=backend)
    expanded = varlen_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), cu, max_len, True, backend
    )
    torch.testing.assert_close(grouped, expanded, atol=1e-6, rtol=1e-6)
    reference = reference_attention(q, k, v, LENGTHS, causal=True)
    torch.testing.assert_close(grouped.double(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_explicit_scale_is_applied(backend):
    q, k, v, cu, max_len = packed([9, 4])
    out = varlen_attention(q, k, v, cu, max_len, backend=backend, scale=0.05)
    expected = reference_attention(q, k, v, [9, 4], causal=False, scale=0.05)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_changing_one_sequence_leaves_every_other_output_bitwise_unchanged():
    q, k, v, cu, max_len = packed(LENGTHS)
    before = varlen_attention(q, k, v, cu, max_len, backend="sdpa")
    rows = slice(8, 41)  # the 33-token sequence
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    for tensor in (q2, k2, v2):
        tensor[rows] += 3.0
    after = varlen_attention(q2, k2, v2, cu, max_len, backend="sdpa")
    assert not torch.equal(before[rows], after[rows])
    assert torch.equal(before[:8], after[:8])
    assert torch.equal(before[41:], after[41:])


def test_causal_first_token_of_each_sequence_sees_only_itself():
    q, k, v, cu, max_len = packed([5, 6])
    out = varlen_attention(q, k, v, cu, max_len, causal=True, backend="sdpa")
    torch.testing.assert_close(out[0], v[0])
    torch.testing.assert_close(out[5], v[5])


def test_bfloat16_sdpa_is_close_to_the_float64_reference():
    q, k, v, cu, max_len = packed(LENGTHS, dtype=torch.bfloat16)
    out = varlen_attention(q, k, v, cu, max_len, causal=True)
    assert out.dtype == torch.bfloat16
    expected = reference_attention(q, k, v, LENGTHS, causal=True)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_gradients_of_the_sdpa_backend_equal_the_dense_mask_ones():
    grads = {}
    for backend in CPU_BACKENDS:
        q, k, v, cu, max_len = packed(LENGTHS, heads=4, kv_heads=2)
        for tensor in (q, k, v):
            tensor.requires_grad_(True)
        varlen_attention(
            q, k, v, cu, max_len, causal=True, backend=backend
        ).square().sum().backward()
        grads[backend] = (q.grad, k.grad, v.grad)
    for ours, dense in zip(grads["sdpa"], grads["dense"], strict=True):
        torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-5)


def test_cpu_tensors_select_sdpa_and_gpu_backends_explain_why_not():
    q, k, v, cu, max_len = packed([4])
    assert select_backend(q) == "sdpa"
    assert "needs CUDA" in backend_unavailable_reason("torch_varlen", q)
    with pytest.raises(InputError, match=r"backend 'flash_attn' unavailable: .*needs CUDA"):
        varlen_attention(q, k, v, cu, max_len, backend="flash_attn")
    with pytest.raises(InputError, match="unknown backend 'xformers'"):
        varlen_attention(q, k, v, cu, max_len, backend="xformers")
    assert set(BACKENDS) == {"flash_attn", "torch_varlen", "sdpa", "dense"}


def test_no_tokens_give_an_empty_output():
    q, k, v = (torch.empty(0, 4, 16) for _ in range(3))
    out = varlen_attention(q, k, v, torch.zeros(1, dtype=torch.int32), 0)
    assert out.shape == (0, 4, 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v, cu: (q[0], k, v, cu), "expects q, k, v of shape"),
        (lambda q, k, v, cu: (q, k[:-1], v[:-1], cu), "must match each other and q"),
        (lambda q, k, v, cu: (q, k[:, :3], v[:, :3], cu), r"query heads \(4\) must be a multiple"),
        (lambda q, k, v, cu: (q, k.double(), v.double(), cu), "must share dtype"),
        (lambda q, k, v, cu: (q, k, v, cu.float()), "cu_seqlens must be a 1-D integer"),
        (lambda q, k, v, cu: (q, k, v, cu[:-1]), "must start at 0, never decrease and end at"),
        (lambda q, k, v, cu: (q, k, v, cu.flip(0)), "must start at 0"),
    ],
)
def test_inconsistent_inputs_are_rejected(change, message):
    q, k, v, cu, max_len = packed([3, 5])
    with pytest.raises(InputError, match=message):
        varlen_attention(*change(q, k, v, cu), max_len, backend="sdpa")


def fake_kernel(calls):
    """Stands in for a GPU varlen kernel on CPU: records its arguments, computes the reference."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, **options):
        calls.append({"cu": cu_q, "max": (max_q, max_k), "heads": (q.shape[1], k.shape[1])})
        calls[-1] |= options
        window = options.get("window_size")
        causal = options.get("is_causal", options.get("causal", window == (-1, 0)))
        lengths = cu_q.diff().tolist()
        scale = options.get("scale", options.get("softmax_scale"))
        return reference_attention(q, k, v, lengths, causal, scale).float()

    return kernel


@pytest.mark.parametrize("causal", [False, True])
def test_torch_varlen_glue_passes_causality_scale_and_int32_offsets(monkeypatch, causal):
    import torch.nn.attention.varlen as torch_varlen

    from rice_vit import attention

    calls = []
    monkeypatch.setattr(torch_varlen, "varlen_attn", fake_kernel(calls))
    q, k, v, cu, max_len = packed([5, 9], heads=4, kv_heads=2)
    out = attention._torch_varlen(q, k, v, cu.long(), max_len, causal, 0.3)
    expected = reference_attention(q, k, v, [5, 9], causal, scale=0.3)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    (call,) = calls
    assert call["cu"].dtype == torch.int32
    assert call["max"] == (9, 9)
    parameters = attention._torch_varlen_parameters()
    if "window_size" in parameters:
        assert call["window_size"] == ((-1, 0) if causal else (-1, -1))
    if "enable_gqa" in parameters:
        assert call["heads"] == (4, 2)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_glue_passes_causality_scale_and_int32_offsets(monkeypatch, causal):
    import sys
    import types

    from rice_vit import attention

    calls = []
    kernel = fake_kernel(calls)

    def flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **o
    ):
        return kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **o)

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    q, k, v, cu, max_len = packed([5, 9], heads=4, kv_heads=2)
    out = attention._flash_attn(q, k, v, cu.long(), max_len, causal, None)
    expected = reference_attention(q, k, v, [5, 9], causal)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    (call,) = calls
    assert (call["cu"].dtype, call["causal"], call["heads"]) == (torch.int32, causal, (4, 2))


# ----------------------------------------------------------------------------------- GPU only


def gpu_packed(lengths, heads=8, kv_heads=8, dtype=torch.bfloat16):
    q, k, v, cu, max_len = packed(lengths, heads=heads, kv_heads=kv_heads, head_dim=64)
    return (*(t.to("cuda", dtype) for t in (q, k, v)), cu.cuda(), max_len)


GPU_LENGTHS = [1, 17, 256, 1025, 3, 256, 4000]


@pytest.mark.gpu
def test_cuda_bfloat16_picks_a_kernel_and_cuda_float32_falls_back_to_sdpa():
    q = torch.zeros(4, 2, 64, device="cuda", dtype=torch.bfloat16)
    assert select_backend(q) in ("flash_attn", "torch_varlen")
    assert select_backend(q.float()) == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_torch_varlen_agrees_with_sdpa_and_the_reference_in_bfloat16(causal, kv_heads):
    q, k, v, cu, max_len = gpu_packed(GPU_LENGTHS, kv_heads=kv_heads)
    kernel = varlen_attention(q, k, v, cu, max_len, causal=causal, backend="torch_varlen")
    sdpa = varlen_attention(q, k, v, cu, max_len, causal=causal, backend="sdpa")
    torch.testing.assert_close(kernel, sdpa, atol=2e-2, rtol=2e-2)
    reference = reference_attention(q.cpu(), k.cpu(), v.cpu(), GPU_LENGTHS, causal)
    torch.testing.assert_close(kernel.cpu().double(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_agrees_with_torch_varlen(causal):
    pytest.importorskip("flash_attn")
    q, k, v, cu, max_len = gpu_packed(GPU_LENGTHS, kv_heads=2)
    flash = varlen_attention(q, k, v, cu, max_len, causal=causal, backend="flash_attn")
    torch_kernel = varlen_attention(q, k, v, cu, max_len, causal=causal, backend="torch_varlen")
    torch.testing.assert_close(flash, torch_kernel, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_torch_varlen_gradients_agree_with_sdpa():
    grads = {}
    for backend in ("torch_varlen", "sdpa"):
        q, k, v, cu, max_len = gpu_packed(GPU_LENGTHS)
        for tensor in (q, k, v):
            tensor.requires_grad_(True)
        out = varlen_attention(q, k, v, cu, max_len, causal=True, backend=backend)
        out.float().square().sum().backward()
        grads[backend] = (q.grad, k.grad, v.grad)
    for kernel, sdpa in zip(grads["torch_varlen"], grads["sdpa"], strict=True):
        torch.testing.assert_close(kernel.float(), sdpa.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_host_sequence_lengths_replace_reading_cu_seqlens_back(backend, monkeypatch):
    q, k, v, cu, max_len = packed(LENGTHS)
    expected = varlen_attention(q, k, v, cu, max_len, causal=True, backend=backend)

    def no_reads(self):
        raise AssertionError("cu_seqlens was read back although the lengths were given")

    monkeypatch.setattr(torch.Tensor, "tolist", no_reads)
    out = varlen_attention(
        q, k, v, cu, max_len, causal=True, backend=backend, sequence_lengths=tuple(LENGTHS)
    )
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "lengths", [LENGTHS[:-1], [*LENGTHS[:-1], 21], [*LENGTHS[:-2], 27, -7]], ids=str
)
def test_host_sequence_lengths_that_do_not_fit_the_tokens_are_refused(lengths):
    q, k, v, cu, max_len = packed(LENGTHS)
    with pytest.raises(InputError, match="sequence_lengths"):
        varlen_attention(q, k, v, cu, max_len, backend="sdpa", sequence_lengths=lengths)
