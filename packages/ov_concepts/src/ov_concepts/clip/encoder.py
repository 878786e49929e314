"""`ClipEncoder`: the encoder protocol over an open_clip-format CLIP checkpoint.

Images arrive decoded (Pillow), are preprocessed as open_clip does and encoded in one batch on the
chosen device; concept texts are formatted with a prompt template ("{}" by default: the concept
itself, as MetaCLIP matches raw metadata entries; "a photo of {}." is the zero-shot classic),
tokenised and encoded. Features are returned unnormalised in float32; the embedding job
normalises. Weights run in float32, or in bfloat16/float16 when asked (faster on GPUs, embeddings
then differ in the third significant digit).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ov_concepts.clip.checkpoint import load_clip
from ov_concepts.clip.config import ClipConfig
from ov_concepts.clip.model import Clip
from ov_concepts.clip.preprocess import preprocess_image
from ov_concepts.clip.tokenizer import ClipTokenizer
from ov_concepts.errors import CheckpointError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ClipEncoder:
    """Encodes images and texts with a loaded `Clip`."""

    def __init__(
        self,
        model: Clip,
        *,
        description: str,
        tokenizer: ClipTokenizer | None = None,
        template: str = "{}",
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ) -> None:
        if "{}" not in template:
            raise CheckpointError(f"the prompt template {template!r} has no {{}} for the concept")
        if dtype not in _DTYPES:
            raise CheckpointError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.template = template
        self._description = f"{description}:{dtype}:template={template}"

    @property
    def dim(self) -> int:
        """The shared embedding size (`embed_dim`)."""
        return self.model.config.embed_dim

    @property
    def description(self) -> str:
        """Model config, checkpoint name and size, dtype and prompt template."""
        return self._description

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Features of decoded Pillow images, float32 (N, dim)."""
        config = self.model.config
        pixels = torch.stack(
            [
                preprocess_image(image, config.vision.image_size, config.preprocess)
                for image in images
            ]
        )
        with torch.inference_mode():
            features = self.model.encode_image(pixels.to(self.device, self.dtype))
        return features.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Features of concept texts (through the prompt template), float32 (N, dim)."""
        if self.tokenizer is None:
            raise CheckpointError("encoding texts needs a tokenizer (--tokenizer tokenizer.json)")
        tokens = self.tokenizer([self.template.replace("{}", text) for text in texts])
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device))
        return features.float().cpu().numpy()


def load_clip_encoder(
    checkpoint: Path,
    model: str | Path,
    *,
    tokenizer: Path | None = None,
    template: str = "{}",
    device: str = "cpu",
    dtype: str = "float32",
) -> ClipEncoder:
    """Load a CLIP checkpoint with a built-in or JSON model config into a `ClipEncoder`."""
    config = ClipConfig.load(model)
    clip = load_clip(config, Path(checkpoint))
    text = None
    if tokenizer is not None:
        text = ClipTokenizer(Path(tokenizer), config.text.context_length)
    size = Path(checkpoint).stat().st_size
    description = f"clip:{config.name}:{Path(checkpoint).name}:{size}"
    return ClipEncoder(
        clip, description=description, tokenizer=text, template=template, device=device, dtype=dtype
    )
