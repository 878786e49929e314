"""Rotary position embedding, shared by the RICE-ViT encoder (2D) and ov_model's decoder (1D).

Each head's channels are rotated by per-token angles: with `angles` (tokens, head_dim/2) duplicated
to head_dim, `x' = x * cos + rotate_half(x) * sin`. Only the angles differ between the two models:

- ViT (2D): `inv_freq = 1 / 10000**(arange(0, head_dim/2, 2) / (head_dim/2))` (head_dim/4
  frequencies); a patch at (row r, column c) gets `concat(r * inv_freq, c * inv_freq)`. The class
  token has no grid position; its angles are the learned `class_pos_emb` parameter. Rows and
  columns come from the patch's place in its own image, so positions restart for every image of a
  packed call. Theta 10000 is fixed by both released layouts.
- LLM (1D): `inv_freq = 1 / theta**(arange(0, head_dim, 2) / head_dim)` (head_dim/2
  frequencies); a token at position p gets `p * inv_freq`.

One dtype rule for both, whatever the parameters' dtype and whether autocast is on: frequencies
are computed on the CPU in fp32 exactly as the official codes do, angles, cos/sin and the rotation
are fp32, and the result is cast to the input's dtype. So q and k leave RoPE in the dtype they
came in with (under bf16 autocast: bf16, like v, which attention kernels require), and bf16 never
holds an angle (bf16 angles lose whole turns at large positions; the official Qwen code casts
cos/sin to bf16 before the rotation, which this rule deliberately does not copy: it is more
accurate and identical in fp32).
"""

import torch

ROPE_THETA = 10000.0
"""The ViT's theta."""


def inverse_frequencies(rotary_dim: int, theta: float) -> torch.Tensor:
    """(rotary_dim/2,) fp32 `1 / theta**(2i / rotary_dim)`, computed on the CPU."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


def rope_inverse_frequencies(head_dim: int) -> torch.Tensor:
    """(head_dim/4,) fp32 frequencies of the ViT's 2D RoPE (half of each head per axis)."""
    return inverse_frequencies(head_dim // 2, ROPE_THETA)


def _on_device(frequencies: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A few floats: a non-blocking copy, so a forward on the GPU never waits for the queue.
    return frequencies.to(device, non_blocking=True)


def patch_rope_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(patches, head_dim/2) fp32 angles of the ViT for patches at grid (rows, cols)."""
    inv_freq = _on_device(rope_inverse_frequencies(head_dim), rows.device)
    return torch.cat(
        (rows.to(torch.float32)[:, None] * inv_freq, cols.to(torch.float32)[:, None] * inv_freq),
        dim=1,
    )


def position_rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(*positions.shape, head_dim/2) fp32 angles of the LLM's 1D RoPE at token `positions`."""
    inv_freq = _on_device(inverse_frequencies(head_dim, theta), positions.device)
    return positions.to(torch.float32)[..., None] * inv_freq


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of (..., head_dim/2) angles duplicated to (..., head_dim), fp32."""
    emb = torch.cat((angles, angles), dim=-1).to(torch.float32)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., heads, head_dim) by cos/sin (..., head_dim), broadcast over the heads.

    Computed in fp32; returns x's dtype (see the module docstring)."""
    x32 = x.to(torch.float32)
    cos, sin = cos.to(torch.float32).unsqueeze(-2), sin.to(torch.float32).unsqueeze(-2)
    rotated = x32 * cos + _rotate_half(x32) * sin
    return rotated.to(x.dtype)
