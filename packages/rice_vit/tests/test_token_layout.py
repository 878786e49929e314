"""TokenLayout and 2D RoPE: the vectorised bookkeeping against straightforward per-image loops."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rice_vit.errors import InputError
from rice_vit.rope import apply_rope, patch_rope_angles, rope_cos_sin, rope_inverse_frequencies
from rice_vit.token_layout import TokenLayout, merge_block_to_raster_index

GRIDS = [[1, 4, 6], [1, 2, 2], [1, 8, 4], [1, 6, 86]]


def official_positions(grids, merge):
    """(row, col) per patch, the way the official rot_pos_emb builds them: one image at a time."""
    positions = []
    for _, h, w in grids:
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        for grid in (rows, cols):
            blocks = grid.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3)
            positions.append(blocks.flatten())
    return torch.cat(positions[0::2]), torch.cat(positions[1::2])


def test_patch_rows_and_columns_follow_the_merge_block_order_of_the_official_code():
    layout = TokenLayout.from_grid_thw(GRIDS, merge_size=2)
    rows, cols = official_positions(GRIDS, 2)
    assert torch.equal(layout.patch_rows, rows)
    assert torch.equal(layout.patch_cols, cols)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=6),
    merge=st.sampled_from([1, 2, 3]),
)
def test_positions_and_token_rows_hold_for_any_grids(sizes, merge):
    grids = [[1, h * merge, w * merge] for h, w in sizes]
    layout = TokenLayout.from_grid_thw(grids, merge_size=merge)
    rows, cols = official_positions(grids, merge)
    assert torch.equal(layout.patch_rows, rows)
    assert torch.equal(layout.patch_cols, cols)
    rows_used = torch.cat([layout.class_index, layout.patch_index]).sort().values
    assert torch.equal(rows_used, torch.arange(layout.num_tokens))


def test_merge_size_one_is_raster_order():
    layout = TokenLayout.from_grid_thw([[1, 3, 5]], merge_size=1)
    assert torch.equal(layout.patch_rows * 5 + layout.patch_cols, torch.arange(15))


def test_each_image_gets_its_class_token_in_front_of_its_patches():
    layout = TokenLayout.from_grid_thw(GRIDS, merge_size=2)
    counts = [h * w for _, h, w in GRIDS]
    expected_cu = torch.tensor([0, *torch.tensor(counts).add(1).cumsum(0).tolist()])
    assert torch.equal(layout.cu_seqlens, expected_cu.int())
    assert layout.cu_seqlens.dtype == torch.int32
    assert torch.equal(layout.class_index, expected_cu[:-1])
    assert layout.max_seqlen == max(counts) + 1
    assert (layout.num_images, layout.num_patches, layout.num_tokens) == (4, 576, 580)
    is_class = torch.zeros(layout.num_tokens, dtype=torch.bool)
    is_class[layout.class_index] = True
    assert torch.equal(layout.patch_index, (~is_class).nonzero().flatten())


def test_no_images_give_an_empty_layout():
    layout = TokenLayout.from_grid_thw(torch.empty(0, 3, dtype=torch.int64), merge_size=2)
    assert (layout.num_images, layout.num_tokens, layout.max_seqlen) == (0, 0, 0)
    assert layout.cu_seqlens.tolist() == [0]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([[2, 4, 4]], r"grid_thw row 0 = \[2, 4, 4\]: need t == 1"),
        ([[1, 4, 4], [1, 3, 4]], r"grid_thw row 1 = \[1, 3, 4\].*multiples of the merge size 2"),
        ([[1, 0, 4]], "positive multiples"),
        ([1, 4, 4], r"shape \(images, 3\)"),
        ([[1.0, 4.0, 4.0]], "must be integers"),
    ],
)
def test_invalid_grids_are_rejected_naming_the_image(grid, message):
    with pytest.raises(InputError, match=message):
        TokenLayout.from_grid_thw(grid, merge_size=2)


def test_merge_block_to_raster_index_is_a_permutation_matching_the_positions():
    index = merge_block_to_raster_index(4, 6)
    assert sorted(index.tolist()) == list(range(24))
    rows, cols = official_positions([[1, 4, 6]], 2)
    assert torch.equal(index, rows * 6 + cols)


def test_rope_angles_are_rows_then_columns_times_the_official_frequencies():
    head_dim = 16
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float) / 8))
    assert torch.equal(rope_inverse_frequencies(head_dim), inv_freq)
    angles = patch_rope_angles(torch.tensor([0, 3]), torch.tensor([5, 1]), head_dim)
    table = torch.outer(torch.arange(6, dtype=torch.float), inv_freq)
    assert torch.equal(angles, torch.cat([table[[0, 3]], table[[5, 1]]], dim=1))


def test_rope_rotation_preserves_norms_and_relative_positions():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 16, generator=generator)
    k = torch.randn(1, 2, 16, generator=generator)

    def rotated_score(q_pos, k_pos):
        cos_q, sin_q = rope_cos_sin(patch_rope_angles(*q_pos, head_dim=16))
        cos_k, sin_k = rope_cos_sin(patch_rope_angles(*k_pos, head_dim=16))
        q_rot, k_rot = apply_rope(q, cos_q, sin_q), apply_rope(k, cos_k, sin_k)
        torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
        return (q_rot * k_rot).sum(-1)

    at = lambda r, c: (torch.tensor([r]), torch.tensor([c]))  # noqa: E731
    # Same offset (+2 rows, -1 column) at two places gives the same score; another does not.
    torch.testing.assert_close(
        rotated_score(at(3, 4), at(5, 3)), rotated_score(at(10, 7), at(12, 6))
    )
    assert not torch.allclose(rotated_score(at(3, 4), at(5, 3)), rotated_score(at(3, 4), at(3, 5)))


def test_rope_keeps_the_input_dtype_and_computes_in_float32():
    x = torch.randn(3, 2, 8).to(torch.bfloat16)
    cos, sin = rope_cos_sin(
        patch_rope_angles(torch.tensor([0, 1, 200]), torch.tensor([0, 1, 2]), 8)
    )
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    expected = (
        x.float() * cos[:, None]
        + torch.cat([-x.float()[..., 4:], x.float()[..., :4]], -1) * sin[:, None]
    )
    assert torch.equal(out, expected.to(torch.bfloat16))


def test_host_sequence_lengths_are_the_cu_seqlens_differences_and_to_moves_only_indices():
    layout = TokenLayout.from_grid_thw(GRIDS, merge_size=2)
    assert list(layout.sequence_lengths) == layout.cu_seqlens.diff().tolist()
    assert layout.max_seqlen == max(layout.sequence_lengths)
    assert layout.to("cpu") is layout
    moved = layout.to("meta")
    assert moved.patch_index.device.type == "meta"
    assert moved.cu_seqlens.device.type == "meta"
    assert (moved.sequence_lengths, moved.num_patches) == (
        layout.sequence_lengths,
        24 + 4 + 32 + 516,
    )
