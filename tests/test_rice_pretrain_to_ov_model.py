"""A RICE-pretrained encoder goes into `ov-model init` as a released one does (issue 16).

The chain a user runs, through the real CLIs (click's runner, no subprocess): `rice-vit pretrain
synthetic` draws a set, labels it and pretrains a tiny encoder with region layers (a few steps),
`rice-vit pretrain export` writes it in the LLaVA-OV and the MLCD layouts, and `ov-model init`
merges each with a tiny Qwen3 into a Stage-0 model. Checked: both exports hold the trained
weights bitwise (and differ from the random init: training happened), Stage-0 holds them under
`visual.*`, it loads as a LlavaOV model, and its encoder reads back with the trained weights and
the region layers recorded, so the exported checkpoint can also continue pretraining.
"""

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from ov_model.cli import main as ov_model
from ov_model.model import LlavaOV
from ov_model.tokenizer import TextTokenizer, build_tokenizer
from rice_vit import RiceViT
from rice_vit.cli import main as rice_vit
from rice_vit.pretrain.checkpoint import latest_checkpoint, read_model_state
from rice_vit.pretrain.config import load_config
from rice_vit.pretrain.train import build_encoder


def write_tiny_qwen3(folder: Path) -> None:
    """A random Qwen3 HF folder (config.json, model.safetensors, tokenizer.json)."""
    folder.mkdir(parents=True)
    tokenizer = TextTokenizer(build_tokenizer(["a red circle and a word on a card"], 300))
    tokenizer.save(folder)
    vocab = -(-tokenizer.vocab_size // 64) * 64
    hidden, inter, heads, kv, head_dim = 64, 96, 4, 2, 16
    generator = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(2):
        prefix = f"model.layers.{i}."
        shapes |= {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            prefix + "self_attn.k_proj.weight": (kv * head_dim, hidden),
            prefix + "self_attn.v_proj.weight": (kv * head_dim, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            prefix + "self_attn.q_norm.weight": (head_dim,),
            prefix + "self_attn.k_norm.weight": (head_dim,),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
        }
    shapes["lm_head.weight"] = (vocab, hidden)
    tensors = {name: torch.randn(s, generator=generator) * 0.05 for name, s in shapes.items()}
    save_file(tensors, folder / "model.safetensors")
    config = {
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config))


def run(cli, arguments: list[str]) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in arguments], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_a_pretrained_encoder_exports_and_initialises_a_llava_ov_model(tmp_path):
    demo = tmp_path / "demo"
    run(
        rice_vit,
        [
            "pretrain",
            "synthetic",
            "-o",
            demo,
            "--images",
            16,
            "--eval-images",
            8,
            "--steps",
            3,
            "--clusters",
            6,
            "-q",
        ],
    )
    trained = read_model_state(latest_checkpoint(demo / "run"))
    initial = build_encoder(load_config(demo / "run" / "config.toml")).state_dict()
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])
    write_tiny_qwen3(tmp_path / "qwen")
    for layout in ("llava-ov", "mlcd"):
        export = tmp_path / f"export-{layout}"
        run(rice_vit, ["pretrain", "export", demo / "run", "--layout", layout, "-o", export])
        encoder = RiceViT.from_pretrained(export)
        assert encoder.config.region_layers == 2
        for name, tensor in trained.items():
            assert torch.equal(encoder.state_dict()[name], tensor), (layout, name)
        stage0 = tmp_path / f"stage0-{layout}"
        run(ov_model, ["init", "--vit", export, "--llm", tmp_path / "qwen", "--out", stage0])
        stored = load_file(stage0 / "model.safetensors")
        for name, tensor in trained.items():
            assert torch.equal(stored[f"visual.{name}"], tensor), (layout, name)
        model = LlavaOV.from_pretrained(stage0)
        vision = RiceViT.from_pretrained(stage0)
        for name, tensor in trained.items():
            assert torch.equal(vision.state_dict()[name], tensor), (layout, name)
        assert model.config.image_token_id is not None
