"""The CLIP towers, module for module as open_clip names them, so its state dicts load strictly.

Image tower (`visual`): a patchifying convolution without bias, a class token, learned positions,
LayerNorm (`ln_pre`), pre-norm transformer blocks (`transformer.resblocks`), `ln_post` on the class
token and the projection matrix `proj`. Text tower (top level, as in open_clip's `CLIP`): token
embedding, learned positions, the same blocks under a causal mask, `ln_final`, pooling at the
end-of-text token (the largest id in each row, open_clip's "argmax" pooling) and `text_projection`.
Attention is torch's `nn.MultiheadAttention`, the module open_clip uses, so the packed
`in_proj_weight` layout is shared by construction.

Inference only: no dropout, no patch dropout, no gradient checkpointing. open_clip's optional
variants (average pooling, LayerScale, attentional poolers, projection bias, no causal mask) are
not implemented; configs asking for them are refused in `config.py`.
"""

from collections import OrderedDict

import torch
from torch import nn

from ov_concepts.clip.config import ClipConfig, VisionConfig


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI and MetaCLIP CLIPs were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        mask = None if attn_mask is None else attn_mask.to(y.dtype)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (`resblocks`), batch first."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ViT image tower (`visual`)."""

    def __init__(self, config: VisionConfig, embed_dim: int, quick_gelu: bool) -> None:
        super().__init__()
        width, grid = config.width, config.image_size // config.patch_size
        self.conv1 = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_ratio, quick_gelu
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class Clip(nn.Module):
    """Both towers with open_clip's `CLIP` parameter names (text tower at the top level)."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        text = config.text
        self.visual = VisionTransformer(config.vision, config.embed_dim, config.quick_gelu)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.zeros(text.context_length, text.width))
        self.transformer = Transformer(
            text.width, text.layers, text.heads, text.mlp_ratio, config.quick_gelu
        )
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.zeros(text.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        causal = torch.full((text.context_length, text.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features (not normalised) for preprocessed pixels (B, 3, H, W)."""
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features (not normalised) for token ids (B, context_length)."""
        length = tokens.shape[1]
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens) + self.positional_embedding[:length].to(dtype)
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.text_projection
