"""CLIP image/text towers for open_clip-format checkpoints (MetaCLIP ships in that format).

Why our own towers instead of importing open_clip: open_clip pulls timm, ftfy, regex and
huggingface-hub and its own release cadence into the install, for what is, for the ViT CLIPs that
MetaCLIP and OpenAI released, two small transformers. The modules here mirror open_clip's module
names and forward passes one for one (`visual.conv1`,
`visual.transformer.resblocks.N.attn.in_proj_weight`, `ln_final`, `text_projection`, ...), so an
open_clip state dict loads with `strict=True`, and any key that does not fit is an error naming it.
Supported: ViT image towers pooled at the class token and the standard causal text tower pooled at
the end-of-text token, QuickGELU or GELU, any size; other open_clip options (average pooling,
LayerScale, CoCa poolers, ResNet/timm/Hugging Face towers, SigLIP) are refused with a message naming
the config key.

What is and is not verified: the tests check the towers against a functional transcription of
open_clip's forward pass (sequence-first layout, packed in-projection, explicit softmax attention,
argmax pooling) on a tiny random model, and against open_clip itself in a test that runs only where
open_clip is installed (it is not a dependency, and there is no network here to fetch it or real
MetaCLIP weights, so that comparison, and one on real weights, has not been run). Tokenisation uses
the CLIP BPE from a Hugging Face `tokenizer.json` (shipped with every CLIP/MetaCLIP repository on
the Hub) through `tokenizers`; it applies open_clip's cleaning (HTML unescape, whitespace collapse,
lower case) but not ftfy's mojibake repair, so text with broken encodings may tokenise differently.

Needs the `clip` extra (`pip install ov-concepts[clip]`: pillow for images, tokenizers for text).
"""

from ov_concepts.clip.config import ClipConfig, PreprocessConfig, TextConfig, VisionConfig
from ov_concepts.clip.encoder import ClipEncoder, ClipEncoderSpec, load_clip_encoder

__all__ = [
    "ClipConfig",
    "ClipEncoder",
    "ClipEncoderSpec",
    "PreprocessConfig",
    "TextConfig",
    "VisionConfig",
    "load_clip_encoder",
]
