"""Variable-length ("packed") attention: many independent sequences in one tensor, no token
attending to another sequence, no padding. Shared by the RICE-ViT encoder (one sequence per image,
bidirectional) and ov_model's language model (one sequence per packed sample, causal).

Layout, the same for every backend:

- `q`: (total_tokens, num_heads, head_dim).
- `k`, `v`: (total_tokens, num_kv_heads, head_dim) with num_heads % num_kv_heads == 0. Grouped-query
  attention works with either the original kv heads (query head h reads kv head
  h // (num_heads // num_kv_heads), the `repeat_kv` convention) or kv heads already expanded to
  num_heads; both give the same result.
- `cu_seqlens`: (num_sequences + 1,) integer, cumulative lengths: sequence i is rows
  cu_seqlens[i]:cu_seqlens[i+1]; cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] ==
  total_tokens (empty sequences are allowed). int32 on q's device avoids a copy.
- `max_seqlen`: the longest sequence (GPU kernels size their launch with it).
- `sequence_lengths` (optional): the same lengths as host integers. The `sdpa` and `dense`
  backends need them on the host; given, they are used (checked against q's length, not against
  the device tensor) instead of reading `cu_seqlens` back from the device, a sync per call, so
  per layer. Callers that know them (the packed model does) pass them.
- `causal`: token i attends to tokens j <= i of its own sequence.
- Returns (total_tokens, num_heads, head_dim) in q's dtype. Scale defaults to 1/sqrt(head_dim);
  softmax accumulates in fp32 in every backend.

Backends (`backend=None` picks the first usable one in this order):

- `flash_attn`: flash-attn's `flash_attn_varlen_func`. CUDA, fp16/bf16, when installed (extra).
- `torch_varlen`: `torch.nn.attention.varlen.varlen_attn` (the flash kernels bundled with torch).
  CUDA, fp16/bf16.
- `sdpa`: `scaled_dot_product_attention` once per distinct sequence length, sequences of equal
  length batched together. Any device and dtype; the reference the GPU backends are tested
  against. Memory grows linearly with total_tokens (never a total x total mask); the cost is a
  Python loop over distinct lengths and a gather/scatter copy of q, k, v: negligible on CPU, slow
  on GPU when many lengths differ, which is why the kernels above come first there.
- `dense`: one SDPA call over the whole packed sequence with a (total x total) block-diagonal
  boolean mask, what the official HF code does. Memory is quadratic in total_tokens; it is never
  picked automatically and exists as a test oracle and as the benchmarks' baseline.
"""

import functools
import importlib.util
import inspect
import itertools
import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from rice_vit.errors import InputError

Backend = Literal["flash_attn", "torch_varlen", "sdpa", "dense"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
_AUTO_ORDER: tuple[Backend, ...] = ("flash_attn", "torch_varlen", "sdpa")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _torch_varlen_parameters() -> frozenset[str] | None:
    """Keyword parameters of torch's varlen_attn, or None when this torch has none. Its signature
    moved between releases (2.9: `is_causal`; later: `window_size`, `scale`, `enable_gqa`)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return frozenset(inspect.signature(varlen_attn).parameters)


def backend_unavailable_reason(backend: Backend, query: torch.Tensor) -> str | None:
    """Why `backend` cannot run on tensors like `query`, or None when it can."""
    if backend in ("sdpa", "dense"):
        return None
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {list(BACKENDS)}"
    if not query.is_cuda:
        return f"{backend} needs CUDA tensors, got device {query.device}"
    if query.dtype not in _KERNEL_DTYPES:
        return f"{backend} needs float16 or bfloat16, got {query.dtype}"
    if backend == "flash_attn" and not _flash_attn_installed():
        return "flash-attn is not installed (pip install 'rice-vit[flash-attn]')"
    if backend == "torch_varlen" and _torch_varlen_parameters() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    return None


def select_backend(query: torch.Tensor) -> Backend:
    """The backend `varlen_attention(backend=None)` uses for tensors like `query`."""
    for backend in _AUTO_ORDER:
        if backend_unavailable_reason(backend, query) is None:
            return backend
    raise AssertionError("sdpa is always available")  # pragma: no cover


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    backend: Backend | None = None,
    *,
    scale: float | None = None,
    sequence_lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence (layout in the module docstring); returns
    (total_tokens, num_heads, head_dim)."""
    _check_shapes(q, k, v, cu_seqlens, max_seqlen)
    if backend is None:
        backend = select_backend(q)
    else:
        reason = backend_unavailable_reason(backend, q)
        if reason is not None:
            raise InputError(f"varlen_attention backend {backend!r} unavailable: {reason}")
    if q.shape[0] == 0:
        return q.new_empty(q.shape)
    if backend == "flash_attn":
        return _flash_attn(q, k, v, cu_seqlens, max_seqlen, causal, scale)
    if backend == "torch_varlen":
        return _torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal, scale)
    if backend == "sdpa":
        lengths = _host_lengths(cu_seqlens, q.shape[0], sequence_lengths)
        return _sdpa_per_length(q, k, v, lengths, causal, scale)
    lengths = _host_lengths(cu_seqlens, q.shape[0], sequence_lengths)
    return _dense_mask(q, k, v, lengths, causal, scale)


def _check_shapes(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise InputError(
            "varlen_attention expects q, k, v of shape (total_tokens, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise InputError(
            f"varlen_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must match each other "
            f"and q {tuple(q.shape)} in tokens and head_dim"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise InputError(
            f"varlen_attention: query heads ({q.shape[1]}) must be a multiple of kv heads "
            f"({k.shape[1]})"
        )
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise InputError(
            "varlen_attention: q, k, v must share dtype and device; got "
            f"{q.dtype}/{q.device}, {k.dtype}/{k.device}, {v.dtype}/{v.device}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
        raise InputError(
            "varlen_attention: cu_seqlens must be a 1-D integer tensor of num_sequences + 1 "
            f"offsets, got shape {tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}"
        )
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise InputError(f"varlen_attention: max_seqlen must be an int >= 0, got {max_seqlen!r}")


def _host_lengths(
    cu_seqlens: torch.Tensor, total_tokens: int, sequence_lengths: Sequence[int] | None
) -> list[int]:
    """Sequence lengths, validated: the given host lengths, or cu_seqlens read back (one host
    sync on GPU)."""
    if sequence_lengths is not None:
        lengths = [int(n) for n in sequence_lengths]
        if (
            len(lengths) != cu_seqlens.numel() - 1
            or sum(lengths) != total_tokens
            or any(n < 0 for n in lengths)
        ):
            shown = lengths if len(lengths) <= 12 else [*lengths[:6], "...", *lengths[-6:]]
            raise InputError(
                f"varlen_attention: sequence_lengths {shown} must be {cu_seqlens.numel() - 1} "
                f"non-negative lengths (one per cu_seqlens interval) summing to total_tokens = "
                f"{total_tokens}"
            )
        return lengths
    offsets = cu_seqlens.tolist()
    lengths = [end - start for start, end in itertools.pairwise(offsets)]
    if offsets[0] != 0 or offsets[-1] != total_tokens or any(n < 0 for n in lengths):
        shown = offsets if len(offsets) <= 12 else [*offsets[:6], "...", *offsets[-6:]]
        raise InputError(
            f"varlen_attention: cu_seqlens {shown} must start at 0, never decrease and end at "
            f"total_tokens = {total_tokens}"
        )
    return lengths


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The flash kernels need unit stride in head_dim (a view of a fused qkv output has it)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """(..., tokens, heads, dim) -> (..., heads, tokens, dim), a view."""
    return x.transpose(-3, -2)


def _sdpa_per_length(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    starts_by_length: dict[int, list[int]] = {}
    start = 0
    for length in lengths:
        if length:
            starts_by_length.setdefault(length, []).append(start)
        start += length
    out = torch.empty_like(q)
    for length, starts in starts_by_length.items():
        if len(starts) == 1:  # a slice: a view, no gather copy
            rows = slice(starts[0], starts[0] + length)
            q_, k_, v_ = (x[rows].unsqueeze(0) for x in (q, k, v))
        else:
            # (sequences, length) token indices: one batched call for all equal-length sequences.
            # Built on the host, copied without blocking (a blocking copy waits for the queue).
            rows = (torch.tensor(starts)[:, None] + torch.arange(length)).to(
                q.device, non_blocking=True
            )
            q_, k_, v_ = q[rows], k[rows], v[rows]
        attended = F.scaled_dot_product_attention(
            _heads_first(q_),
            _heads_first(k_),
            _heads_first(v_),
            is_causal=causal,
            scale=scale,
            enable_gqa=gqa,
        )
        out[rows] = _heads_first(attended)  # a leading batch dim of 1 drops on a slice
    return out


def _dense_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    sequence_id = torch.repeat_interleave(
        torch.arange(len(lengths)), torch.tensor(lengths), output_size=q.shape[0]
    ).to(q.device, non_blocking=True)
    mask = sequence_id[:, None] == sequence_id[None, :]
    if causal:
        mask = mask.tril()
    attended = F.scaled_dot_product_attention(
        _heads_first(q).unsqueeze(0),
        _heads_first(k).unsqueeze(0),
        _heads_first(v).unsqueeze(0),
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return _heads_first(attended[0])


def _flash_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        softmax_scale=scale,
        causal=causal,
    )


def _torch_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    parameters = _torch_varlen_parameters() or frozenset()
    options: dict[str, object] = {}
    if "window_size" in parameters:
        options["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        options["is_causal"] = causal
    if scale is not None:
        if "scale" in parameters:
            options["scale"] = scale
        else:
            # Older signature without `scale`: fold it into q (the kernel multiplies by
            # 1/sqrt(head_dim)), exact up to one rounding of q.
            q = q * (scale * math.sqrt(q.shape[-1]))
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, **options)
