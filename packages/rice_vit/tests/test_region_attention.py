"""Region attention: against a naive dense-mask implementation written here, bitwise isolation of
the image tokens, gradients, errors, and config/checkpoint IO of the region fields."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from rice_vit.config import PRESETS, config_from_hf_dict, config_to_hf_dict
from rice_vit.errors import CheckpointError, ConfigError, InputError
from rice_vit.model import RiceViT
from rice_vit.region_attention import RegionAttentionPlan, region_attention
from rice_vit.region_boxes import RegionBoxes
from rice_vit.token_layout import TokenLayout

# Images of different sizes (merge size 2); several regions per image in mixed image order,
# boxes on the grid edges, single-patch boxes, whole-image boxes, image 3 without regions.
GRIDS = [(4, 6), (2, 2), (8, 4), (2, 10), (6, 6)]
REGIONS = [
    (2, (0, 0, 8, 4)),  # whole image
    (0, (1, 1, 3, 4)),
    (0, (3, 5, 4, 6)),  # single patch, bottom-right corner
    (2, (7, 3, 8, 4)),  # single patch, bottom-right corner
    (1, (0, 0, 1, 1)),  # single patch, top-left corner
    (4, (0, 2, 6, 3)),  # one full column
    (0, (0, 0, 4, 1)),  # left edge
    (4, (5, 0, 6, 6)),  # bottom row
    (2, (2, 1, 5, 3)),
    (0, (0, 0, 4, 6)),  # whole image
]


def tiny_config(**changes):
    return PRESETS["rice-vit-tiny"].replace(**{"depth": 3, "region_layers": 2, **changes})


def make_model(seed=0, **changes) -> RiceViT:
    torch.manual_seed(seed)
    return RiceViT(tiny_config(**changes)).eval()


def make_inputs(grids, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    patches = sum(h * w for h, w in grids)
    pixels = torch.randn(patches, 588, generator=generator).to(dtype)
    return pixels, torch.tensor([[1, h, w] for h, w in grids])


def regions_of(pairs) -> RegionBoxes:
    return RegionBoxes.from_lists([image for image, _ in pairs], [box for _, box in pairs])


# ----------------------------------------------------------------------------- naive reference


def merge_block_positions(h: int, w: int) -> list[tuple[int, int]]:
    """(row, col) of each input patch row of an h x w image in 2x2 merge-block order."""
    positions = []
    for block_row in range(h // 2):
        for block_col in range(w // 2):
            for inner_row in range(2):
                for inner_col in range(2):
                    positions.append((2 * block_row + inner_row, 2 * block_col + inner_col))
    return positions


def rotate(x, angles):
    """RoPE: x (tokens, heads, head_dim) rotated by angles (tokens, head_dim/2)."""
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin


def naive_region_embeddings(model, pixels, grid, pairs):
    """Region embeddings by the RICE formula with one dense mask over the packed sequence:
    softmax(q K^T / sqrt(d) + M) V, M = 0 on the region's image's patches inside the box, -inf
    elsewhere (class tokens, other patches, other images), through the last blocks' weights."""
    config = model.config
    heads, head_dim, width = config.num_heads, config.head_dim, config.hidden_size
    hidden = model.encode(pixels, grid, output_hidden_states=True).hidden_states
    # Per packed token: image, grid row/col (class token: -1) and RoPE angles.
    image_of, rows, cols = [], [], []
    class_rows = []
    for image, (_, h, w) in enumerate(grid.tolist()):
        class_rows.append(len(image_of))
        image_of.append(image)
        rows.append(-1)
        cols.append(-1)
        for r, c in merge_block_positions(h, w):
            image_of.append(image)
            rows.append(r)
            cols.append(c)
    image_of, rows, cols = map(torch.tensor, (image_of, rows, cols))
    dtype = hidden[0].dtype
    inv_freq = 1.0 / 10000 ** (
        torch.arange(0, head_dim // 2, 2, dtype=torch.float64) / (head_dim // 2)
    )
    angles = torch.cat((rows[:, None] * inv_freq, cols[:, None] * inv_freq), dim=1)
    is_class = rows < 0
    angles[is_class] = model.class_pos_emb.detach().to(torch.float64)
    angles = angles.to(dtype)
    class_angle = model.class_pos_emb.to(dtype)
    mask = torch.full((len(pairs), len(image_of)), -math.inf, dtype=dtype)
    for region, (image, (row0, col0, row1, col1)) in enumerate(pairs):
        inside = (image_of == image) & (rows >= row0) & (rows < row1)
        inside &= (cols >= col0) & (cols < col1)
        mask[region, inside] = 0.0
    first = config.depth - config.region_layers
    if config.region_query == "learned":
        state = model.region_query[None].expand(len(pairs), -1)
    else:
        state = hidden[first][[class_rows[image] for image, _ in pairs]]
    eps = config.block_layer_norm_eps
    for index in range(first, config.depth):
        block, x = model.blocks[index], hidden[index]
        norm1 = (block.norm1.weight, block.norm1.bias)
        qkv = F.linear(
            F.layer_norm(x, (width,), *norm1, eps), block.attn.qkv.weight, block.attn.qkv.bias
        )
        _, k, v = qkv.view(-1, 3, heads, head_dim).unbind(1)
        k = rotate(k, angles)
        q = F.linear(
            F.layer_norm(state, (width,), *norm1, eps), block.attn.qkv.weight, block.attn.qkv.bias
        )
        q = rotate(q[:, :width].reshape(-1, heads, head_dim), class_angle.expand(len(pairs), -1))
        scores = torch.einsum("rhd,thd->hrt", q, k) / math.sqrt(head_dim) + mask
        out = torch.einsum("hrt,thd->rhd", scores.softmax(dim=-1), v).reshape(-1, width)
        state = state + F.linear(out, block.attn.proj.weight, block.attn.proj.bias)
        normed = F.layer_norm(state, (width,), block.norm2.weight, block.norm2.bias, eps)
        mlp = F.linear(
            F.gelu(F.linear(normed, block.mlp.fc1.weight, block.mlp.fc1.bias)),
            block.mlp.fc2.weight,
            block.mlp.fc2.bias,
        )
        state = state + mlp
    return state


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("query", ["class_token", "learned"])
@pytest.mark.parametrize("region_layers", [1, 3])
@torch.no_grad()
def test_region_embeddings_equal_the_naive_dense_mask_formula(query, region_layers):
    model = make_model(region_layers=region_layers, region_query=query)
    pixels, grid = make_inputs(GRIDS)
    out = model.encode(pixels, grid, regions=regions_of(REGIONS))
    expected = naive_region_embeddings(model, pixels, grid, REGIONS)
    assert out.region_embeddings.shape == (len(REGIONS), 64)
    torch.testing.assert_close(out.region_embeddings, expected, atol=2e-6, rtol=2e-6)
    # A box sees only its patches: different boxes of one image give different embeddings.
    assert (out.region_embeddings[1] - out.region_embeddings[2]).abs().max() > 1e-2


@torch.no_grad()
def test_equal_images_all_with_regions_use_the_key_view_and_match_the_naive_formula():
    model = make_model()
    grids = [(4, 4)] * 3
    pairs = [(1, (0, 0, 4, 4)), (0, (3, 3, 4, 4)), (2, (1, 0, 3, 2)), (0, (0, 1, 2, 4))]
    pixels, grid = make_inputs(grids, seed=1)
    layout = TokenLayout.from_grid_thw(grid, 2)
    assert RegionAttentionPlan.build(layout, regions_of(pairs)).token_index is None
    out = model.encode(pixels, grid, regions=regions_of(pairs))
    expected = naive_region_embeddings(model, pixels, grid, pairs)
    torch.testing.assert_close(out.region_embeddings, expected, atol=2e-6, rtol=2e-6)


@torch.no_grad()
def test_region_embedding_depends_only_on_its_own_image():
    model = make_model()
    pixels, grid = make_inputs(GRIDS)
    together = model.encode(pixels, grid, regions=regions_of(REGIONS)).region_embeddings
    sizes = [h * w for h, w in GRIDS]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for image in (0, 2):
        alone_pixels = pixels[starts[image] : starts[image] + sizes[image]]
        pairs = [(0, box) for i, box in REGIONS if i == image]
        alone = model.encode(alone_pixels, grid[image : image + 1], regions=regions_of(pairs))
        mine = [r for r, (i, _) in enumerate(REGIONS) if i == image]
        torch.testing.assert_close(together[mine], alone.region_embeddings, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_patch_features_and_class_tokens_are_bitwise_identical_with_and_without_regions():
    model = make_model()
    pixels, grid = make_inputs(GRIDS)
    plain = model.encode(pixels, grid, output_hidden_states=True)
    with_regions = model.encode(
        pixels, grid, output_hidden_states=True, regions=regions_of(REGIONS)
    )
    assert plain.region_embeddings is None
    assert torch.equal(plain.patch_features, with_regions.patch_features)
    assert torch.equal(plain.class_tokens, with_regions.class_tokens)
    for a, b in zip(plain.hidden_states, with_regions.hidden_states, strict=True):
        assert torch.equal(a, b)
    # The same weights without region layers: the released encoder's forward, bitwise.
    released = RiceViT(tiny_config(region_layers=0)).eval()
    released.load_state_dict(model.state_dict())
    assert torch.equal(released(pixels, grid), with_regions.patch_features)


def test_gradients_match_autograd_of_the_naive_formula():
    # float64 weights; RoPE rotates in fp32 by design (rice_vit.rope), hence 1e-6, not 1e-12.
    model = make_model(region_query="learned").double()
    pixels, grid = make_inputs(GRIDS, dtype=torch.float64)
    pixels.requires_grad_(True)
    weights = torch.randn(
        len(REGIONS), 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )

    def grads(fn):
        model.zero_grad()
        pixels.grad = None
        (fn() * weights).sum().backward()
        named = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return named, pixels.grad.clone()

    ours, our_pixels = grads(
        lambda: model.encode(pixels, grid, regions=regions_of(REGIONS)).region_embeddings
    )
    naive, naive_pixels = grads(lambda: naive_region_embeddings(model, pixels, grid, REGIONS))
    assert ours.keys() == naive.keys()
    assert "region_query" in ours
    assert "blocks.0.attn.qkv.weight" in ours  # flows to every block
    for name in ours:
        torch.testing.assert_close(ours[name], naive[name], atol=1e-6, rtol=1e-6, msg=name)
    torch.testing.assert_close(our_pixels, naive_pixels, atol=1e-6, rtol=1e-6)
    assert our_pixels.abs().sum() > 0


def test_region_attention_passes_gradcheck():
    grid = torch.tensor([[1, 2, 4], [1, 2, 2]])
    layout = TokenLayout.from_grid_thw(grid, 2)
    plan = RegionAttentionPlan.build(
        layout, regions_of([(1, (0, 0, 2, 1)), (0, (1, 1, 2, 4)), (0, (0, 0, 1, 1))])
    )
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(
        layout.num_tokens, 2, 4, dtype=torch.float64, generator=generator, requires_grad=True
    )
    v = torch.randn(
        layout.num_tokens, 2, 4, dtype=torch.float64, generator=generator, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda q, k, v: region_attention(q, k, v, plan), (q, k, v))


@torch.no_grad()
def test_empty_regions_give_an_empty_embedding_table():
    model = make_model()
    pixels, grid = make_inputs(GRIDS)
    out = model.encode(pixels, grid, regions=RegionBoxes.from_lists([], []))
    assert out.region_embeddings.shape == (0, 64)
    assert torch.equal(out.patch_features, model(pixels, grid))


@torch.no_grad()
def test_bad_regions_and_encoders_without_region_layers_are_errors():
    pixels, grid = make_inputs(GRIDS)
    with pytest.raises(InputError, match="region_layers = 0"):
        make_model(region_layers=0).encode(pixels, grid, regions=regions_of(REGIONS))
    model = make_model()
    with pytest.raises(InputError, match=r"region 1: .*outside image 1 of 2 x 2"):
        model.encode(pixels, grid, regions=regions_of([(0, (0, 0, 1, 1)), (1, (0, 0, 3, 1))]))
    with pytest.raises(InputError, match="image_index 5 but the call has 5 images"):
        model.encode(pixels, grid, regions=regions_of([(5, (0, 0, 1, 1))]))
    layout = TokenLayout.from_grid_thw(grid, 2)
    out = model.encode(pixels, None, layout=layout, regions=regions_of(REGIONS))
    assert out.region_embeddings.shape == (len(REGIONS), 64)


# ----------------------------------------------------------------------------- config and IO


def test_config_validates_region_fields():
    with pytest.raises(ConfigError, match="region_layers"):
        PRESETS["rice-vit-tiny"].replace(region_layers=3)
    with pytest.raises(ConfigError, match="region_layers"):
        PRESETS["rice-vit-tiny"].replace(region_layers=-1)
    with pytest.raises(ConfigError, match="region_query"):
        PRESETS["rice-vit-tiny"].replace(region_layers=1, region_query="mean")


@pytest.mark.parametrize("layout", ["mlcd", "llava-ov"])
def test_config_json_round_trips_region_fields_and_omits_them_by_default(layout):
    plain = PRESETS["rice-vit-tiny"]
    assert "region_layers" not in config_to_hf_dict(plain, layout)
    assert "region_query" not in config_to_hf_dict(plain, layout)
    for config in (tiny_config(), tiny_config(region_query="learned")):
        data = json.loads(json.dumps(config_to_hf_dict(config, layout)))
        assert data["region_layers"] == 2
        assert data["region_query"] == config.region_query
        # LLaVA-OV configs do not record image_size (it reads back as the default).
        expected = config if layout == "mlcd" else config.replace(image_size=560)
        assert config_from_hf_dict(data) == expected
        if layout == "llava-ov":
            assert config_from_hf_dict({"vision_config": data}) == expected


@pytest.mark.parametrize("layout", ["mlcd", "llava-ov"])
def test_checkpoint_round_trip_keeps_class_token_region_layers(tmp_path, layout):
    model = make_model()
    assert model.save_pretrained(tmp_path, layout) == []
    loaded = RiceViT.from_pretrained(tmp_path)
    assert loaded.config.region_layers == 2
    pixels, grid = make_inputs(GRIDS)
    with torch.no_grad():
        a = model.encode(pixels, grid, regions=regions_of(REGIONS)).region_embeddings
        b = loaded.encode(pixels, grid, regions=regions_of(REGIONS)).region_embeddings
    assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["mlcd", "llava-ov"])
def test_a_learned_query_is_reported_dropped_and_the_export_is_the_plain_encoder(tmp_path, layout):
    model = make_model(region_query="learned")
    assert model.save_pretrained(tmp_path, layout) == ["region_query"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert "region_layers" not in config
    assert "region_query" not in config
    loaded = RiceViT.from_pretrained(tmp_path)
    assert loaded.config.region_layers == 0
    pixels, grid = make_inputs(GRIDS)
    with torch.no_grad():
        assert torch.equal(loaded(pixels, grid), model(pixels, grid))
    config |= {"region_layers": 2, "region_query": "learned"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="learned region_query"):
        RiceViT.from_pretrained(tmp_path)


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_region_embeddings_match_the_cpu_path_in_fp32_and_under_bf16_autocast():
    model = make_model()
    pixels, grid = make_inputs(GRIDS)
    expected = model.encode(pixels, grid, regions=regions_of(REGIONS)).region_embeddings
    cuda = model.to("cuda")
    out = cuda.encode(pixels.cuda(), grid, regions=regions_of(REGIONS)).region_embeddings
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = cuda.encode(pixels.cuda(), grid, regions=regions_of(REGIONS)).region_embeddings
    assert low.dtype == torch.bfloat16
    relative = (low.float().cpu() - expected).norm() / expected.norm()
    assert relative < 2e-2
