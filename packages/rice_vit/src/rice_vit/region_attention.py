"""Region attention (RICE, arXiv 2507.20025 section 3.2): one embedding per region box.

The encoder's last `config.region_layers` blocks also carry one extra token per region, the
region token, through the SAME block weights as the image tokens (norm1, qkv, proj, norm2, mlp):

    r = r + proj(RegionAttn(norm1(r)))        r = r + fc2(gelu(fc1(norm2(r))))
    RegionAttn: q = q-part of qkv(norm1(r)) rotated by the class angle (`class_pos_emb`),
                out = softmax(q K^T / sqrt(head_dim) + M) V

with K, V the block's own (RoPE'd) keys and values of the image tokens, computed once for the
image's self-attention and reused, and M = 0 for the patches of the region's image inside its
box, -inf everywhere else (the class token, the patches outside the box, other images). The
region token after the last block is the region embedding (no post-layernorm: the loss
normalises it).

Choices (the paper leaves them open):

- **Query = the class token (default, `region_query="class_token"`).** A region token starts as
  its image's class token at the input of the first region layer and is then updated by the
  region layers only. Why: (1) no new parameter, so the encoder exports losslessly to the MLCD and
  LLaVA-OV layouts and a released checkpoint continues pretraining with nothing untrained: the
  class token is already in the distribution the blocks were trained on (the class angle too);
  (2) it is the paper's "region class embedding": the class token re-aimed at a box. The cost: all
  regions of an image start from the same image-level state, so the embedding also carries global
  image context (the box decides what is added). `region_query="learned"` starts every region
  from one learned vector instead (no image context in the residual stream, one extra parameter
  the released layouts cannot hold: dropped, and reported, on export).
- **Keys = the patches inside the box only (the class token excluded).** The class token is not
  in any box, so M = -inf for it, exactly the paper's mask; the patches themselves carry global
  context from the preceding global layers.
- **Image tokens never attend to region tokens.** Patch features and class tokens are bitwise
  those of an encode without regions (and a plain encode is today's code path).

Cost: per image with R_i regions and T_i tokens, q.K^T over the image's tokens is R_i x T_i x D,
a fraction R_i / T_i of the image's own attention; the per-region MLP/qkv work is R rows. The
implementation batches all images in one `scaled_dot_product_attention` call: queries padded to
the most regions per image, keys/values to the longest image (a free view when every image of the
call has regions and the same size), and a boolean mask (images, 1, regions, tokens) built once
per `encode` on the host, so the forward reads nothing back from the device. Memory: one padded
copy of K and V per region layer plus the mask; never a (tokens x tokens) tensor.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from rice_vit.errors import InputError
from rice_vit.region_boxes import RegionBoxes
from rice_vit.token_layout import TokenLayout


@dataclass(frozen=True)
class RegionAttentionPlan:
    """Index tensors for `region_attention`, built once per encode from the layout and boxes.

    The batch of the attention call is the images that have at least one region (`batch_images`),
    each with `max_regions` query slots and `max_tokens` key slots."""

    num_regions: int
    batch_images: int
    """Images in the attention batch: those with at least one region."""
    max_regions: int
    max_tokens: int
    slot: torch.Tensor
    """(R,) int64 flat query slot of each region in (batch_images * max_regions)."""
    class_token_index: torch.Tensor
    """(R,) int64 packed-sequence row of each region's image's class token."""
    token_index: torch.Tensor | None
    """(batch_images, max_tokens) int64 packed rows of each key slot (padding: row 0, masked),
    or None when the batch is every image at one length (keys are then a view)."""
    mask: torch.Tensor
    """(batch_images, 1, max_regions, max_tokens) bool: True where a query slot may attend.
    Unused query slots attend to their image's class token (finite, discarded)."""

    DEVICE_FIELDS = ("slot", "class_token_index", "token_index", "mask")

    def to(self, device: torch.device | str) -> "RegionAttentionPlan":
        """The plan with its tensors on `device`, copied without blocking."""
        device = torch.device(device)
        if self.slot.device == device:
            return self
        moved = {
            name: None if value is None else value.to(device, non_blocking=True)
            for name in self.DEVICE_FIELDS
            for value in [getattr(self, name)]
        }
        return replace(self, **moved)

    @classmethod
    def build(cls, layout: TokenLayout, regions: RegionBoxes) -> "RegionAttentionPlan":
        """Check `regions` against the images of `layout` (`InputError` naming the region) and
        compute the plan on the host. A layout on the device costs one read back."""
        layout = layout.to("cpu")
        regions = regions.to("cpu")
        n = layout.num_images
        counts = layout.patch_counts
        image_of_patch = torch.repeat_interleave(
            torch.arange(n), counts, output_size=layout.num_patches
        )
        heights = torch.zeros(n, dtype=torch.int64).scatter_reduce(
            0, image_of_patch, layout.patch_rows + 1, "amax"
        )
        widths = torch.zeros(n, dtype=torch.int64).scatter_reduce(
            0, image_of_patch, layout.patch_cols + 1, "amax"
        )
        regions.check_against_grid(heights, widths)
        image_index, boxes = regions.image_index, regions.boxes
        num_regions = len(regions)
        if num_regions == 0:
            raise InputError("RegionAttentionPlan needs at least one region")

        # The attention batch: images with regions, in image order.
        has_regions = torch.zeros(n, dtype=torch.bool)
        has_regions[image_index] = True
        batch_of_image = torch.cumsum(has_regions, 0) - 1
        batch_image_ids = has_regions.nonzero().flatten()
        batch = int(batch_image_ids.numel())

        # Query slots: regions of an image keep their input order.
        order = torch.sort(image_index, stable=True).indices
        sorted_images = image_index[order]
        per_image = torch.bincount(image_index, minlength=n)
        first = torch.cumsum(per_image, 0) - per_image
        rank = torch.empty(num_regions, dtype=torch.int64)
        rank[order] = torch.arange(num_regions) - first[sorted_images]
        max_regions = int(per_image.max())
        slot = batch_of_image[image_index] * max_regions + rank

        # Key slots: every token of each batch image, padded to the longest.
        lengths = torch.tensor(layout.sequence_lengths, dtype=torch.int64)[batch_image_ids]
        max_tokens = int(lengths.max())
        starts = layout.cu_seqlens.to(torch.int64)[batch_image_ids]
        positions = torch.arange(max_tokens)
        valid = positions[None, :] < lengths[:, None]
        token_index = torch.where(valid, starts[:, None] + positions, 0)
        token_rows = torch.full((layout.num_tokens,), -1, dtype=torch.int64)
        token_cols = torch.full((layout.num_tokens,), -1, dtype=torch.int64)
        token_rows[layout.patch_index] = layout.patch_rows
        token_cols[layout.patch_index] = layout.patch_cols
        rows = torch.where(valid, token_rows[token_index], -1)  # (batch, max_tokens)
        cols = torch.where(valid, token_cols[token_index], -1)

        # Boxes per query slot; unused slots get an empty box and attend to the class token.
        slot_boxes = torch.zeros(batch * max_regions, 4, dtype=torch.int64)
        slot_boxes[slot] = boxes
        slot_boxes = slot_boxes.view(batch, max_regions, 4, 1)
        row0, col0, row1, col1 = slot_boxes.unbind(2)
        rows, cols = rows[:, None, :], cols[:, None, :]
        mask = (rows >= row0) & (rows < row1) & (cols >= col0) & (cols < col1)
        used = torch.zeros(batch * max_regions, dtype=torch.bool)
        used[slot] = True
        mask[:, :, 0] |= ~used.view(batch, max_regions)

        if batch == n and bool((lengths == max_tokens).all()):
            token_index_or_none = None
        else:
            token_index_or_none = token_index
        return cls(
            num_regions=num_regions,
            batch_images=batch,
            max_regions=max_regions,
            max_tokens=max_tokens,
            slot=slot,
            class_token_index=layout.class_index[image_index],
            token_index=token_index_or_none,
            mask=mask[:, None],
        )


def region_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: RegionAttentionPlan
) -> torch.Tensor:
    """(R, heads, head_dim) attention of the region queries `q` (R, heads, head_dim) over the
    packed image tokens' keys and values `k`, `v` (tokens, heads, head_dim) inside each region's
    box (see the module docstring); scale 1/sqrt(head_dim)."""
    heads, head_dim = q.shape[1], q.shape[2]
    if q.shape[0] != plan.num_regions:
        raise InputError(f"region_attention: {q.shape[0]} queries for {plan.num_regions} regions")
    shape = (plan.batch_images, plan.max_tokens, heads, head_dim)
    if plan.token_index is None:
        keys, values = k.view(shape), v.view(shape)
    else:
        keys, values = k[plan.token_index], v[plan.token_index]
    slots = plan.batch_images * plan.max_regions
    queries = q.new_zeros(slots, heads, head_dim).index_copy(0, plan.slot, q)
    queries = queries.view(plan.batch_images, plan.max_regions, heads, head_dim)
    attended = F.scaled_dot_product_attention(
        queries.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=plan.mask,
    )
    return attended.transpose(1, 2).reshape(slots, heads, head_dim)[plan.slot]


@dataclass(frozen=True)
class RegionTokens:
    """The region tokens' state through the region blocks: `hidden` (R, hidden size), their
    rotary cos/sin (broadcastable to (R, head_dim): the class angle) and the plan."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    plan: RegionAttentionPlan
