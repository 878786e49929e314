"""What `OVProcessor` returns: a training sample, a generation prompt, a sample's sizes.

Plain frozen records, kept apart from the processor so that code that only consumes them (the
trainer's loader and collator, data preparation's token counts) reads their fields here without
the processing logic around them.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ProcessedSample:
    """One training sample. `labels` are aligned with `input_ids` (the token where supervised,
    -100 elsewhere; the model shifts them). Without images `pixel_values` and
    `image_grid_thw` are None."""

    input_ids: torch.Tensor
    """(tokens,) int64."""
    labels: torch.Tensor
    """(tokens,) int64, -100 on unsupervised positions."""
    pixel_values: torch.Tensor | None
    """(patches, 3 * P * P) float32, the kept images' patch rows concatenated."""
    image_grid_thw: torch.Tensor | None
    """(images, 3) int64, (1, h, w) in patches per kept image."""
    num_supervised: int
    truncated: bool = False
    """Whether `max_length` dropped tokens (and maybe images)."""


@dataclass(frozen=True)
class ProcessedPrompt:
    """Generation input: the prompt ending in `<|im_start|>assistant\\n`, and its images."""

    input_ids: torch.Tensor
    """(tokens,) int64."""
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


@dataclass(frozen=True)
class SampleLength:
    """The sizes of a processed sample, as `measure` computes them without pixels."""

    llm_tokens: int
    """len(input_ids), image tokens included."""
    image_tokens: int
    """`<|image_pad|>` tokens (one per merged 2x2 patch block)."""
    vit_patches: int
    """Patch rows the vision tower encodes (sum of h * w)."""
    supervised_tokens: int
    """Labels that are not -100."""
    images: int
    """Images kept (after truncation)."""
    supervised_targets: int
    """Supervised next-token targets: labels that are not -100 at any position but the first
    (the loss never predicts a sample's first token), what the training loss is divided by."""

    @property
    def text_tokens(self) -> int:
        """Tokens that are not image pads (the template's structure included)."""
        return self.llm_tokens - self.image_tokens
