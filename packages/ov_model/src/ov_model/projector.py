"""The patch merger: vision features of each 2x2 patch block -> one LLM token.

LayerNorm per patch row (`ln_q`, eps = the vision layer_norm_eps), the 4 rows of a block (they are
consecutive: the encoder emits merge-block order) concatenated, then Linear -> exact GELU ->
Linear to the text width. Names match the HF tensors `visual.merger.{ln_q, mlp.0, mlp.2}`. The
LayerNorm is rice_vit's: it returns its input's dtype under autocast, like every norm here.
"""

import torch
from torch import nn

from rice_vit.layer_norm import LayerNorm


class PatchMerger(nn.Module):
    """(patches, vision_hidden) -> (patches / merge^2, text_hidden)."""

    def __init__(self, vision_hidden: int, text_hidden: int, merge_size: int, eps: float) -> None:
        super().__init__()
        self.group = merge_size * merge_size
        width = vision_hidden * self.group
        self.ln_q = LayerNorm(vision_hidden, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, text_hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.ln_q(features)
        return self.mlp(x.reshape(-1, x.shape[-1] * self.group))
