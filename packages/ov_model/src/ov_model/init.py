"""Stage-0 initialisation: a LLaVA-OV checkpoint from a RICE-ViT and a Qwen LLM checkpoint.

The encoder comes from any RICE-ViT folder rice_vit reads (MLCD or LLaVA-OV layout; an MLCD
post-layernorm is dropped, LLaVA-OV has none), the decoder and output head from a Qwen3 or Qwen2
HF folder (`model.*`, `lm_head.weight`, sharded or not), the special token ids from its
`tokenizer.json`. Only the patch merger is new: LayerNorm at (1, 0), Linear weights drawn from
N(0, 0.02) with a seeded generator (the release's init std), biases 0. The tokenizer and
processor files are copied, so the output folder is a complete model.

The chat template is the qwen2-vl one LLaVA-OneVision-1.5 trains with (`ChatTemplate.default()`,
written as `chat_template.json`, which takes precedence over a `tokenizer_config.json` one), not
the LLM folder's: a Qwen3 or Qwen2.5 text model's template renders only string contents, so a
message with an image would lose its image placeholder (Qwen3's renders it as empty text) or fail
(Qwen2.5's adds a string to a list), and every image sample would be rejected at `prepare`.
"""

import json
from pathlib import Path

import torch

from ov_model.chat_template import ChatTemplate
from ov_model.checkpoint import copy_tokenizer_files
from ov_model.config import LlavaOVConfig, TextConfig
from ov_model.errors import CheckpointError, ConfigError
from ov_model.model import LlavaOV
from ov_model.state_dict_adapter import from_hf
from ov_model.tokenizer import TextTokenizer
from rice_vit import RiceViT
from rice_vit.safetensors_folder import read_tensors

INIT_STD = 0.02
QWEN_MODEL_TYPES = {"qwen3": "LLaVAOneVision1_5_text", "qwen2": "qwen2"}


def text_config_from_qwen(path: Path) -> TextConfig:
    """The TextConfig of a Qwen3/Qwen2 HF `config.json`."""
    file = path / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    model_type = data.get("model_type")
    if model_type not in QWEN_MODEL_TYPES:
        raise ConfigError(
            f"{file}: model_type {model_type!r} is not one of {sorted(QWEN_MODEL_TYPES)}"
        )
    hidden, heads = data["hidden_size"], data["num_attention_heads"]
    return TextConfig(
        vocab_size=data["vocab_size"],
        hidden_size=hidden,
        intermediate_size=data["intermediate_size"],
        num_hidden_layers=data["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=data.get("num_key_value_heads", heads),
        head_dim=data.get("head_dim") or hidden // heads,
        rms_norm_eps=data.get("rms_norm_eps", 1e-6),
        rope_theta=data.get("rope_theta", 1_000_000.0),
        max_position_embeddings=data.get("max_position_embeddings", 32768),
        attention_bias=data.get("attention_bias", model_type == "qwen2"),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        model_type=QWEN_MODEL_TYPES[model_type],
    )


def init_projector(model: LlavaOV, seed: int) -> None:
    """Seeded fresh weights for the patch merger (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * INIT_STD
                )
                module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def initialise(
    vit_dir: str | Path, llm_dir: str | Path, out_dir: str | Path, *, seed: int = 0
) -> LlavaOV:
    """Merge the two checkpoints into `out_dir` and return the model (see module docstring)."""
    vit_dir, llm_dir, out_dir = Path(vit_dir), Path(llm_dir), Path(out_dir)
    vision = RiceViT.from_pretrained(vit_dir)
    text = text_config_from_qwen(llm_dir)
    special = TextTokenizer.from_file(llm_dir).special
    config = LlavaOVConfig(
        vision=vision.config.replace(has_post_layernorm=False),
        text=text,
        image_token_id=special.image_pad,
        video_token_id=special.video_pad,
        vision_start_token_id=special.vision_start,
        vision_end_token_id=special.vision_end,
    )
    llm_state, unknown = from_hf(read_tensors(llm_dir))
    stray = unknown + [n for n in llm_state if not n.startswith(("language_model.", "lm_head."))]
    if stray:
        raise CheckpointError(
            f"{llm_dir}: tensors that are not a Qwen decoder: {sorted(stray)[:8]}"
        )
    with torch.device("meta"):  # no throwaway random init of billions of weights
        model = LlavaOV(config)
    vision_state = {
        f"vision.{name}": tensor
        for name, tensor in vision.state_dict().items()
        if not name.startswith("post_layernorm.")
    }
    expected = {n for n in model.state_dict() if not n.startswith("projector.")}
    given = set(vision_state) | set(llm_state)
    if expected != given:
        raise CheckpointError(
            f"{llm_dir} + {vit_dir}: missing {sorted(expected - given)[:8]}, "
            f"unexpected {sorted(given - expected)[:8]}"
        )
    model.load_state_dict({**vision_state, **llm_state}, strict=False, assign=True)
    model.projector.to_empty(device="cpu")
    init_projector(model, seed)
    model.projector.to(dtype=model.language_model.embed_tokens.weight.dtype)
    model.save_pretrained(out_dir)
    copy_tokenizer_files(llm_dir, out_dir)
    ChatTemplate.default().save(out_dir)
    return model.eval()
