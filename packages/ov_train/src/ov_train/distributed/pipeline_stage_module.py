"""The modules of a pipeline stage, under the full model's names, and the side channel that
gives every stage the current micro-batch's packing metadata.

Names: a stage holds some of `LlavaOV`'s modules, the very module objects (nothing is copied),
registered under the names they have in the full model: `vision`, `projector`,
`language_model.embed_tokens`, `language_model.layers.<i>` with i the layer's index in the full
model (a ModuleList whose keys are those indices), `language_model.norm`, `lm_head`. Absent
modules are None. So every name a parameter has on a stage is its name in `LlavaOV`: the
optimizer's per-module groups, FSDP2's units, activation checkpointing, the DCP checkpoint keys
and the HF loader all work on a stage as on the whole model, and a checkpoint saved by a
pipeline loads without one (and back). `ModelPart` is that container; `StageModule` adds the
stage's forward; `merge_parts` joins the stages one rank holds into one `ModelPart` (the
rank's "model" for the optimizer and checkpoints). The embedding, image-feature and head code
is LlavaOV's own (borrowed: a part has the attributes those methods read), so a stage computes
exactly what the whole model computes.

Side channel: a packed row's metadata (cu_seqlens, positions, supervised rows, image layout)
is host data the attention and the loss need on every stage. Sending it between stages as
tensors would make the sent shapes vary per micro-batch and (torch 2.11) mark received integer
tensors as requiring grad. Every rank of a step holds the step's micro-batches anyway (the pp
ranks of a data-parallel rank read the same ones), so `MicroBatchChannel` holds them, moved to
the device once per step, and the pipeline stage tells its module which micro-batch it runs
(`StageModule.micro_batch`) just before each forward. Only the (tokens, hidden) states travel
between stages, of one static shape: every row is padded to the same length.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ov_model.config import LlavaOVConfig
from ov_model.language_model import LanguageModel, rope_cos_sin, varlen_attend
from ov_model.model import LlavaOV
from ov_model.packed_metadata import ImagePlacement, PackedMetadata
from ov_model.packing import PackedBatch
from ov_train.distributed.pipeline_plan import StagePlan
from ov_train.errors import TrainingError


class LanguageModelPart(nn.Module):
    """Some of a `LanguageModel`'s modules under its names (see the module docstring)."""

    def __init__(
        self,
        config,
        embed_tokens: nn.Module | None,
        layers: Iterable[tuple[int, nn.Module]],
        norm: nn.Module | None,
        attention_backend: str | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList()
        for index, layer in sorted(layers, key=lambda item: item[0]):
            self.layers.add_module(str(index), layer)  # the full model's index as its name
        self.norm = norm
        self.attention_backend = attention_backend

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend
    ) -> torch.Tensor:
        """Its layers on `hidden`, then the final norm if it holds it. A module call (not a
        loop in the stage), so the hooks parallelisms put on the language model run here:
        tensor parallelism splits the first stage's whole rows into this rank's tokens."""
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, attend)
        return hidden if self.norm is None else self.norm(hidden)

    def indexed_layers(self) -> list[tuple[int, nn.Module]]:
        """(index in the full model, layer) of the layers held."""
        return [(int(name), layer) for name, layer in self.layers.named_children()]


class ModelPart(nn.Module):
    """Some of `LlavaOV`'s modules under its names; absent ones are None."""

    # LlavaOV's own code for these: it reads only attributes a part has.
    image_features = LlavaOV.image_features
    embed = LlavaOV.embed
    head_weight = LlavaOV.head_weight

    def __init__(
        self,
        config: LlavaOVConfig,
        *,
        vision: nn.Module | None,
        projector: nn.Module | None,
        language_model: LanguageModelPart,
        lm_head: nn.Module | None,
        loss_function=None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.lm_head = lm_head
        self.loss_function = loss_function


class StageModule(ModelPart):
    """One pipeline stage: runs its share of `LlavaOV.forward` on one micro-batch.

    Input: the (1, tokens) token ids on the first stage, else the previous stage's (tokens,
    hidden) states. Output: the (tokens, hidden) states after its last layer, or on the last
    stage the micro-batch's cross-entropy SUM over its supervised tokens (a 0-d fp32 tensor;
    the schedule's loss function divides it by the step's global count)."""

    def __init__(self, model: LlavaOV, plan: StagePlan, channel: "MicroBatchChannel") -> None:
        source: LanguageModel = model.language_model
        super().__init__(
            model.config,
            vision=model.vision if plan.is_first else None,
            projector=model.projector if plan.is_first else None,
            language_model=LanguageModelPart(
                source.config,
                source.embed_tokens if plan.is_first else None,
                [(i, source.layers[i]) for i in plan.layers],
                source.norm if plan.is_last else None,
                source.attention_backend,
            ),
            lm_head=model.lm_head if plan.is_last else None,
            loss_function=model.loss_function,
        )
        self.plan = plan
        self.channel = channel
        self.micro_batch: int | None = None
        """Index of the micro-batch the next forward runs (set by the pipeline stage)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.micro_batch is None:
            raise TrainingError(
                f"pipeline stage {self.plan.index} ran without being told its micro-batch"
            )
        inputs = self.channel[self.micro_batch]
        language = self.language_model
        if self.plan.is_first:
            hidden, _ = self.embed(
                x.reshape(-1),
                inputs.cu_seqlens,
                inputs.pixel_values,
                inputs.image_grid_thw,
                placement=inputs.placement,
            )
        else:
            hidden = x
        text = self.config.text
        cos, sin = rope_cos_sin(inputs.position_ids, text.head_dim, text.rope_theta)
        attend = varlen_attend(
            inputs.cu_seqlens,
            inputs.metadata.max_seqlen,
            language.attention_backend,
            inputs.metadata.sample_lengths,
        )
        hidden = language(hidden, cos, sin, attend)
        if not self.plan.is_last:
            # Zero-bubble schedules detach a stage's output in place, which a view refuses.
            return hidden.clone() if hidden._is_view() or hidden is x else hidden
        loss_sum = self.loss_function(
            hidden, self.head_weight, inputs.supervised_rows, inputs.supervised_targets
        )
        self.channel.record_loss(self.micro_batch, loss_sum)
        return loss_sum


def merge_parts(parts: Sequence[ModelPart]) -> ModelPart:
    """One `ModelPart` holding every module of `parts` (the stages of one rank), full names."""
    first = parts[0]

    def pick(name: str) -> nn.Module | None:
        return next((getattr(p, name) for p in parts if getattr(p, name) is not None), None)

    def pick_language(name: str) -> nn.Module | None:
        held = (getattr(p.language_model, name) for p in parts)
        return next((module for module in held if module is not None), None)

    language = LanguageModelPart(
        first.language_model.config,
        pick_language("embed_tokens"),
        [item for part in parts for item in part.language_model.indexed_layers()],
        pick_language("norm"),
        first.language_model.attention_backend,
    )
    return ModelPart(
        first.config,
        vision=pick("vision"),
        projector=pick("projector"),
        language_model=language,
        lm_head=pick("lm_head"),
        loss_function=first.loss_function,
    )


@dataclass(frozen=True)
class StageInputs:
    """One micro-batch as the stages read it: host metadata and its device tensors."""

    metadata: PackedMetadata
    placement: ImagePlacement
    cu_seqlens: torch.Tensor
    position_ids: torch.Tensor
    supervised_rows: torch.Tensor
    supervised_targets: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


class MicroBatchChannel:
    """The step's micro-batches for every stage of this rank (see the module docstring)."""

    def __init__(self, config: LlavaOVConfig, row_tokens: int, device: torch.device) -> None:
        self.config = config
        self.row_tokens = row_tokens
        """The static row length every micro-batch must have."""
        self.device = device
        self._inputs: list[StageInputs] = []
        self._losses: dict[int, torch.Tensor] = {}

    def load(self, batches: Sequence[PackedBatch], *, step: int) -> torch.Tensor:
        """Hold `batches` for this step (their tensors moved to the device); returns their token
        ids stacked (micro-batches, tokens), the first stage's input. TrainingError naming the
        micro-batch when a row is not of the static length."""
        self._inputs, self._losses = [], {}
        ids = []
        for index, batch in enumerate(batches):
            tokens = int(batch.input_ids.numel())
            if tokens != self.row_tokens:
                raise TrainingError(
                    f"step {step}, micro-batch {index}: {tokens} tokens, but pipeline stages "
                    f"exchange states of exactly {self.row_tokens} tokens; the data path must "
                    "pad every row to parallel.static_row_tokens(train.micro_batch_tokens) with "
                    "ov_model.packing.pad_row(..., length=)"
                )
            metadata = batch.metadata
            if metadata is None:
                metadata = PackedMetadata.build(
                    batch.input_ids, batch.labels, batch.cu_seqlens, batch.image_grid_thw
                )
            self._inputs.append(self._to_device(metadata, batch))
            ids.append(batch.input_ids.reshape(-1))
        return torch.stack(ids).to(self.device, non_blocking=True)

    def _to_device(self, metadata: PackedMetadata, batch: PackedBatch) -> StageInputs:
        device = self.device

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return StageInputs(
            metadata=metadata,
            placement=metadata.images(self.config.image_token_id, self.config.merge_size),
            cu_seqlens=metadata.cu_seqlens.to(device, torch.int32, non_blocking=True),
            position_ids=move(metadata.position_ids),
            supervised_rows=move(metadata.supervised_rows),
            supervised_targets=move(metadata.supervised_targets),
            pixel_values=move(batch.pixel_values),
            image_grid_thw=move(batch.image_grid_thw),
        )

    def __getitem__(self, index: int) -> StageInputs:
        return self._inputs[index]

    def __len__(self) -> int:
        return len(self._inputs)

    def record_loss(self, index: int, loss_sum: torch.Tensor) -> None:
        """The last stage's CE sum of micro-batch `index` (kept detached, for the step's loss)."""
        self._losses[index] = loss_sum.detach()

    def loss_sum(self) -> torch.Tensor:
        """float64 sum of the recorded CE sums, in micro-batch order (0 on a rank without the
        last stage)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for index in sorted(self._losses):
            total += self._losses[index].double()
        return total
