"""`ClipEncoder`: the encoder protocol over an open_clip-format CLIP checkpoint.

Images arrive decoded (Pillow), are preprocessed as open_clip does and encoded in one batch on the
chosen device; concept texts are formatted with a prompt template ("{}" by default: the concept
itself, as MetaCLIP matches raw metadata entries; "a photo of {}." is the zero-shot classic),
tokenised and encoded. Features are returned unnormalised in float32; the embedding job
normalises. Weights run in float32, or in bfloat16/float16 when asked (faster on GPUs, embeddings
then differ in the third significant digit).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ov_concepts.clip.checkpoint import load_clip
from ov_concepts.clip.config import ClipConfig
from ov_concepts.clip.model import Clip
from ov_concepts.clip.preprocess import normalise_pixels_on, resize_crop
from ov_concepts.clip.tokenizer import ClipTokenizer
from ov_concepts.decode import ResizeCrop
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

    def image_preparer(self) -> ResizeCrop:
        """The per-image CPU work (resize, crop, RGB) that decoding workers do before a batch."""
        return resize_crop(self.model.config.vision.image_size, self.model.config.preprocess)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Features of decoded Pillow images or of `image_preparer()` outputs, float32 (N, dim)."""
        config = self.model.config
        prepare = self.image_preparer()
        prepared = [image if isinstance(image, np.ndarray) else prepare(image) for image in images]
        with torch.inference_mode():
            pixels = normalise_pixels_on(np.stack(prepared), config.preprocess, self.device)
            features = self.model.encode_image(pixels.to(self.dtype))
        return features.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Features of concept texts (through the prompt template), float32 (N, dim)."""
        if self.tokenizer is None:
            raise CheckpointError("encoding texts needs a tokenizer (--tokenizer tokenizer.json)")
        tokens = self.tokenizer([self.template.replace("{}", text) for text in texts])
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device))
        return features.float().cpu().numpy()


@dataclass(frozen=True)
class ClipEncoderSpec:
    """How to load a `ClipEncoder`, picklable: what a worker process or Ray actor receives.

    `dim` and `description` are known without loading the weights (the manifest needs them first).
    """

    checkpoint: Path
    model: str | Path
    tokenizer: Path | None = None
    template: str = "{}"
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def dim(self) -> int:
        """The model config's `embed_dim`."""
        return ClipConfig.load(self.model).embed_dim

    @property
    def description(self) -> str:
        """What `ClipEncoder.description` will be."""
        config = ClipConfig.load(self.model)
        size = Path(self.checkpoint).stat().st_size
        return f"clip:{config.name}:{Path(self.checkpoint).name}:{size}:{self.dtype}:" + (
            f"template={self.template}"
        )

    def build(self) -> ClipEncoder:
        """Load the weights (and tokenizer) onto the device."""
        config = ClipConfig.load(self.model)
        clip = load_clip(config, Path(self.checkpoint))
        text = None
        if self.tokenizer is not None:
            text = ClipTokenizer(Path(self.tokenizer), config.text.context_length)
        size = Path(self.checkpoint).stat().st_size
        description = f"clip:{config.name}:{Path(self.checkpoint).name}:{size}"
        return ClipEncoder(
            clip,
            description=description,
            tokenizer=text,
            template=self.template,
            device=self.device,
            dtype=self.dtype,
        )


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
    return ClipEncoderSpec(Path(checkpoint), model, tokenizer, template, device, dtype).build()
