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

So a packed batch gives each sample exactly what it gets alone. Everything the forward needs to
know on the host (sample lengths, positions, supervised rows, image rows, the ViT layout) comes
from the row's `PackedMetadata` (`packed_metadata.py`), computed by the data loader; the forward
and backward then read nothing back from the device (no `.item()`, `nonzero`, boolean mask or
`masked_scatter`: image features go in with `index_copy` at host-known rows). Without metadata the
model builds it from host copies of its inputs. This module is single-device and imports nothing
of torch.distributed.

Two seams let a trainer parallelize it from outside without changing this code path when unset:
`sequence_split` (context parallelism: each rank runs the decoder on its share of the row's
tokens, see `sequence_split.py`) and `loss_function` (tensor parallelism: the same CE sum over a
vocabulary-sharded head). Decoder attention views its heads from the projections' widths, so a
rank holding a share of the heads runs the same code.
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
from ov_model.loss import LossFunction, cross_entropy_sum
from ov_model.packed_metadata import ImagePlacement, PackedMetadata
from ov_model.packing import flatten_batch
from ov_model.projector import PatchMerger
from ov_model.sequence_split import SequenceSplit
from rice_vit import RiceViT
from rice_vit.token_layout import TokenLayout

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
        self.sequence_split: SequenceSplit | None = None
        """Splits each row's decoder sequence over ranks (`sequence_split.py`); None: whole."""
        self.loss_function: LossFunction = cross_entropy_sum
        """(hidden, head_weight, rows, targets) -> CE sum; a trainer may swap in one that
        computes the same over a vocabulary-sharded head (tensor parallelism)."""

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
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        *,
        layout: TokenLayout | None = None,
    ) -> torch.Tensor:
        """(image tokens, text hidden): encoder output merged 2x2, images in order. `layout`: the
        images' ViT layout built on the host (then `image_grid_thw` is not read)."""
        dtype = self.vision.patch_embed.proj.weight.dtype
        return self.projector(self.vision(pixel_values.to(dtype), image_grid_thw, layout=layout))

    def embed(
        self,
        ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        *,
        placement: ImagePlacement | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with image features in the placeholder rows. `placement` (from the
        row's `PackedMetadata`) says where; without it, it is computed from host copies of `ids`,
        `cu_seqlens` and `image_grid_thw`."""
        embeds = self.language_model.embed_tokens(ids)
        if placement is None:
            metadata = PackedMetadata.build(ids, None, cu_seqlens, image_grid_thw)
            placement = metadata.images(self.config.image_token_id, self.config.merge_size)
        if pixel_values is None:
            return embeds, None
        features = self.image_features(pixel_values, image_grid_thw, layout=placement.layout)
        rows = placement.rows.to(embeds.device, non_blocking=True)
        # index_copy, not masked_scatter: the rows are known, so nothing is counted on the device.
        embeds = embeds.index_copy(0, rows, features.to(embeds.dtype))
        return embeds, features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        *,
        metadata: PackedMetadata | None = None,
        return_logits: bool = True,
        output_hidden_states: bool = False,
    ) -> LlavaOVOutput:
        """Logits and loss of a (batch, seq) batch or of one packed row with `cu_seqlens`.

        `labels` are aligned with `input_ids` (the token itself where supervised, -100
        elsewhere); the model shifts them, never across a sample boundary. `metadata`: the
        row's host bookkeeping (`PackedBatch.model_inputs()` passes it); it must describe these
        very inputs. Without it the model builds it from host copies of the inputs (a few device
        reads per forward, independent of layers and samples).
        """
        shape = input_ids.shape if input_ids.dim() == 2 else (1, input_ids.shape[0])
        if (pixel_values is None) != (image_grid_thw is None):
            raise InputError("pixel_values and image_grid_thw go together")
        if metadata is None:
            ids, cu = flatten_batch(input_ids, cu_seqlens)
            metadata = PackedMetadata.build(ids, labels, cu, image_grid_thw)
        else:
            ids = input_ids.reshape(-1)
            cu = self._check_metadata(ids, cu_seqlens, image_grid_thw, labels, metadata)
        device = ids.device
        placement = metadata.images(self.config.image_token_id, self.config.merge_size)
        embeds, features = self.embed(ids, cu, pixel_values, image_grid_thw, placement=placement)
        positions = metadata.position_ids.to(device, non_blocking=True)
        rows, targets = metadata.supervised_rows, metadata.supervised_targets
        attend = None
        if self.sequence_split is not None:
            if return_logits or output_hidden_states:
                raise InputError(
                    "a split sequence (context parallelism) gives each rank only its rows: "
                    "logits and hidden states are not available, ask for the loss alone"
                )
            split = self.sequence_split.split(metadata)
            embeds, positions = split.local(embeds), split.local(positions)
            rows, targets, attend = split.supervised_rows, split.supervised_targets, split.attend
        hidden, states = self.language_model(
            embeds,
            positions,
            cu,
            metadata.max_seqlen,
            output_hidden_states=output_hidden_states,
            sequence_lengths=metadata.sample_lengths,
            attend=attend,
        )
        logits = None
        if return_logits:
            logits = (hidden @ self.head_weight.t()).reshape(*shape, -1)
        loss = loss_sum = None
        count = 0
        if labels is not None:
            if labels.numel() != ids.numel():
                raise InputError(f"labels have {labels.numel()} entries for {ids.numel()} tokens")
            if rows is None or targets is None:
                raise InputError("labels given with metadata built without labels")
            count = metadata.num_supervised
            loss_sum = self.loss_function(
                hidden,
                self.head_weight,
                rows.to(device, non_blocking=True),
                targets.to(device, non_blocking=True),
            )
            loss = loss_sum / max(count, 1)
        if states is not None:
            states = tuple(s.reshape(*shape, -1) for s in states)
        return LlavaOVOutput(logits, loss, loss_sum, count, states, features)

    @staticmethod
    def _check_metadata(
        ids: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        labels: torch.Tensor | None,
        metadata: PackedMetadata,
    ) -> torch.Tensor:
        """Device cu_seqlens for the row, after checking (shapes only: nothing is read from the
        device) that `metadata` describes these inputs."""
        samples = len(metadata.sample_lengths)
        problems = []
        if ids.numel() != metadata.num_tokens:
            problems.append(f"{ids.numel()} tokens, metadata {metadata.num_tokens}")
        if cu_seqlens is not None and cu_seqlens.numel() != samples + 1:
            problems.append(f"{cu_seqlens.numel() - 1} samples, metadata {samples}")
        images = 0 if image_grid_thw is None else image_grid_thw.numel() // 3
        if images != metadata.num_images:
            problems.append(f"{images} images, metadata {metadata.num_images}")
        if labels is not None and metadata.supervised_rows is None:
            problems.append("labels, metadata built without labels")
        if problems:
            raise InputError(f"metadata does not describe the inputs: {'; '.join(problems)}")
        source = metadata.cu_seqlens if cu_seqlens is None else cu_seqlens
        return source.to(ids.device, torch.int32, non_blocking=True)

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
