"""Causal attention of one packed row whose tokens are split over the ranks of a context-parallel
group, per sample (no token sees another sample), on CPU and GPU.

Why our own: torch's context parallel (`torch.distributed.tensor.experimental.context_parallel`)
runs SDPA's CUDA kernels only and masks causally over the whole sequence, so it can neither run
in CPU tests nor keep the packed samples of a row apart. Here every rank holds some contiguous
pieces of the row (`RowPieces`, e.g. the zigzag layout of `context_parallel`), and attention is
computed block by block: this rank's queries against one rank's keys at a time, each block
returning its output and the log-sum-exp (LSE) of its scores, the blocks merged exactly by their
LSEs (the online softmax of flash attention). Two ways to bring the keys:

- `allgather_attention`: all-gather every rank's K and V (backward reduce-scatters dK and dV),
  then attend to all of them. One collective per layer and direction, simple and robust; each
  rank briefly holds the whole row's K and V (keys are kv_heads wide, so with GQA this is a
  fraction of the activations). The simple path, and the default.
- `ring_attention`: K and V travel around the ring of ranks (`batch_isend_irecv`, the next
  block in flight while the current one is computed); each rank only ever holds two blocks. The
  backward rotates K and V again, accumulates dQ locally and sends each block's dK and dV along
  with it, so they arrive home after a full turn. The scalable path for rows whose K/V do not
  fit on one rank.

Masks come from the row's host layout, never from the device: a pair of pieces is either the
same piece (causal, per sample inside it), a key piece wholly in the past of the query piece (no
mask at all: only the one sample that spans both pieces, if any, sees across; its rows form one
dense rectangle) or a key piece in the future (skipped: no work). With the zigzag layout this
skips about half of the blocks, and short samples skip more.

Per-block math: on CPU (and for fp32 on GPU) scores, softmax and its backward in fp32 on the
block (the flash backward: P from the global LSE, D = rowsum(dO * O), dS = P * (dP - D)); only
q, k, v, the output and the LSE are saved for backward, the scores are recomputed per block. On
CUDA in fp16/bf16 each block calls a varlen flash kernel, which returns the LSE, and its varlen
backward with the merged output and LSE: flash-attn's when it is installed, else the one bundled
with torch's CUDA build (`aten._flash_attention_forward/backward`, kv heads repeated for GQA).
Grouped-query attention (fewer kv heads than query heads) works in every path: query head h
reads kv head h // groups.
"""

import functools
import importlib.util
import inspect
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ov_train.errors import TrainingError

_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
MATH_SEGMENT = 256
"""The fp32 math path cuts a diagonal block at sample boundaries into blocks of at least this
many rows (see `AttentionPlan.math_pairs`)."""


# ------------------------------------------------------------------------------ host layout
@dataclass(frozen=True)
class BlockPair:
    """Queries of one piece of this rank against keys of one piece of another (or this) rank.

    `q_rows` are rows of this rank's local tensor, `k_rows` rows of the key rank's local tensor.
    A diagonal pair is one piece against itself: causal per sample, with `cu_seqlens` the sample
    boundaries clipped to the piece (relative to its start). An off-diagonal pair is dense: every
    query row sees every key row (the rows of the one sample spanning both pieces)."""

    q_rows: slice
    k_rows: slice
    cu_seqlens: tuple[int, ...] | None
    """Diagonal: clipped sample boundaries, from 0 to the piece's length. None: dense pair."""

    @property
    def diagonal(self) -> bool:
        return self.cu_seqlens is not None


@dataclass(frozen=True)
class RowPieces:
    """Which rows of a packed row each rank of the group holds: `pieces[rank]` is a tuple of
    global [start, end) ranges, its local tensor their concatenation in that order. Pieces of
    different ranks are disjoint; two pieces are either equal or disjoint (the layouts used here
    split the row into equal chunks)."""

    row_length: int
    pieces: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def size(self) -> int:
        return len(self.pieces)

    def local_tokens(self, rank: int) -> int:
        return sum(end - start for start, end in self.pieces[rank])

    def global_rows(self, rank: int) -> torch.Tensor:
        """(local tokens,) int64: the global row of each of `rank`'s local rows."""
        return torch.cat([torch.arange(start, end) for start, end in self.pieces[rank]])


@dataclass
class AttentionPlan:
    """What one rank needs to attend over a split row: the block pairs against each rank's keys,
    and (on the device, built on first use) the masks of the diagonal pairs."""

    rank: int
    pieces: RowPieces
    pairs: tuple[tuple[BlockPair, ...], ...]
    """pairs[s]: this rank's queries against rank s's keys (empty: nothing to compute)."""
    position_ids: torch.Tensor
    """(local tokens,) int64 host: position of each local row inside its sample."""
    _masks: dict = field(default_factory=dict, repr=False)
    _math_pairs: dict = field(default_factory=dict, repr=False)
    _cu_device: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, pieces: RowPieces, rank: int, cu_seqlens: torch.Tensor) -> "AttentionPlan":
        """The plan of `rank` for a row with sample boundaries `cu_seqlens` (host)."""
        cu = cu_seqlens.to("cpu", torch.int64)
        if int(cu[-1]) != pieces.row_length:
            raise TrainingError(
                f"context parallel: cu_seqlens ends at {int(cu[-1])}, the row has "
                f"{pieces.row_length} tokens"
            )
        rows = torch.arange(pieces.row_length)
        sample = torch.searchsorted(cu, rows, right=True) - 1
        starts, ends = cu[sample], cu[sample + 1]
        pairs = tuple(
            tuple(_pairs(pieces.pieces[rank], pieces.pieces[other], cu, starts, ends))
            for other in range(pieces.size)
        )
        local = pieces.global_rows(rank)
        return cls(rank, pieces, pairs, local - starts[local])

    def diagonal_mask(self, pair: BlockPair, device: torch.device) -> torch.Tensor:
        """(queries, keys) bool of a diagonal pair: key j visible to query i (same sample, not
        later), on `device`, built once per pair."""
        key = (pair.q_rows.start, pair.q_rows.stop, device)
        if key not in self._masks:
            positions = self.position_ids[pair.q_rows]
            index = torch.arange(positions.shape[0])
            start = index - positions
            mask = (index[None, :] >= start[:, None]) & (index[None, :] <= index[:, None])
            self._masks[key] = mask.to(device, non_blocking=True)
        return self._masks[key]

    def math_pairs(self, pair: BlockPair) -> tuple[BlockPair, ...]:
        """The pairs the fp32 math path computes for `pair`: a diagonal pair cut at sample
        boundaries into segments of at least MATH_SEGMENT rows (no query sees across a cut, so
        the masked squares outside the segments are never computed; a piece of many short
        samples still makes few, larger blocks), a dense pair as it is."""
        if not pair.diagonal:
            return (pair,)
        if id(pair) not in self._math_pairs:
            cuts, last = [0], 0
            for bound in pair.cu_seqlens[1:-1]:
                if bound - last >= MATH_SEGMENT:
                    cuts.append(bound)
                    last = bound
            cuts.append(pair.cu_seqlens[-1])
            base_q, base_k = pair.q_rows.start, pair.k_rows.start
            self._math_pairs[id(pair)] = tuple(
                BlockPair(
                    slice(base_q + start, base_q + end),
                    slice(base_k + start, base_k + end),
                    tuple(b - start for b in pair.cu_seqlens if start <= b <= end),
                )
                for start, end in itertools.pairwise(cuts)
            )
        return self._math_pairs[id(pair)]

    def kernel_cu_seqlens(self, pair: BlockPair, device: torch.device):
        """(cu_q, cu_k, max_q, max_k) of a pair for a varlen kernel, device tensors built once."""
        key = (id(pair), device)
        if key not in self._cu_device:
            if pair.diagonal:
                cu = torch.tensor(pair.cu_seqlens, dtype=torch.int32)
                longest = int(cu.diff().max())
                self._cu_device[key] = (cu.to(device),) * 2 + (longest, longest)
            else:
                q = pair.q_rows.stop - pair.q_rows.start
                k = pair.k_rows.stop - pair.k_rows.start
                cu_q = torch.tensor([0, q], dtype=torch.int32).to(device)
                cu_k = torch.tensor([0, k], dtype=torch.int32).to(device)
                self._cu_device[key] = (cu_q, cu_k, q, k)
        return self._cu_device[key]


def _pairs(mine, theirs, cu, starts, ends):
    """Block pairs of query pieces `mine` against key pieces `theirs` (see `BlockPair`)."""
    q_offset = 0
    for q_start, q_end in mine:
        k_offset = 0
        for k_start, k_end in theirs:
            if (q_start, q_end) == (k_start, k_end):
                inside = cu[(cu > q_start) & (cu < q_end)] - q_start
                bounds = (0, *inside.tolist(), q_end - q_start)
                yield BlockPair(
                    slice(q_offset, q_offset + q_end - q_start),
                    slice(k_offset, k_offset + k_end - k_start),
                    tuple(dict.fromkeys(bounds)),  # empty samples dropped
                )
            elif k_end <= q_start and int(starts[q_start]) < k_end:
                # the one sample holding the query piece's first row reaches into the key piece
                seen_q = min(int(ends[q_start]), q_end) - q_start
                first_k = max(int(starts[q_start]), k_start) - k_start
                yield BlockPair(
                    slice(q_offset, q_offset + seen_q),
                    slice(k_offset + first_k, k_offset + k_end - k_start),
                    None,
                )
            elif not (k_end <= q_start or k_start >= q_end):
                raise TrainingError(
                    f"context parallel: pieces [{q_start}, {q_end}) and [{k_start}, {k_end}) "
                    "overlap without being equal"
                )
            k_offset += k_end - k_start
        q_offset += q_end - q_start


# ------------------------------------------------------------------------- per-block compute
@functools.cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def block_kernel(q: torch.Tensor) -> str | None:
    """The varlen kernel blocks of tensors like `q` run: "flash_attn" (flash-attn installed),
    "torch_flash" (the flash kernels bundled with torch's CUDA build), or None (fp32 math)."""
    if not (q.is_cuda and q.dtype in _KERNEL_DTYPES):
        return None
    if _flash_attn_installed():
        return "flash_attn"
    available = getattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    return "torch_flash" if available() else None


def use_kernel(q: torch.Tensor) -> bool:
    """Whether blocks of tensors like `q` run a varlen kernel (else the fp32 math)."""
    return block_kernel(q) is not None


def _grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(tokens, heads, d) -> (tokens, kv_heads, groups, d): query head h reads kv head
    h // groups (the repeat_kv convention)."""
    return q.view(q.shape[0], kv_heads, q.shape[1] // kv_heads, q.shape[2])


def _block_scores(q, k, pair: BlockPair, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """fp32 scores (kv_heads, groups, queries, keys), masked entries -inf."""
    qg = _grouped(q[pair.q_rows].float(), k.shape[1])
    scores = torch.einsum("qhgd,khd->hgqk", qg, k[pair.k_rows].float()) * scale
    if pair.diagonal:
        mask = plan.diagonal_mask(pair, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


def _forward_pair(q, k, v, pair, plan, scale):
    """(out (queries, heads, d) fp32, lse (heads, queries) fp32) of one pair."""
    scores = _block_scores(q, k, pair, plan, scale)
    lse = scores.logsumexp(-1)  # every query of a pair sees at least one key
    probabilities = torch.exp(scores - lse[..., None])
    out = torch.einsum("hgqk,khd->qhgd", probabilities, v[pair.k_rows].float())
    return out.flatten(1, 2), lse.flatten(0, 1)


def _merge(out, lse, rows: slice, block_out, block_lse) -> None:
    """Fold a block's (out, lse) into the running (out, lse) of `rows`, in place."""
    old = lse[:, rows]
    new = torch.logaddexp(old, block_lse)
    out[rows] = (
        out[rows] * torch.exp(old - new).T[..., None]
        + block_out * torch.exp(block_lse - new).T[..., None]
    )
    lse[:, rows] = new


def _backward_pair(q, k, v, out, lse, dout, delta, pair, plan, scale):
    """(dq, dk, dv) fp32 of one pair's rows, from the merged out and lse."""
    kv_heads = k.shape[1]
    scores = _block_scores(q, k, pair, plan, scale)
    rows = pair.q_rows
    p = torch.exp(scores - lse[:, rows].view(kv_heads, -1, scores.shape[2])[..., None])
    do = _grouped(dout[rows].float(), kv_heads)
    keys, values = k[pair.k_rows].float(), v[pair.k_rows].float()
    dv = torch.einsum("hgqk,qhgd->khd", p, do)
    dp = torch.einsum("qhgd,khd->hgqk", do, values)
    ds = p * (dp - delta[:, rows].view(kv_heads, -1, scores.shape[2])[..., None])
    dq = torch.einsum("hgqk,khd->qhgd", ds, keys).flatten(1, 2) * scale
    dk = torch.einsum("hgqk,qhgd->khd", ds, _grouped(q[rows].float(), kv_heads)) * scale
    return dq, dk, dv


def _forward_block(q, k, v, pair, plan, scale, out, lse) -> None:
    """Fold one pair's attention into the running (out, lse), in place."""
    if use_kernel(q):
        block_out, block_lse = _kernel_forward(q, k, v, pair, plan, scale)
        _merge(out, lse, pair.q_rows, block_out, block_lse)
        return
    for part in plan.math_pairs(pair):
        block_out, block_lse = _forward_pair(q, k, v, part, plan, scale)
        _merge(out, lse, part.q_rows, block_out, block_lse)


def _backward_block(q, k, v, out, lse, dout, delta, pair, plan, scale, dq, dk, dv) -> None:
    """Add one pair's gradients into dq (this rank's rows) and dk, dv (the key rank's rows)."""
    if use_kernel(q):
        parts = [(pair, _kernel_backward(q, k, v, out, lse, dout, pair, plan, scale))]
    else:
        parts = [
            (part, _backward_pair(q, k, v, out, lse, dout, delta, part, plan, scale))
            for part in plan.math_pairs(pair)
        ]
    for part, (dq_part, dk_part, dv_part) in parts:
        dq[part.q_rows] += dq_part
        dk[part.k_rows] += dk_part
        dv[part.k_rows] += dv_part


def _expanded(x: torch.Tensor, heads: int) -> torch.Tensor:
    """kv heads repeated to `heads` (query head h reads kv head h // groups), contiguous."""
    groups = heads // x.shape[1]
    return (x.repeat_interleave(groups, dim=1) if groups > 1 else x).contiguous()


def _folded(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The gradient of `_expanded`: each kv head's groups summed."""
    return grad.view(grad.shape[0], kv_heads, -1, grad.shape[2]).sum(2)


def _kernel_forward(q, k, v, pair, plan, scale):
    cu_q, cu_k, max_q, max_k = plan.kernel_cu_seqlens(pair, q.device)
    if block_kernel(q) == "torch_flash":
        # positional arguments: the schema's keywords moved between torch releases; GQA by
        # repeating the block's kv heads (whether the bundled kernel takes fewer kv heads is
        # not part of its contract)
        out, lse, *_ = torch.ops.aten._flash_attention_forward(
            q[pair.q_rows].contiguous(),
            _expanded(k[pair.k_rows], q.shape[1]),
            _expanded(v[pair.k_rows], q.shape[1]),
            cu_q,
            cu_k,
            max_q,
            max_k,
            0.0,
            pair.diagonal,
            False,
            scale=scale,
        )
        return out.float(), lse.float()
    from flash_attn import flash_attn_varlen_func

    out, lse, _ = flash_attn_varlen_func(
        q[pair.q_rows],
        k[pair.k_rows],
        v[pair.k_rows],
        cu_q,
        cu_k,
        max_q,
        max_k,
        softmax_scale=scale,
        causal=pair.diagonal,
        return_attn_probs=True,
    )
    return out.float(), lse.float()


@functools.cache
def _varlen_backward():
    """flash-attn's varlen backward and its keyword names (they moved between releases)."""
    from flash_attn.flash_attn_interface import _flash_attn_varlen_backward

    # flash-attn >= 2.6 wraps it as a torch custom op, whose own signature is (*args, **kwargs)
    function = getattr(_flash_attn_varlen_backward, "_init_fn", _flash_attn_varlen_backward)
    return _flash_attn_varlen_backward, frozenset(inspect.signature(function).parameters)


def _kernel_backward(q, k, v, out, lse, dout, pair, plan, scale):
    if block_kernel(q) == "torch_flash":
        return _torch_flash_backward(q, k, v, out, lse, dout, pair, plan, scale)
    backward, names = _varlen_backward()
    cu_q, cu_k, max_q, max_k = plan.kernel_cu_seqlens(pair, q.device)
    rows, keys = pair.q_rows, pair.k_rows
    q_, k_, v_ = q[rows].contiguous(), k[keys].contiguous(), v[keys].contiguous()
    dq, dk, dv = torch.empty_like(q_), torch.empty_like(k_), torch.empty_like(v_)
    options = dict(
        dout=dout[rows].contiguous(),
        q=q_,
        k=k_,
        v=v_,
        out=out[rows].contiguous(),
        softmax_lse=lse[:, rows].contiguous(),
        dq=dq,
        dk=dk,
        dv=dv,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        dropout_p=0.0,
        softmax_scale=scale,
        causal=pair.diagonal,
        window_size=(-1, -1),
        window_size_left=-1,
        window_size_right=-1,
        softcap=0.0,
        alibi_slopes=None,
        deterministic=False,
        rng_state=None,
    )
    backward(**{name: value for name, value in options.items() if name in names})
    return dq.float(), dk.float(), dv.float()


def _torch_flash_backward(q, k, v, out, lse, dout, pair, plan, scale):
    cu_q, cu_k, max_q, max_k = plan.kernel_cu_seqlens(pair, q.device)
    rows, keys = pair.q_rows, pair.k_rows
    no_dropout = torch.zeros(2, dtype=torch.uint64, device=q.device)  # philox state, unread
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        dout[rows].contiguous(),
        q[rows].contiguous(),
        _expanded(k[keys], q.shape[1]),
        _expanded(v[keys], q.shape[1]),
        out[rows].contiguous(),
        lse[:, rows].contiguous(),
        cu_q,
        cu_k,
        max_q,
        max_k,
        0.0,
        pair.diagonal,
        no_dropout,
        torch.empty(0, device=q.device),
        scale=scale,
    )
    return dq.float(), _folded(dk.float(), k.shape[1]), _folded(dv.float(), v.shape[1])


def _attend_blocks(q, blocks, plan, scale):
    """Merged (out fp32, lse fp32) of q against `blocks`: (rank, k, v) each."""
    out = q.new_zeros(q.shape, dtype=torch.float32)
    lse = q.new_full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32)
    for rank, k, v in blocks:
        for pair in plan.pairs[rank]:
            _forward_block(q, k, v, pair, plan, scale, out, lse)
    return out, lse


def _delta(out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """D = rowsum(dO * O) per head, (heads, queries) fp32."""
    return (dout.float() * out.float()).sum(-1).T.contiguous()


# -------------------------------------------------------------------------- all-gather path
class _AllGather(torch.autograd.Function):
    """Concatenate every rank's (tokens, ...) tensor in rank order; backward reduce-scatters."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        size = dist.get_world_size(group)
        gathered = x.new_empty((size * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(gathered, x.contiguous(), group=group)
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size = dist.get_world_size(ctx.group)
        local = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
        dist.reduce_scatter_tensor(local, grad.contiguous(), group=ctx.group)
        return local, None


class _GatheredAttention(torch.autograd.Function):
    """Local q against the gathered K/V of every rank (rank s's rows at s * local tokens)."""

    @staticmethod
    def forward(ctx, q, k_all, v_all, plan: AttentionPlan, scale: float):
        size = plan.pieces.size
        ks, vs = k_all.chunk(size), v_all.chunk(size)
        out, lse = _attend_blocks(q, [(s, ks[s], vs[s]) for s in range(size)], plan, scale)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k_all, v_all, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k_all, v_all, out, lse = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        delta = _delta(out, dout)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k_all.shape, dtype=torch.float32, device=q.device)
        dv = torch.zeros(v_all.shape, dtype=torch.float32, device=q.device)
        size = plan.pieces.size
        blocks = zip(
            k_all.chunk(size), v_all.chunk(size), dk.chunk(size), dv.chunk(size), strict=True
        )
        for rank, (k, v, dk_s, dv_s) in enumerate(blocks):
            for pair in plan.pairs[rank]:
                _backward_block(q, k, v, out, lse, dout, delta, pair, plan, scale, dq, dk_s, dv_s)
        return dq.to(q.dtype), dk.to(k_all.dtype), dv.to(v_all.dtype), None, None


def allgather_attention(q, k, v, plan: AttentionPlan, group) -> torch.Tensor:
    """Causal per-sample attention of this rank's q against the whole row (module docstring):
    K and V all-gathered. q (local tokens, heads, d), k/v (local tokens, kv_heads, d)."""
    _check(q, k, v, plan)
    k_all, v_all = _AllGather.apply(k, group), _AllGather.apply(v, group)
    return _GatheredAttention.apply(q, k_all, v_all, plan, 1.0 / math.sqrt(q.shape[-1]))


# -------------------------------------------------------------------------------- ring path
def _rotate(tensors, group, rank: int, size: int):
    """Send `tensors` to the next rank of the ring, receive the previous rank's; returns (the
    received buffers, the pending requests). Sends contiguous tensors only (gloo raises on the
    sender and leaves the receiver waiting otherwise)."""
    following = dist.get_global_rank(group, (rank + 1) % size)
    preceding = dist.get_global_rank(group, (rank - 1) % size)
    sent = [t.contiguous() for t in tensors]
    received = [torch.empty_like(t) for t in sent]
    operations = [dist.P2POp(dist.isend, t, following, group) for t in sent]
    operations += [dist.P2POp(dist.irecv, t, preceding, group) for t in received]
    return received, dist.batch_isend_irecv(operations)


def _wait(requests) -> None:
    for request in requests:
        request.wait()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: AttentionPlan, group, scale: float):
        rank, size = plan.rank, plan.pieces.size
        out = q.new_zeros(q.shape, dtype=torch.float32)
        lse = q.new_full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32)
        current = (k.contiguous(), v.contiguous())
        for step in range(size):
            pending = None
            if step < size - 1:  # the next block travels while this one is computed
                pending = _rotate(current, group, rank, size)
            source = (rank - step) % size
            for pair in plan.pairs[source]:
                _forward_block(q, *current, pair, plan, scale, out, lse)
            if pending is not None:
                _wait(pending[1])
                current = tuple(pending[0])
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.group, ctx.scale = plan, group, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan, group, scale = ctx.plan, ctx.group, ctx.scale
        rank, size = plan.rank, plan.pieces.size
        delta = _delta(out, dout)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        current = (k.contiguous(), v.contiguous())
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for step in range(size):
            pending = None
            if step < size - 1:
                pending = _rotate(current, group, rank, size)
            source = (rank - step) % size
            for pair in plan.pairs[source]:
                keys, values = current
                _backward_block(
                    q, keys, values, out, lse, dout, delta, pair, plan, scale, dq, dk, dv
                )
            # this block's dK/dV follow it to the next rank; after `size` hops they are home
            (dk, dv), requests = _rotate((dk, dv), group, rank, size)
            _wait(requests)
            if pending is not None:
                _wait(pending[1])
                current = tuple(pending[0])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q, k, v, plan: AttentionPlan, group) -> torch.Tensor:
    """Causal per-sample attention of this rank's q against the whole row (module docstring):
    K and V rotated around the ring. q (local tokens, heads, d), k/v (local tokens, kv_heads,
    d)."""
    _check(q, k, v, plan)
    return _RingAttention.apply(q, k, v, plan, group, 1.0 / math.sqrt(q.shape[-1]))


def _check(q, k, v, plan: AttentionPlan) -> None:
    tokens = plan.pieces.local_tokens(plan.rank)
    if q.dim() != 3 or k.shape != v.shape or q.shape[0] != tokens or k.shape[0] != tokens:
        raise TrainingError(
            f"context parallel attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v "
            f"{tuple(v.shape)} must be (local tokens = {tokens}, heads, head_dim)"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise TrainingError(
            f"context parallel attention: query heads {q.shape[1]} must be a multiple of kv "
            f"heads {k.shape[1]}, with the same head_dim"
        )
