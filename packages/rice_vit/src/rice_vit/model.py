"""The RICE-ViT encoder at native resolution, many images packed into one sequence.

Forward for n images with N patches in total (`pixel_values` (N, C*P*P) in merge-block order,
`grid_thw` (n, 3)):

1. Patch embedding: the bias-free Conv2d(C, D, P, stride P) of the checkpoints, applied to each
   (C, P, P) patch, is a matmul of the flattened rows with the reshaped kernel: one Linear over all
   N rows, no image-shaped tensor.
2. Every image gets a class token (`class_embedding`) in front of its patches: the packed sequence
   is `[cls_0, patches_0, cls_1, patches_1, ...]`, split by `cu_seqlens` (see `token_layout`).
   The 2D RoPE angles are the patches' grid (row, column) and the learned `class_pos_emb` for
   class tokens (see `rope`). Then `pre_layernorm` over all tokens.
3. Pre-LN blocks: `x + proj(attn(norm1(x)))`, `x + fc2(gelu(fc1(norm2(x))))`, attention through
   `varlen_attention`, bidirectional within an image, nothing across images.
4. The patch rows after the last block, each image's own class token removed, in input order. No
   post-layernorm (LLaVA-OV has none; MLCD's acts on the class token only: `pool(..., "cls")`).

Memory grows linearly with N: every op is per token except attention, which never builds the dense
(N+n) x (N+n) mask the official HF code uses. Per-image semantics are the correct ones: the output
for an image does not depend on the other images of the call. The official HF tower drops only the
first class token of a multi-image call and returns rows shifted by one per preceding image
(MODEL.md); that bug is deliberately not reproduced.

Dtypes: RoPE runs in fp32 and returns its input's dtype (`rope`), the LayerNorms return their
input's dtype (`layer_norm`), so under bf16 autocast q, k and v reach attention in bf16 and with
bf16 weights everything is bf16.

Region attention (RICE pretraining): `encode(..., regions=RegionBoxes)` also returns one
embedding per region box from the last `config.region_layers` blocks (`region_attention`); image
tokens never see the region tokens, so patch features and class tokens are bitwise those of a
plain encode, and without regions the forward is the plain code path.

Model code is single-device: parallelism (FSDP, tensor parallel) is applied from outside by
ov_train to the plain `nn.Linear`/`LayerNorm` modules here.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rice_vit.attention import Backend, varlen_attention
from rice_vit.config import Layout, RiceViTConfig
from rice_vit.errors import CheckpointError, InputError
from rice_vit.layer_norm import LayerNorm
from rice_vit.region_attention import RegionAttentionPlan, RegionTokens, region_attention
from rice_vit.region_boxes import RegionBoxes
from rice_vit.rope import apply_rope, patch_rope_angles, rope_cos_sin
from rice_vit.token_layout import TokenLayout


class PatchEmbed(nn.Module):
    """Flattened (C*P*P) patch rows -> D features with the checkpoints' conv kernel."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1))


class Attention(nn.Module):
    """Fused-qkv multi-head attention with 2D RoPE over packed images."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: Backend | None,
        sequence_lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        return self.attend(q, k, v, cu_seqlens, max_seqlen, backend, sequence_lengths)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (RoPE'd) and v, each (tokens, heads, head_dim)."""
        tokens = x.shape[0]
        q, k, v = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: Backend | None,
        sequence_lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """proj(varlen attention of q over k, v within each image)."""
        tokens = q.shape[0]
        attended = varlen_attention(
            q, k, v, cu_seqlens, max_seqlen, backend=backend, sequence_lengths=sequence_lengths
        )
        return self.proj(attended.reshape(tokens, self.num_heads * self.head_dim))

    def attend_regions(
        self, regions: RegionTokens, normed: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """proj(region attention): queries from the normed region tokens (the q part of qkv,
        rotated by the class angle) over the image tokens' keys/values `k`, `v` in each box.
        The whole qkv module runs on the R region rows (its k, v parts unused: a few rows, and
        the module's own call, so wrappers and hooks on `qkv` apply)."""
        rows = normed.shape[0]
        q = self.qkv(normed).view(rows, 3, self.num_heads, self.head_dim)[:, 0]
        q = apply_rope(q, regions.cos, regions.sin)
        attended = region_attention(q, k, v, regions.plan)
        return self.proj(attended.reshape(rows, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """fc2(gelu(fc1(x))) with exact (erf) GELU."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(config.hidden_size, eps=config.block_layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = LayerNorm(config.hidden_size, eps=config.block_layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: Backend | None,
        sequence_lengths: Sequence[int] | None = None,
        regions: RegionTokens | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block on the packed tokens `x`; with `regions`, also on the region tokens and
        returns (x, region hidden states). Region tokens read the image tokens' keys/values;
        nothing reads theirs, so `x`'s result is the same computation either way."""
        if regions is None:
            attended = self.attn(
                self.norm1(x), cos, sin, cu_seqlens, max_seqlen, backend, sequence_lengths
            )
            x = x + attended
            return x + self.mlp(self.norm2(x))
        q, k, v = self.attn.project(self.norm1(x), cos, sin)
        x = x + self.attn.attend(q, k, v, cu_seqlens, max_seqlen, backend, sequence_lengths)
        x = x + self.mlp(self.norm2(x))
        r = regions.hidden
        r = r + self.attn.attend_regions(regions, self.norm1(r), k, v)
        return x, r + self.mlp(self.norm2(r))


@dataclass
class RiceViTOutput:
    """Everything `RiceViT.encode` returns."""

    patch_features: torch.Tensor
    """(patches, hidden) after the last block, rows in input (merge-block) order."""
    class_tokens: torch.Tensor
    """(images, hidden) each image's class token after the last block (no post-layernorm)."""
    patch_counts: torch.Tensor
    """(images,) patches per image: image i owns the next patch_counts[i] rows."""
    cu_seqlens: torch.Tensor
    """(images + 1,) int32 offsets into the packed token sequence of `hidden_states`: image i's
    class token is row cu_seqlens[i], its patches the rows after it."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """With `output_hidden_states`: depth + 1 packed sequences (tokens, hidden), class tokens
    included: [0] after pre_layernorm, [i] after block i."""
    region_embeddings: torch.Tensor | None = None
    """With `regions`: (regions, hidden) one embedding per region box after the last block, in
    the boxes' order (no post-layernorm); None without regions."""


class RiceViT(nn.Module):
    """The RICE-ViT encoder (see the module docstring). `attention_backend` None picks the best
    available `varlen_attention` backend per call; it can be changed on the instance."""

    def __init__(self, config: RiceViTConfig, *, attention_backend: Backend | None = None) -> None:
        super().__init__()
        self.config = config
        self.attention_backend: Backend | None = attention_backend
        self.patch_embed = PatchEmbed(config)
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.class_pos_emb = nn.Parameter(torch.empty(1, config.head_dim // 2))
        self.pre_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.post_layernorm = (
            LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.has_post_layernorm
            else None
        )
        nn.init.normal_(self.class_embedding, std=config.hidden_size**-0.5)
        nn.init.normal_(self.class_pos_emb, std=1.0)
        if config.region_layers and config.region_query == "learned":
            self.region_query = nn.Parameter(torch.empty(config.hidden_size))
            nn.init.normal_(self.region_query, std=config.hidden_size**-0.5)

    def forward(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]] | None,
        *,
        layout: TokenLayout | None = None,
    ) -> torch.Tensor:
        """(patches, hidden) features of `pixel_values` (patches, C*P*P) in merge-block order,
        for images of `grid_thw` (images, 3) = (1, h, w) in patches (see `encode` for
        `layout`)."""
        return self.encode(pixel_values, grid_thw, layout=layout).patch_features

    def encode(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]] | None,
        *,
        output_hidden_states: bool = False,
        layout: TokenLayout | None = None,
        regions: RegionBoxes | None = None,
    ) -> RiceViTOutput:
        """Patch features, class tokens and optionally every layer's packed hidden states.

        `layout`: the `TokenLayout` of `grid_thw` with this encoder's merge size, built ahead of
        time on the host (then `grid_thw` is not read and may be None): the forward reads nothing
        back from the device. Without it the layout is built here from `grid_thw` (a device
        `grid_thw` is copied to the host: one sync).

        `regions`: boxes on the patch grid (`RegionBoxes`, best kept on the host: they are
        checked against the grid there); needs `config.region_layers > 0`. The output then has
        `region_embeddings` (see `rice_vit.region_attention`); everything else is unchanged."""
        config = self.config
        device = self.class_embedding.device
        plan = None
        if regions is not None:
            if not config.region_layers:
                raise InputError(
                    "encode got regions but this encoder has region_layers = 0; build it with "
                    "RiceViTConfig(region_layers=L) to add region attention to its last L blocks"
                )
            if layout is None:
                if grid_thw is None:
                    raise InputError("RiceViT needs grid_thw or a TokenLayout")
                layout = TokenLayout.from_grid_thw(grid_thw, config.spatial_merge_size)
            if len(regions):
                plan = RegionAttentionPlan.build(layout, regions).to(device)
        if layout is None:
            if grid_thw is None:
                raise InputError("RiceViT needs grid_thw or a TokenLayout")
            layout = TokenLayout.from_grid_thw(grid_thw, config.spatial_merge_size, device)
        else:
            layout = layout.to(device)
        if pixel_values.dim() != 2 or pixel_values.shape != (layout.num_patches, config.patch_dim):
            raise InputError(
                f"pixel_values must be (patches, {config.patch_dim}) with patches = sum(h*w) of "
                f"grid_thw = {layout.num_patches}; got {tuple(pixel_values.shape)}"
            )
        patches = self.patch_embed(pixel_values.to(device))
        x = patches.new_empty(layout.num_tokens, config.hidden_size)
        x[layout.patch_index] = patches
        x[layout.class_index] = self.class_embedding.to(patches.dtype)
        angles = torch.empty(
            layout.num_tokens, config.head_dim // 2, device=device, dtype=torch.float32
        )
        angles[layout.patch_index] = patch_rope_angles(
            layout.patch_rows, layout.patch_cols, config.head_dim
        )
        angles[layout.class_index] = self.class_pos_emb.to(torch.float32)
        cos, sin = rope_cos_sin(angles)

        x = self.pre_layernorm(x)
        hidden_states = [x] if output_hidden_states else None
        first_region_block = config.depth - config.region_layers if plan is not None else None
        region_tokens: RegionTokens | None = None
        for index, block in enumerate(self.blocks):
            if index == first_region_block:
                region_tokens = self._region_tokens(x, plan)
            if region_tokens is None:
                x = block(
                    x,
                    cos,
                    sin,
                    layout.cu_seqlens,
                    layout.max_seqlen,
                    self.attention_backend,
                    layout.sequence_lengths,
                )
            else:
                x, region_hidden = block(
                    x,
                    cos,
                    sin,
                    layout.cu_seqlens,
                    layout.max_seqlen,
                    self.attention_backend,
                    layout.sequence_lengths,
                    regions=region_tokens,
                )
                region_tokens = replace(region_tokens, hidden=region_hidden)
            if hidden_states is not None:
                hidden_states.append(x)
        region_embeddings = None
        if region_tokens is not None:
            region_embeddings = region_tokens.hidden
        elif regions is not None:  # no region in the call
            region_embeddings = x.new_empty(0, config.hidden_size)
        return RiceViTOutput(
            patch_features=x[layout.patch_index],
            class_tokens=x[layout.class_index],
            patch_counts=layout.patch_counts,
            cu_seqlens=layout.cu_seqlens,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            region_embeddings=region_embeddings,
        )

    def _region_tokens(self, x: torch.Tensor, plan: RegionAttentionPlan) -> RegionTokens:
        """The region tokens entering the first region block (`x` is that block's input): each
        region's image's class token there, or the learned query (`config.region_query`)."""
        if self.config.region_query == "learned":
            hidden = self.region_query.to(x.dtype).expand(plan.num_regions, -1)
        else:
            hidden = x[plan.class_token_index]
        cos, sin = rope_cos_sin(self.class_pos_emb.to(torch.float32))
        return RegionTokens(hidden=hidden, cos=cos, sin=sin, plan=plan)

    def pool(self, output: RiceViTOutput, method: Literal["mean", "cls"]) -> torch.Tensor:
        """(images, hidden) one vector per image: the mean of its patch features, or its class
        token (through the post-layernorm when the checkpoint has one, i.e. MLCD's
        `pooler_output`)."""
        if method == "cls":
            if self.post_layernorm is None:
                return output.class_tokens
            return self.post_layernorm(output.class_tokens)
        if method == "mean":
            counts = output.patch_counts
            features = output.patch_features
            image_of_patch = torch.repeat_interleave(
                torch.arange(counts.numel(), device=counts.device),
                counts,
                output_size=features.shape[0],
            )
            sums = torch.zeros(
                counts.numel(), features.shape[1], device=features.device, dtype=torch.float32
            ).index_add_(0, image_of_patch, features.to(torch.float32))
            return (sums / counts[:, None]).to(features.dtype)
        raise InputError(f"unknown pool method {method!r}; choose 'mean' or 'cls'")

    def num_parameters(self) -> int:
        """Number of parameter values."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        *,
        device: str | torch.device = "cpu",
        attention_backend: Backend | None = None,
    ) -> "RiceViT":
        """Load a checkpoint folder in the MLCD or LLaVA-OV layout (single file or sharded). With
        `dtype=None` parameters keep the stored dtype and bytes. Returned in eval mode."""
        from rice_vit.checkpoint import load_checkpoint

        config, state, _ = load_checkpoint(path, device=device)
        if config.region_layers and config.region_query == "learned":
            raise CheckpointError(
                f"{path}: config.json asks for region_layers = {config.region_layers} with a "
                "learned region_query, a tensor the MLCD and LLaVA-OV layouts cannot hold (such "
                "an export has region_layers 0); use region_query 'class_token' or load the "
                "pretraining checkpoint instead"
            )
        with torch.device("meta"):
            model = cls(config, attention_backend=attention_backend)
        model.load_state_dict(state, strict=True, assign=True)
        if dtype is not None:
            model.to(dtype=dtype)
        return model.eval()

    def save_pretrained(
        self,
        path: str | Path,
        layout: Layout = "llava-ov",
        *,
        max_shard_size: int | str = "5GB",
        overwrite: bool = False,
    ) -> list[str]:
        """Write `config.json` and safetensors weights in `layout` ('llava-ov': `visual.*` names,
        'mlcd': MLCDVisionModel names), sharded above `max_shard_size`. Returns the module tensors
        the layout cannot hold and were therefore not written (the post-layernorm in llava-ov; a
        learned `region_query` in both: the export is then written with region_layers 0, the
        plain encoder; region layers with the class-token query need no tensor and are kept in
        `config.json`)."""
        from rice_vit.checkpoint import save_checkpoint

        config, state = self.config, self.state_dict()
        dropped_here: list[str] = []
        if "region_query" in state:
            state = {name: tensor for name, tensor in state.items() if name != "region_query"}
            config = config.replace(region_layers=0, region_query="class_token")
            dropped_here.append("region_query")
        _, dropped = save_checkpoint(
            path, config, state, layout, max_shard_size=max_shard_size, overwrite=overwrite
        )
        return dropped + dropped_here
