"""LayerNorm that returns its input's dtype, autocast or not.

Under `torch.autocast` on CUDA, `layer_norm` is on the fp32 list: a bf16 input comes out fp32, and
the next element-wise op (a residual add, RoPE, a `cat` with a bf16 tensor) silently promotes
everything after it to fp32, or hands an attention kernel q/k and v of different dtypes. Casting
the output back to the input's dtype keeps one rule everywhere (the same as ov_model's RMSNorm
and the shared RoPE): a norm computes in fp32 where autocast wants it, and returns what it got.

Without autocast the cast is a no-op (fp32 in, fp32 out, the very same tensor; bf16 weights with
bf16 input already return bf16), so results and state-dict keys are exactly `nn.LayerNorm`'s.
"""

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` whose output has the input's dtype (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)
