"""`ov-model init` (Stage-0): a RICE-ViT + a Qwen checkpoint -> a loadable LLaVA-OV checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ov_model.errors import CheckpointError
from ov_model.init import initialise
from ov_model.model import LlavaOV
from ov_model.tokenizer import TextTokenizer, build_tokenizer
from rice_vit import RiceViT

MLCD_TINY = Path(__file__).parents[3] / "fixtures" / "rice_vit_mlcd_tiny" / "hf"


def write_tiny_qwen(folder: Path, *, tied: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random Qwen3 checkpoint with a tokenizer holding the Qwen special tokens."""
    folder.mkdir(parents=True)
    tokenizer = TextTokenizer(build_tokenizer(["a small corpus of words for a tiny test"], 300))
    vocab = tokenizer.vocab_size
    tokenizer.save(folder)
    generator = torch.Generator().manual_seed(seed)
    hidden, inter, heads, kv, head_dim = 64, 96, 4, 2, 16
    tensors = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=generator)}
    for i in range(2):
        shapes = {
            "input_layernorm.weight": (hidden,),
            "post_attention_layernorm.weight": (hidden,),
            "self_attn.q_proj.weight": (heads * head_dim, hidden),
            "self_attn.k_proj.weight": (kv * head_dim, hidden),
            "self_attn.v_proj.weight": (kv * head_dim, hidden),
            "self_attn.o_proj.weight": (hidden, heads * head_dim),
            "self_attn.q_norm.weight": (head_dim,),
            "self_attn.k_norm.weight": (head_dim,),
            "mlp.gate_proj.weight": (inter, hidden),
            "mlp.up_proj.weight": (inter, hidden),
            "mlp.down_proj.weight": (hidden, inter),
        }
        for name, shape in shapes.items():
            tensors[f"model.layers.{i}.{name}"] = torch.randn(shape, generator=generator)
    tensors["model.norm.weight"] = torch.randn(hidden, generator=generator)
    if not tied:
        tensors["lm_head.weight"] = torch.randn(vocab, hidden, generator=generator)
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
        "tie_word_embeddings": tied,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return tensors


@pytest.mark.parametrize("tied", [False, True])
def test_init_merges_both_checkpoints_and_seeds_the_projector(tmp_path, tied):
    qwen = write_tiny_qwen(tmp_path / "qwen", tied=tied)
    initialise(MLCD_TINY, tmp_path / "qwen", tmp_path / "out", seed=3)
    model = LlavaOV.from_pretrained(tmp_path / "out")
    stored = load_file(tmp_path / "out" / "model.safetensors")
    for name, tensor in qwen.items():
        assert torch.equal(stored[name], tensor), name
    vision = RiceViT.from_pretrained(MLCD_TINY)
    for name, tensor in vision.state_dict().items():
        if not name.startswith("post_layernorm"):
            assert torch.equal(stored[f"visual.{name}"], tensor), name
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    special = TextTokenizer.from_file(tmp_path / "out").special
    assert model.config.image_token_id == special.image_pad
    assert model.config.text.tie_word_embeddings == tied
    initialise(MLCD_TINY, tmp_path / "qwen", tmp_path / "again", seed=3)
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert torch.equal(again["visual.merger.mlp.0.weight"], stored["visual.merger.mlp.0.weight"])
    assert stored["visual.merger.mlp.0.weight"].std().item() == pytest.approx(0.02, rel=0.1)


def test_init_refuses_a_decoder_with_stray_tensors(tmp_path):
    write_tiny_qwen(tmp_path / "qwen")
    tensors = load_file(tmp_path / "qwen" / "model.safetensors")
    tensors["vision_tower.extra"] = torch.zeros(1)
    save_file(tensors, tmp_path / "qwen" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"vision_tower\.extra"):
        initialise(MLCD_TINY, tmp_path / "qwen", tmp_path / "out")


def test_init_writes_the_qwen2_vl_template_over_a_text_only_llm_template(tmp_path):
    from ov_model.chat_template import ChatTemplate
    from ov_model.processor import OVProcessor

    write_tiny_qwen(tmp_path / "qwen")
    text_only = (
        "{%- for message in messages %}{%- if message.content is string %}"
        "{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
        "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
    )
    (tmp_path / "qwen" / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": text_only})
    )
    initialise(MLCD_TINY, tmp_path / "qwen", tmp_path / "out")
    assert ChatTemplate.from_dir(tmp_path / "out") == ChatTemplate.default()
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    processor = OVProcessor.from_pretrained(tmp_path / "out")
    conversation = [
        {"from": "human", "value": "<image>\na word"},
        {"from": "gpt", "value": "a small corpus"},
    ]
    length = processor.measure(conversation, [(56, 56)])
    assert length.image_tokens == 4
    assert length.images == 1
