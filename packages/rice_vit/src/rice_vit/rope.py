"""2D rotary position embedding of RICE-ViT.

Each head's channels are rotated by angles that encode the patch's grid row and column: with
`inv_freq = 1 / 10000**(arange(0, head_dim/2, 2) / (head_dim/2))` (head_dim/4 frequencies), a patch
at (row r, column c) gets the angles `concat(r * inv_freq, c * inv_freq)` (head_dim/2 values),
duplicated to head_dim, and `x' = x * cos + rotate_half(x) * sin`. The class token has no grid
position; its angles are the learned `class_pos_emb` parameter.

Rows and columns come from the patch's place in its own image, so positions restart for every
image of a packed call and nothing depends on the order images are packed in. Angles, cos/sin and
the rotation are computed in fp32 and the result is cast back to the input dtype, like the
official code (bf16 angles would lose whole turns for large grids). Theta 10000 is fixed by both
released layouts.
"""

import torch

ROPE_THETA = 10000.0


def rope_inverse_frequencies(head_dim: int) -> torch.Tensor:
    """(head_dim/4,) fp32 frequencies, computed on the CPU exactly as the official code does."""
    dim = head_dim // 2
    return 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def patch_rope_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(patches, head_dim/2) fp32 angles for patches at grid (rows, cols)."""
    inv_freq = rope_inverse_frequencies(head_dim).to(rows.device)
    return torch.cat(
        (rows.to(torch.float32)[:, None] * inv_freq, cols.to(torch.float32)[:, None] * inv_freq),
        dim=1,
    )


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of (tokens, head_dim/2) angles duplicated to (tokens, head_dim), fp32."""
    emb = torch.cat((angles, angles), dim=-1).to(torch.float32)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (tokens, heads, head_dim) by per-token cos/sin (tokens, head_dim), in fp32."""
    x32 = x.to(torch.float32)
    rotated = x32 * cos[:, None, :] + _rotate_half(x32) * sin[:, None, :]
    return rotated.to(x.dtype)
