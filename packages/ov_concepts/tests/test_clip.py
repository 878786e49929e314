"""CLIP towers for open_clip-format checkpoints, with a tiny randomly initialised model.

The towers are compared with a functional transcription of open_clip's forward pass (sequence-first
layout, packed in-projection, explicit softmax attention) so that a mistake in head splitting,
masking, pooling or normalisation order shows up; a second test compares with open_clip itself
when it is installed (it is not a dependency).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from ov_concepts.clip import ClipConfig, ClipEncoder, load_clip_encoder
from ov_concepts.clip.checkpoint import load_clip, read_state_dict
from ov_concepts.clip.config import BUILTIN
from ov_concepts.clip.model import Clip
from ov_concepts.clip.preprocess import preprocess_image
from ov_concepts.clip.tokenizer import ClipTokenizer, clean_text
from ov_concepts.embed_job import EmbedJobConfig, run_embedding_job
from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import Encoder
from ov_concepts.errors import CheckpointError
from ov_concepts.inputs import ConceptTexts, ImageFiles
from ov_concepts.vocabulary import Vocabulary

TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 64, "width": 24, "heads": 2, "layers": 2},
}
WORDS = ["a", "photo", "of", "dog", "cat", "&", "sky", "[UNK]"]


@pytest.fixture(scope="module")
def config() -> ClipConfig:
    return ClipConfig.from_dict(TINY, "tiny")


@pytest.fixture(scope="module")
def state(config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Clip(config)
    for name, parameter in model.named_parameters():
        with torch.no_grad():
            if name.endswith(
                ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
            ):
                parameter.normal_(1.0, 0.1)
            else:
                parameter.normal_(0.0, 0.2)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    vocab = {word: i + 1 for i, word in enumerate(WORDS)}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 62, 63
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


# ---- a functional transcription of open_clip's forward pass (model.py / transformer.py) ----


def _ln(x, state, name):
    return F.layer_norm(x, (x.shape[-1],), state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)


def _block(x, state, prefix, heads, mask):  # x: (L, N, D), sequence first as in open_clip
    y = _ln(x, state, prefix + "ln_1")
    length, batch, width = y.shape
    q, k, v = F.linear(
        y, state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"]
    ).chunk(3, -1)
    q, k, v = (t.reshape(length, batch * heads, -1).transpose(0, 1) for t in (q, k, v))
    attention = (q * (width // heads) ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        attention = attention + mask
    out = (attention.softmax(-1) @ v).transpose(0, 1).reshape(length, batch, width)
    x = x + F.linear(
        out, state[prefix + "attn.out_proj.weight"], state[prefix + "attn.out_proj.bias"]
    )
    hidden = F.linear(
        _ln(x, state, prefix + "ln_2"),
        state[prefix + "mlp.c_fc.weight"],
        state[prefix + "mlp.c_fc.bias"],
    )
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    return x + F.linear(
        hidden, state[prefix + "mlp.c_proj.weight"], state[prefix + "mlp.c_proj.bias"]
    )


def reference_image(state, pixels, heads=2, layers=2, patch=8):
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=patch)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = state["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = _ln(x, state, "visual.ln_pre").permute(1, 0, 2)
    for layer in range(layers):
        x = _block(x, state, f"visual.transformer.resblocks.{layer}.", heads, None)
    x = _ln(x.permute(1, 0, 2)[:, 0, :], state, "visual.ln_post")
    return x @ state["visual.proj"]


def reference_text(state, tokens, heads=2, layers=2):
    length = tokens.shape[1]
    x = state["token_embedding.weight"][tokens] + state["positional_embedding"]
    mask = torch.full((length, length), float("-inf")).triu_(1)
    x = x.permute(1, 0, 2)
    for layer in range(layers):
        x = _block(x, state, f"transformer.resblocks.{layer}.", heads, mask)
    x = _ln(x.permute(1, 0, 2), state, "ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ state["text_projection"]


def test_towers_match_open_clips_forward_pass(config, checkpoint, state):
    model = load_clip(config, checkpoint)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[62, 2, 4, 63] + [0] * 8, [62, 5, 63] + [0] * 9, [62] + [3] * 10 + [63]])
    with torch.inference_mode():
        torch.testing.assert_close(
            model.encode_image(pixels), reference_image(state, pixels), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            model.encode_text(tokens), reference_text(state, tokens), atol=1e-5, rtol=1e-5
        )


def test_matches_open_clip_itself_when_installed(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(3)
    reference = open_clip.model.CLIP(
        TINY["embed_dim"], TINY["vision_cfg"], TINY["text_cfg"], quick_gelu=True
    ).eval()
    for parameter in reference.parameters():
        with torch.no_grad():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")
    ours = load_clip(ClipConfig.from_dict(TINY, "tiny"), tmp_path / "open_clip.pt")
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[62, 2, 4, 63] + [0] * 8, [62, 5, 6, 7, 63] + [0] * 7])
    with torch.inference_mode():
        torch.testing.assert_close(
            ours.encode_image(pixels), reference.encode_image(pixels), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            ours.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=1e-5
        )


def test_torch_checkpoints_with_wrappers_and_prefixes_load_the_same(
    config, checkpoint, state, tmp_path
):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    custom_text = {
        (k if k.startswith(("visual.", "logit_scale")) else f"text.{k}"): v
        for k, v in state.items()
    }
    torch.save(custom_text, tmp_path / "custom_text.bin")
    pixels = torch.randn(2, 3, 32, 32)
    expected = load_clip(config, checkpoint).encode_image(pixels)
    for name in ("wrapped.pt", "custom_text.bin"):
        torch.testing.assert_close(
            load_clip(config, tmp_path / name).encode_image(pixels), expected
        )


def test_checkpoint_mismatches_name_the_keys(config, state, tmp_path):
    missing = {k: v for k, v in state.items() if k != "ln_final.bias"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing ln_final.bias"):
        load_clip(config, tmp_path / "missing.safetensors")
    extra = {**state, "visual.head.weight": torch.zeros(2)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected visual.head.weight"):
        load_clip(config, tmp_path / "extra.safetensors")
    wrong = {**state, "visual.proj": torch.zeros(32, 8)}
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"visual.proj has shape \(32, 8\), model config tiny needs \(32, 16\)",
    ):
        load_clip(config, tmp_path / "wrong.safetensors")


def test_unsafe_or_broken_checkpoint_files_are_refused(config, tmp_path):
    torch.save({"weights": Vocabulary.from_strings(["x"])}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled.pt: cannot read the checkpoint"):
        read_state_dict(tmp_path / "pickled.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk.safetensors: cannot read"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"a": 1}, tmp_path / "notensor.pt")
    with pytest.raises(CheckpointError, match=r"entry 'a' is not a named tensor"):
        read_state_dict(tmp_path / "notensor.pt")
    with pytest.raises(CheckpointError, match=r"no such checkpoint"):
        read_state_dict(tmp_path / "absent.pt")


def test_configs_load_by_name_or_file_and_refuse_unsupported_architectures(tmp_path):
    huge = ClipConfig.load("ViT-H-14-quickgelu")
    assert (huge.embed_dim, huge.vision.heads, huge.vision.width, huge.text.heads) == (
        1024,
        16,
        1280,
        16,
    )
    assert set(BUILTIN) >= {"ViT-B-32-quickgelu", "ViT-L-14-quickgelu", "ViT-bigG-14-quickgelu"}
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "size": 32, "mode": "RGB", "fill_color": 0}
    hub = {"model_cfg": TINY, "preprocess_cfg": preprocess}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(hub))
    loaded = ClipConfig.load(tmp_path / "open_clip_config.json")
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5)
    assert loaded.name == "open_clip_config"
    for vision, message in [
        (
            {**TINY["vision_cfg"], "timm_model_name": "vit"},
            "unsupported keys \\['timm_model_name'\\]",
        ),
        ({**TINY["vision_cfg"], "layers": [3, 4, 6, 3]}, "ResNet image towers"),
        ({**TINY["vision_cfg"], "pool_type": "avg"}, r"unsupported keys \['pool_type'\]"),
        ({**TINY["vision_cfg"], "head_width": 12}, "not a multiple of 12"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            ClipConfig.from_dict({**TINY, "vision_cfg": vision}, "x")
    bad_size = {"model_cfg": TINY, "preprocess_cfg": {"size": 64}}
    with pytest.raises(CheckpointError, match=r"preprocess size 64 differs from image_size 32"):
        ClipConfig.from_dict(bad_size, "x")
    with pytest.raises(CheckpointError, match=r"neither a built-in model"):
        ClipConfig.load("ViT-Z-99")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"must be a JSON object"):
        ClipConfig.load(tmp_path / "bad.json")


def test_tokenizer_follows_open_clips_rules(tokenizer_file):
    tokenizer = ClipTokenizer(tokenizer_file, context_length=6)
    rows = tokenizer(["A  Photo of\nDOG", "dog &amp;amp; cat", "a photo of a dog of a cat"])
    assert rows.tolist() == [
        [62, 1, 2, 3, 4, 63],  # start, a photo of dog, end (exactly full)
        [62, 4, 6, 5, 63, 0],  # HTML unescaped twice, lower-cased, zero-padded
        [62, 1, 2, 3, 1, 63],  # truncated, the last id forced to end-of-text
    ]
    assert clean_text("  Hello &amp;  World ") == "hello & world"


def test_tokenizer_files_must_be_clip_tokenizers(tmp_path):
    plain = Tokenizer(models.WordLevel({"x": 0, "[UNK]": 1}, unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(CheckpointError, match=r"not a CLIP tokenizer"):
        ClipTokenizer(tmp_path / "plain.json", 8)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"not a tokenizer.json file"):
        ClipTokenizer(tmp_path / "junk.json", 8)


def test_preprocessing_resizes_the_short_side_and_centre_crops(config):
    preprocess = config.preprocess
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # landscape, short side already 32
    tensor = preprocess_image(Image.fromarray(pixels), 32, preprocess)
    crop = pixels[:, 16:48].astype(np.float32) / 255.0
    expected = (crop - np.asarray(preprocess.mean, np.float32)) / np.asarray(
        preprocess.std, np.float32
    )
    np.testing.assert_allclose(tensor.numpy(), expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    solid = preprocess_image(Image.new("P", (50, 90), 0), 32, preprocess)
    assert solid.shape == (3, 32, 32)
    np.testing.assert_allclose(
        solid[:, 0, 0].numpy(), -np.asarray(preprocess.mean) / np.asarray(preprocess.std), rtol=1e-6
    )


def test_clip_encoder_runs_embedding_jobs_for_images_and_concepts(
    checkpoint, tokenizer_file, tmp_path, state
):
    (tmp_path / "model.json").write_text(json.dumps(TINY))
    encoder = load_clip_encoder(
        checkpoint, tmp_path / "model.json", tokenizer=tokenizer_file, template="a photo of {}"
    )
    assert isinstance(encoder, Encoder)
    assert encoder.dim == 16
    assert "tiny.safetensors" in encoder.description
    assert "template=a photo of {}" in encoder.description
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 32), (40 * i, 10, 200)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    manifest = run_embedding_job(
        ImageFiles.from_path(images), encoder, tmp_path / "I", EmbedJobConfig(batch_size=2)
    )
    assert manifest.rows == 5
    assert [failure.key for chunk in manifest.chunks for failure in chunk.failed] == ["broken.jpg"]
    stored = EmbeddingMatrix(tmp_path / "I").read(0, 5)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1, rtol=1e-5)
    with Image.open(images / "3.png") as image:
        pixels = preprocess_image(image, 32, encoder.model.config.preprocess)[None]
    direct = reference_image(state, pixels)[0]
    np.testing.assert_allclose(stored[3], (direct / direct.norm()).numpy(), atol=1e-5)

    vocabulary = Vocabulary.from_strings(["dog", "cat", "sky"])
    run_embedding_job(ConceptTexts(vocabulary), encoder, tmp_path / "C")
    concepts = EmbeddingMatrix(tmp_path / "C").read(0, 3)
    tokens = encoder.tokenizer(["a photo of cat"])
    direct = reference_text(state, tokens)[0]
    np.testing.assert_allclose(concepts[1], (direct / direct.norm()).numpy(), atol=1e-5)


def test_clip_encoder_settings_are_validated(config, checkpoint):
    model = load_clip(config, checkpoint)
    with pytest.raises(CheckpointError, match=r"has no \{\}"):
        ClipEncoder(model, description="x", template="a photo")
    with pytest.raises(CheckpointError, match=r"dtype must be one of"):
        ClipEncoder(model, description="x", dtype="int8")
    with pytest.raises(CheckpointError, match=r"needs a tokenizer"):
        ClipEncoder(model, description="x").encode_texts(["dog"])


def test_cli_embeds_images_and_concepts_with_a_checkpoint(checkpoint, tokenizer_file, tmp_path):
    from click.testing import CliRunner

    from ov_concepts.cli import main

    (tmp_path / "model.json").write_text(json.dumps(TINY))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (33, 47), (i * 60, 0, 0)).save(images / f"{i}.jpg")
    (images / "bad.png").write_bytes(b"nope")
    (tmp_path / "vocab.txt").write_text("dog\ncat\n")
    common = ["--checkpoint", str(checkpoint), "--model", str(tmp_path / "model.json")]
    runner = CliRunner()
    result = runner.invoke(
        main, ["embed-images", "--images", str(images), *common, "--out", str(tmp_path / "I")]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 image embeddings (16 dims)" in result.output
    assert "1 images could not be decoded" in result.output
    result = runner.invoke(
        main,
        [
            "embed-images",
            "--images",
            str(images),
            *common,
            "--decode-workers",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "I0"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("chunk-000000.npy", "chunk-000000.json", "keys.txt", "manifest.json"):
        # decoded in 2 worker processes (the default here: all cores) or inline: same bytes
        assert (tmp_path / "I" / name).read_bytes() == (tmp_path / "I0" / name).read_bytes()
    result = runner.invoke(
        main,
        [
            "embed-concepts",
            str(tmp_path / "vocab.txt"),
            *common,
            "--tokenizer",
            str(tokenizer_file),
            "--out",
            str(tmp_path / "C"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert EmbeddingMatrix(tmp_path / "C").rows == 2
    result = runner.invoke(
        main, ["embed-concepts", str(tmp_path / "vocab.txt"), *common, "--out", str(tmp_path / "D")]
    )
    assert result.exit_code == 2
    assert "--tokenizer is required with --checkpoint" in result.output


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)],
)
def test_batched_normalisation_on_the_device_has_the_bits_of_numpys(config, device):
    from ov_concepts.clip.preprocess import normalise_pixels, normalise_pixels_on

    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = normalise_pixels(pixels, config.preprocess).numpy()
    got = normalise_pixels_on(pixels, config.preprocess, device).cpu().numpy()
    assert got.shape == (5, 3, 32, 32)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
