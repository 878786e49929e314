"""`LlavaOV`: RICE-ViT encoder + patch merger + Qwen decoder, one packed forward.

Forward, for a batch flattened to one token sequence (see `packing.py`):
1. embed the tokens;
2. encode all images in one varlen call (`rice_vit.RiceViT`, one attention segment per image),
   merge 2x2 blocks into LLM tokens (`PatchMerger`) and write them, in order of appearance, into
   the rows holding `image_token_id` (each sample's placeholders must be whole images: a mismatch
   is an error naming the sample, never a silent shift);
3. run the decoder with causal varlen attention per sample, positions restarting per sample;
4. logits (optional) and the loss: sum of cross entropy over supervised next tokens divided by
   their number, through the chunked head of `loss.py` (no full fp32 logits).

So a packed batch gives each sample exactly what it gets alone. This module is single-device and
imports nothing of torch.distributed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ov_model.config import LlavaOVConfig
from ov_model.errors import InputError
from ov_model.language_model import LanguageModel
from ov_model.loss import supervised_cross_entropy_sum
from ov_model.packing import flatten_batch, position_ids, segment_sums, shifted_targets
from ov_model.projector import PatchMerger
from rice_vit import RiceViT

if TYPE_CHECKING:
    from ov_model.generation import TokenCallback


@dataclass
class LlavaOVOutput:
    """What `LlavaOV.forward` returns."""

    logits: torch.Tensor | None
    """(batch, seq, vocab) in the activation dtype, or None with `return_logits=False`."""
    loss: torch.Tensor | None
    """Mean cross entropy over supervised tokens (0 when there are none), or None."""
    loss_sum: torch.Tensor | None
    """Sum of cross entropy over supervised tokens (for normalising across accumulation)."""
    num_supervised: int
    hidden_states: tuple[torch.Tensor, ...] | None = None
    image_embeds: torch.Tensor | None = None


class LlavaOV(nn.Module):
    """The LLaVA-OneVision-1.5 model (see the module docstring)."""

    def __init__(self, config: LlavaOVConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = RiceViT(config.vision)
        self.projector = PatchMerger(
            config.vision.hidden_size,
            config.text.hidden_size,
            config.merge_size,
            config.vision.layer_norm_eps,
        )
        self.language_model = LanguageModel(config.text)
        self.lm_head = (
            None
            if config.text.tie_word_embeddings
            else nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        )

    @property
    def head_weight(self) -> torch.Tensor:
        """The output projection (the embedding matrix when tied)."""
        return (
            self.language_model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        )

    def set_attention_backend(self, backend: str | None) -> None:
        """Force a `varlen_attention` backend for vision and text (None: automatic)."""
        self.vision.attention_backend = backend
        self.language_model.attention_backend = backend

    def image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> torch.Tensor:
        """(image tokens, text hidden): encoder output merged 2x2, images in order."""
        dtype = self.vision.patch_embed.proj.weight.dtype
        return self.projector(self.vision(pixel_values.to(dtype), image_grid_thw))

    def embed(
        self,
        ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with image features in the placeholder rows."""
        embeds = self.language_model.embed_tokens(ids)
        is_image = ids == self.config.image_token_id
        tokens_per_image = self._tokens_per_image(image_grid_thw)
        self._check_placeholders(is_image, cu_seqlens, tokens_per_image)
        if pixel_values is None:
            return embeds, None
        features = self.image_features(pixel_values, image_grid_thw)
        embeds = embeds.masked_scatter(is_image[:, None], features.to(embeds.dtype))
        return embeds, features

    def _tokens_per_image(self, image_grid_thw: torch.Tensor | None) -> list[int]:
        if image_grid_thw is None:
            return []
        grid = torch.as_tensor(image_grid_thw).reshape(-1, 3).tolist()
        merge = self.config.merge_size
        return [t * h * w // (merge * merge) for t, h, w in grid]

    @staticmethod
    def _check_placeholders(
        is_image: torch.Tensor, cu_seqlens: torch.Tensor, tokens_per_image: list[int]
    ) -> None:
        per_sample = segment_sums(is_image.to(torch.int64), cu_seqlens).tolist()
        boundaries = {0}
        running = 0
        for count in tokens_per_image:
            running += count
            boundaries.add(running)
        seen = 0
        for sample, count in enumerate(per_sample):
            seen += count
            if seen not in boundaries or (sample == len(per_sample) - 1 and seen != running):
                raise InputError(
                    f"sample {sample} has {count} image placeholder tokens, which do not line up "
                    f"with whole images: the images given hold {tokens_per_image} tokens "
                    f"(placeholders up to this sample: {seen}, image tokens in all: {running})"
                )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
        output_hidden_states: bool = False,
    ) -> LlavaOVOutput:
        """Logits and loss of a (batch, seq) batch or of one packed row with `cu_seqlens`.

        `labels` are aligned with `input_ids` (the token itself where supervised, -100
        elsewhere); the model shifts them, never across a sample boundary.
        """
        shape = input_ids.shape if input_ids.dim() == 2 else (1, input_ids.shape[0])
        ids, cu = flatten_batch(input_ids, cu_seqlens)
        if (pixel_values is None) != (image_grid_thw is None):
            raise InputError("pixel_values and image_grid_thw go together")
        embeds, features = self.embed(ids, cu, pixel_values, image_grid_thw)
        max_seqlen = int(cu.diff().max()) if cu.numel() > 1 else 0
        hidden, states = self.language_model(
            embeds, position_ids(cu), cu, max_seqlen, output_hidden_states=output_hidden_states
        )
        logits = None
        if return_logits:
            logits = (hidden @ self.head_weight.t()).reshape(*shape, -1)
        loss = loss_sum = None
        count = 0
        if labels is not None:
            if labels.numel() != ids.numel():
                raise InputError(f"labels have {labels.numel()} entries for {ids.numel()} tokens")
            targets = shifted_targets(labels.to(ids.device), cu)
            loss_sum, count = supervised_cross_entropy_sum(hidden, self.head_weight, targets)
            loss = loss_sum / max(count, 1)
        if states is not None:
            states = tuple(s.reshape(*shape, -1) for s in states)
        return LlavaOVOutput(logits, loss, loss_sum, count, states, features)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype | None = None, *, device: str = "cpu"
    ) -> "LlavaOV":
        """Load an HF-layout checkpoint folder (config.json + safetensors, sharded or not).

        With `dtype=None` parameters keep their stored dtype. Returned in eval mode.
        """
        from ov_model.checkpoint import load_model

        return load_model(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, *, max_shard_size: int | str = "5GB") -> None:
        """Write config.json + safetensors in the official layout (lm_head absent when tied)."""
        from ov_model.checkpoint import save_model

        save_model(self, path, max_shard_size=max_shard_size)

    def generate(
        self,
        prompts: Sequence[torch.Tensor],
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pad_token_id: int = 0,
        callback: "TokenCallback | None" = None,
        **settings,
    ) -> list[list[int]]:
        """Generate after each prompt (see `ov_model.generation`); `settings` are the fields of
        `GenerationConfig` (max_new_tokens, temperature, top_k, top_p, stop_token_ids, seed)."""
        from ov_model.generation import GenerationConfig, generate

        return generate(
            self,
            prompts,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            config=GenerationConfig(**settings),
            pad_token_id=pad_token_id,
            callback=callback,
        )

    def num_parameters(self) -> int:
        """Number of parameter values (tied tensors counted once)."""
        return sum(p.numel() for p in self.parameters())
